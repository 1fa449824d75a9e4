import Foundation

/// The training noise schedule shared by DDIMScheduler and DDIMInverseScheduler: betas and
/// alphas_cumprod computed exactly as diffusers does in float32 on torch's CPU kernels.
public struct NoiseSchedule: Sendable {
    public let numTrainTimesteps: Int
    public let betas: [Float]
    /// ᾱ_t = ∏_{s≤t} (1 − β_s).
    public let alphasCumprod: [Float]

    /// Reads num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas and
    /// rescale_betas_zero_snr with diffusers' DDIM defaults.
    public init(config: JSONConfig) throws {
        let n = try config.int("num_train_timesteps", default: 1000)
        guard n >= 1, n <= 1_000_000 else {
            throw ToolError("\(config.label): num_train_timesteps \(n) is out of range (1 to 1000000) — fix the config (Stable Diffusion's is 1000)")
        }
        if try config.bool("rescale_betas_zero_snr", default: false) {
            throw ToolError("\(config.label): rescale_betas_zero_snr = true is not supported — use a scheduler config without it")
        }
        let betas: [Float]
        if config.has("trained_betas") {
            guard let list = config.values["trained_betas"] as? [Any] else {
                throw ToolError("\(config.label): key 'trained_betas' should be a list of numbers")
            }
            betas = try list.map {
                guard let v = $0 as? NSNumber else {
                    throw ToolError("\(config.label): key 'trained_betas' should be a list of numbers")
                }
                return Float(v.doubleValue)
            }
            if let i = betas.firstIndex(where: { !($0 > 0 && $0 < 1) }) {
                throw ToolError("\(config.label): trained_betas[\(i)] = \(betas[i]) is not a noise variance between 0 and 1 (exclusive) — fix the config or download it again")
            }
            guard betas.count == n else {
                throw ToolError("\(config.label): trained_betas has \(betas.count) values for num_train_timesteps \(n) — fix the config so they agree")
            }
        } else {
            let start = try config.double("beta_start", default: 0.0001)
            let end = try config.double("beta_end", default: 0.02)
            // β is a per-step noise variance: in (0, 1), or ᾱ = ∏(1 − β) is no probability and
            // every stage computes NaN (beta_start 5, beta_end −1 did).
            for (key, b) in [("beta_start", start), ("beta_end", end)] where !(b > 0 && b < 1) {
                throw ToolError("\(config.label): \(key) \(b) is not a noise variance between 0 and 1 (exclusive) — fix the config (Stable Diffusion's are 0.00085 and 0.012)")
            }
            let schedule = try config.string("beta_schedule", default: "linear")
            switch schedule {
            case "linear":
                betas = NoiseSchedule.linspace(start, end, n)
            case "scaled_linear":
                // torch.linspace(√start, √end, n) ** 2, squared in float32.
                betas = NoiseSchedule.linspace(start.squareRoot(), end.squareRoot(), n).map { $0 * $0 }
            case "squaredcos_cap_v2":
                betas = NoiseSchedule.squaredCosineBetas(n)
            default:
                throw ToolError("\(config.label): beta_schedule '\(schedule)' is not supported — use linear, scaled_linear or squaredcos_cap_v2")
            }
        }
        self.numTrainTimesteps = n
        self.betas = betas
        if let b = betas.first(where: { !($0 > 0 && $0 < 1) }) {
            throw ToolError("\(config.label): the schedule gives β = \(b), not between 0 and 1 (exclusive) — fix beta_start, beta_end or beta_schedule")
        }
        // torch.cumprod on a CPU float32 tensor accumulates in double (acc_type<float> on CPU)
        // and rounds each partial product to float.
        var acc: Double = 1
        self.alphasCumprod = betas.map { b in
            acc *= Double(1 - b)
            return Float(acc)
        }
        // ᾱ = 0 in float32 divides by zero in every step (√ᾱ below a fraction line).
        if let last = alphasCumprod.last, !(last > 0) {
            throw ToolError("\(config.label): the noise schedule's ᾱ reaches 0 by timestep \(alphasCumprod.firstIndex { !($0 > 0) } ?? n - 1) — lower beta_end or num_train_timesteps")
        }
    }

    /// torch.linspace(start, end, n, dtype=float32) on CPU: the bounds rounded to float, a float
    /// step, the first half counted up from start and the second half down from end. torch's
    /// AVX2 build contracts `start + step·i` into one fma, so this does too.
    static func linspace(_ start: Double, _ end: Double, _ n: Int) -> [Float] {
        let s = Float(start), e = Float(end)
        if n == 1 { return [s] }
        let step = (e - s) / Float(n - 1)
        let half = n / 2
        return (0..<n).map { i in
            i < half ? s.addingProduct(step, Float(i)) : e.addingProduct(-step, Float(n - i - 1))
        }
    }

    /// betas_for_alpha_bar with the cosine ᾱ(t) = cos²((t + 0.008)/1.008 · π/2), in double,
    /// capped at 0.999, then rounded to float.
    static func squaredCosineBetas(_ n: Int) -> [Float] {
        func alphaBar(_ t: Double) -> Double {
            let c = cos((t + 0.008) / 1.008 * Double.pi / 2)
            return c * c
        }
        return (0..<n).map { i in
            let t1 = Double(i) / Double(n), t2 = Double(i + 1) / Double(n)
            return Float(min(1 - alphaBar(t2) / alphaBar(t1), 0.999))
        }
    }
}
