import Foundation

/// What the model's output means (scheduler_config.json `prediction_type`).
public enum PredictionType: String, Sendable {
    case epsilon
    case sample
    case vPrediction = "v_prediction"
}

/// How inference timesteps are spread over the training steps (`timestep_spacing`).
public enum TimestepSpacing: String, Sendable {
    case leading, trailing, linspace
}

/// The scheduler_config.json keys DDIMScheduler and DDIMInverseScheduler both read, with the
/// defaults both classes give them in diffusers (set_alpha_to_one is read by each: the inverse
/// scheduler also honours the deprecated set_alpha_to_zero).
public struct DDIMConfig: Sendable {
    public let schedule: NoiseSchedule
    public let clipSample: Bool
    public let clipSampleRange: Float
    public let stepsOffset: Int
    public let predictionType: PredictionType
    public let timestepSpacing: TimestepSpacing

    public init(_ config: JSONConfig) throws {
        schedule = try NoiseSchedule(config: config)
        clipSample = try config.bool("clip_sample", default: true)
        clipSampleRange = Float(try config.double("clip_sample_range", default: 1.0))
        stepsOffset = try config.int("steps_offset", default: 0)
        let p = try config.string("prediction_type", default: "epsilon")
        guard let pt = PredictionType(rawValue: p) else {
            throw ToolError("\(config.label): prediction_type '\(p)' is not supported (use epsilon, v_prediction or sample)")
        }
        predictionType = pt
        let s = try config.string("timestep_spacing", default: "leading")
        guard let sp = TimestepSpacing(rawValue: s) else {
            throw ToolError("\(config.label): timestep_spacing '\(s)' is not supported (use leading, trailing or linspace)")
        }
        timestepSpacing = sp
    }
}

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
            throw ToolError("\(config.label): num_train_timesteps \(n) is out of range")
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
            guard betas.count == n else {
                throw ToolError("\(config.label): trained_betas has \(betas.count) values for num_train_timesteps \(n)")
            }
        } else {
            let start = try config.double("beta_start", default: 0.0001)
            let end = try config.double("beta_end", default: 0.02)
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
                throw ToolError("\(config.label): beta_schedule '\(schedule)' is not supported (use linear, scaled_linear or squaredcos_cap_v2)")
            }
        }
        self.numTrainTimesteps = n
        self.betas = betas
        // torch.cumprod on a CPU float32 tensor accumulates in double (acc_type<float> on CPU)
        // and rounds each partial product to float.
        var acc: Double = 1
        self.alphasCumprod = betas.map { b in
            acc *= Double(1 - b)
            return Float(acc)
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

/// Float32 elementwise helpers written in the order torch evaluates each expression, one rounding
/// per operation, so scheduler steps match diffusers bit for bit where the inputs do.
enum Elementwise {
    /// out[i] = f(a[i], b[i])
    @inline(__always)
    static func map2(_ a: Tensor, _ b: Tensor, _ f: (Float, Float) -> Float) -> Tensor {
        precondition(a.count == b.count, "shapes \(a.shape) and \(b.shape) differ")
        var out = [Float](repeating: 0, count: a.count)
        a.data.withUnsafeBufferPointer { ap in
            b.data.withUnsafeBufferPointer { bp in
                out.withUnsafeMutableBufferPointer { op in
                    for i in 0..<op.count { op[i] = f(ap[i], bp[i]) }
                }
            }
        }
        return Tensor(shape: a.shape, data: out)
    }

    @inline(__always)
    static func map1(_ a: Tensor, _ f: (Float) -> Float) -> Tensor {
        var out = a
        out.data.withUnsafeMutableBufferPointer { op in
            for i in 0..<op.count { op[i] = f(op[i]) }
        }
        return out
    }
}

/// x̂₀ and ε̂ from a model output, as both DDIM schedulers compute them (diffusers'
/// scheduling_ddim.py step, "2. compute predicted original sample from predicted noise also
/// called predicted_x0 of formula (12)"); αₜ = ᾱ_t, βₜ = 1 − ᾱ_t.
@inline(__always)
func predictOriginalAndEpsilon(_ type: PredictionType, modelOutput: Tensor, sample: Tensor,
                               alphaProd: Float, betaProd: Float) -> (x0: Tensor, eps: Tensor) {
    let sa = alphaProd.squareRoot(), sb = betaProd.squareRoot()
    switch type {
    case .epsilon:
        // x̂₀ = (xₜ − √βₜ·ε) / √αₜ
        let x0 = Elementwise.map2(sample, modelOutput) { x, e in (x - sb * e) / sa }
        return (x0, modelOutput)
    case .sample:
        // ε̂ = (xₜ − √αₜ·x̂₀) / √βₜ
        let eps = Elementwise.map2(sample, modelOutput) { x, x0 in (x - sa * x0) / sb }
        return (modelOutput, eps)
    case .vPrediction:
        // x̂₀ = √αₜ·xₜ − √βₜ·v,  ε̂ = √αₜ·v + √βₜ·xₜ
        let x0 = Elementwise.map2(sample, modelOutput) { x, v in sa * x - sb * v }
        let eps = Elementwise.map2(sample, modelOutput) { x, v in sa * v + sb * x }
        return (x0, eps)
    }
}

/// diffusers' DDIMScheduler, built from scheduler/scheduler_config.json the way
/// `DDIMScheduler.from_config(config)` is: keys it knows are read, missing ones take DDIM's own
/// defaults (clip_sample true, set_alpha_to_one true, steps_offset 0, epsilon, leading), and
/// keys of other schedulers (PNDM's skip_prk_steps, …) are ignored.
public struct DDIMScheduler: Sendable {
    public let schedule: NoiseSchedule
    public let clipSample: Bool
    public let clipSampleRange: Float
    public let setAlphaToOne: Bool
    public let stepsOffset: Int
    public let predictionType: PredictionType
    public let timestepSpacing: TimestepSpacing
    /// ᾱ used for the step past the last timestep: 1 with set_alpha_to_one, else ᾱ₀.
    public let finalAlphaCumprod: Float
    public private(set) var numInferenceSteps: Int?
    /// Inference timesteps, high to low, after `setTimesteps`.
    public private(set) var timesteps: [Int] = []

    public var alphasCumprod: [Float] { schedule.alphasCumprod }
    public var numTrainTimesteps: Int { schedule.numTrainTimesteps }

    public init(config: JSONConfig) throws {
        let c = try DDIMConfig(config)
        (schedule, clipSample, clipSampleRange, stepsOffset) = (c.schedule, c.clipSample, c.clipSampleRange, c.stepsOffset)
        (predictionType, timestepSpacing) = (c.predictionType, c.timestepSpacing)
        setAlphaToOne = try config.bool("set_alpha_to_one", default: true)
        if try config.bool("thresholding", default: false) {
            throw ToolError("\(config.label): thresholding = true (dynamic thresholding) is not supported — set it to false")
        }
        finalAlphaCumprod = setAlphaToOne ? 1 : schedule.alphasCumprod[0]
    }

    /// The scheduler of a model folder (scheduler/scheduler_config.json).
    public init(folder: ModelFolder) throws {
        try self.init(config: folder.config("scheduler", file: "scheduler_config.json"))
    }

    /// diffusers' set_timesteps.
    public mutating func setTimesteps(_ steps: Int) throws {
        let t = numTrainTimesteps
        guard steps >= 1 else { throw ToolError("the number of inference steps must be at least 1, got \(steps)") }
        guard steps <= t else {
            throw ToolError("\(steps) inference steps is more than the scheduler's \(t) training timesteps")
        }
        numInferenceSteps = steps
        switch timestepSpacing {
        case .linspace:
            // np.linspace(0, T − 1, n).round()[::-1]
            timesteps = DDIMTimesteps.linspace(to: t - 1, count: steps).reversed()
        case .leading:
            // (arange(n) · (T // n)).round()[::-1] + steps_offset
            let ratio = t / steps
            timesteps = (0..<steps).reversed().map { $0 * ratio + stepsOffset }
        case .trailing:
            // round(arange(T, 0, −T/n)) − 1
            timesteps = DDIMTimesteps.trailing(train: t, count: steps).map { $0 - 1 }
        }
    }

    /// The inference step size in training timesteps: T // n.
    public var stepRatio: Int { numTrainTimesteps / (numInferenceSteps ?? 1) }

    /// ᾱ at a training timestep, or the final value for t < 0.
    func alphaProd(_ t: Int) -> Float { t >= 0 ? alphasCumprod[t] : finalAlphaCumprod }

    /// σₜ² of DDIM (formula (16) of the paper): (1 − ᾱₜ₋₁)/(1 − ᾱₜ) · (1 − ᾱₜ/ᾱₜ₋₁).
    public func variance(timestep t: Int, previous prev: Int) -> Float {
        let a = alphaProd(t), ap = alphaProd(prev)
        let b = 1 - a, bp = 1 - ap
        return (bp / b) * (1 - a / ap)
    }

    /// One DDIM step from timestep t to t − T/n: diffusers' DDIMScheduler.step, i.e. formula (12)
    /// of the DDIM paper (Song et al. 2020),
    ///
    ///     x_{t−1} = √ᾱ_{t−1} · x̂₀ + √(1 − ᾱ_{t−1} − σₜ²) · ε̂ + σₜ · z,
    ///     x̂₀ = (xₜ − √(1 − ᾱₜ) · ε̂) / √ᾱₜ,   σₜ = η · √((1 − ᾱ_{t−1})/(1 − ᾱₜ) · (1 − ᾱₜ/ᾱ_{t−1})),
    ///
    /// with x̂₀ clipped to ±clip_sample_range when clip_sample is set. With η > 0, z is drawn as
    /// one randn of the sample's shape from `generator` (or taken from `varianceNoise`).
    /// Returns (prev_sample, pred_original_sample).
    public func step(modelOutput: Tensor, timestep t: Int, sample: Tensor, eta: Float = 0,
                     useClippedModelOutput: Bool = false, generator: TorchGenerator? = nil,
                     varianceNoise: Tensor? = nil) throws -> (prevSample: Tensor, predOriginalSample: Tensor) {
        guard let steps = numInferenceSteps else {
            throw ToolError("DDIMScheduler.step called before setTimesteps")
        }
        guard modelOutput.shape == sample.shape else {
            throw ToolError("DDIM step: model output \(modelOutput.shape) and sample \(sample.shape) differ in shape")
        }
        guard t >= 0, t < numTrainTimesteps else {
            throw ToolError("DDIM step: timestep \(t) is outside 0..<\(numTrainTimesteps)")
        }
        // 1. previous timestep t − T // n
        let prev = t - numTrainTimesteps / steps
        // 2. ᾱₜ, ᾱₜ₋₁ and βₜ = 1 − ᾱₜ (float32 scalars, as torch's 0-dim tensors)
        let alphaT = alphasCumprod[t]
        let alphaPrev = alphaProd(prev)
        let betaT = 1 - alphaT
        // 3. predicted x̂₀ and ε̂
        var (x0, eps) = predictOriginalAndEpsilon(predictionType, modelOutput: modelOutput, sample: sample,
                                                  alphaProd: alphaT, betaProd: betaT)
        // 4. clip x̂₀
        if clipSample {
            let r = clipSampleRange
            x0 = Elementwise.map1(x0) { min(max($0, -r), r) }
        }
        // 5. σₜ = η · √variance
        let stdDev = eta * variance(timestep: t, previous: prev).squareRoot()
        if useClippedModelOutput {
            // ε̂ re-derived from the clipped x̂₀
            let sa = alphaT.squareRoot(), sb = betaT.squareRoot()
            eps = Elementwise.map2(sample, x0) { x, x0 in (x - sa * x0) / sb }
        }
        // 6. "direction pointing to x_t" of formula (12): √(1 − ᾱₜ₋₁ − σₜ²) · ε̂
        let dirScale = (1 - alphaPrev - stdDev * stdDev).squareRoot()
        // 7. x_{t−1} = √ᾱₜ₋₁ · x̂₀ + direction
        let sap = alphaPrev.squareRoot()
        var prevSample = Elementwise.map2(x0, eps) { x0, e in sap * x0 + dirScale * e }
        if eta > 0 {
            let noise: Tensor
            if let varianceNoise {
                guard generator == nil else {
                    throw ToolError("DDIM step: give either a generator or variance noise, not both")
                }
                guard varianceNoise.shape == sample.shape else {
                    throw ToolError("DDIM step: variance noise \(varianceNoise.shape) does not match the sample \(sample.shape)")
                }
                noise = varianceNoise
            } else {
                guard let generator else {
                    throw ToolError("DDIM step with eta > 0 needs a random generator (a seed) or variance noise")
                }
                noise = generator.randn(shape: sample.shape)
            }
            // prev + σₜ·z, with σₜ·z rounded first as torch does
            prevSample = Elementwise.map2(prevSample, noise) { p, z in p + stdDev * z }
        }
        return (prevSample, x0)
    }

    /// diffusers' add_noise: √ᾱₜ·x₀ + √(1 − ᾱₜ)·ε, one timestep per batch element (or one for all).
    public func addNoise(original: Tensor, noise: Tensor, timesteps: [Int]) throws -> Tensor {
        try DDIMTimesteps.addNoise(alphasCumprod: alphasCumprod, original: original, noise: noise, timesteps: timesteps)
    }

    /// The DiffEdit pipeline's get_timesteps(steps, strength): the last ⌊steps·strength⌋ timesteps
    /// (high to low) of the schedule set by `setTimesteps(steps)`.
    public func strengthTimesteps(strength: Double) throws -> [Int] {
        guard let steps = numInferenceSteps else { throw ToolError("strengthTimesteps called before setTimesteps") }
        let start = try DDIMTimesteps.startIndex(steps: steps, strength: strength)
        return Array(timesteps[start...])
    }
}

/// Timestep arithmetic shared by both DDIM schedulers, reproducing numpy's float64 behaviour.
public enum DDIMTimesteps {
    /// np.linspace(0, last, n).round() (round half to even), as integers, ascending.
    static func linspace(to last: Int, count n: Int) -> [Int] {
        if n == 1 { return [0] }
        let step = Double(last) / Double(n - 1)
        return (0..<n).map { i in
            let v = i == n - 1 ? Double(last) : Double(i) * step + 0
            return Int(v.rounded(.toNearestOrEven))
        }
    }

    /// np.round(np.arange(T, 0, −T/n)) as integers, descending. numpy's arange fills
    /// `start + i·δ` with δ = (start + step) − start, so that is what is computed here.
    static func trailing(train t: Int, count n: Int) -> [Int] {
        let step = -(Double(t) / Double(n))
        let length = Int((Double(0 - t) / step).rounded(.up))
        let start = Double(t)
        let delta = (start + step) - start
        return (0..<length).map { i in
            let v = i == 0 ? start : (i == 1 ? start + step : start + Double(i) * delta)
            return Int(v.rounded(.toNearestOrEven))
        }
    }

    /// t_start of the DiffEdit pipeline's get_timesteps / get_inverse_timesteps:
    /// n − min(int(n·strength), n), at least 0.
    public static func startIndex(steps n: Int, strength: Double) throws -> Int {
        guard strength >= 0, strength <= 1 else {
            throw ToolError("strength must be in [0, 1], got \(strength)")
        }
        let initTimestep = min(Int(Double(n) * strength), n)
        return max(n - initTimestep, 0)
    }

    static func addNoise(alphasCumprod: [Float], original: Tensor, noise: Tensor, timesteps: [Int]) throws -> Tensor {
        guard original.shape == noise.shape else {
            throw ToolError("add_noise: sample \(original.shape) and noise \(noise.shape) differ in shape")
        }
        let batch = original.shape.first ?? 1
        guard timesteps.count == 1 || timesteps.count == batch else {
            throw ToolError("add_noise: \(timesteps.count) timesteps for a batch of \(batch)")
        }
        for t in timesteps where t < 0 || t >= alphasCumprod.count {
            throw ToolError("add_noise: timestep \(t) is outside 0..<\(alphasCumprod.count)")
        }
        let inner = original.count / max(batch, 1)
        var out = [Float](repeating: 0, count: original.count)
        original.data.withUnsafeBufferPointer { xp in
            noise.data.withUnsafeBufferPointer { np in
                out.withUnsafeMutableBufferPointer { op in
                    for b in 0..<batch {
                        let a = alphasCumprod[timesteps.count == 1 ? timesteps[0] : timesteps[b]]
                        let sa = a.squareRoot(), sb = (1 - a).squareRoot()
                        for i in (b * inner)..<((b + 1) * inner) { op[i] = sa * xp[i] + sb * np[i] }
                    }
                }
            }
        }
        return Tensor(shape: original.shape, data: out)
    }
}
