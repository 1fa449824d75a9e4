import Foundation

/// The two DPM-Solver schedulers: what they read from their config.
public protocol DPMSolverScheduler {
    var config: DPMSolverConfig { get }
}

extension DPMSolverScheduler {
    public var predictionType: PredictionType { config.predictionType }
    public var alphasCumprod: [Float] { config.schedule.alphasCumprod }
    public var numTrainTimesteps: Int { config.numTrainTimesteps }
}

/// The scheduler_config.json keys DPMSolverMultistepScheduler and its inverse both read, with the
/// defaults diffusers gives them, as `DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)`
/// builds them from a Stable Diffusion model's scheduler config (a DDIM or PNDM one). Keys the file
/// does not hold take the DPM-Solver's own defaults even when the pipeline's DDIM scheduler
/// filled them in (diffusers passes on only values written in the file, `_use_default_values`):
/// above all timestep_spacing is "linspace" when the file does not say (DDIM would take
/// "leading"; SD 1.5's own file does not say). The defaults: dpmsolver++, solver_order 2,
/// midpoint, lower_order_final true, euler_at_final false, final_sigmas_type "zero" (forward only),
/// lambda_min_clipped −∞, steps_offset 0, epsilon.
///
/// Accepted as diffusers accepts them: solver_order 1–3; solver_type midpoint or heun (logrho,
/// bh1, bh2 become midpoint); algorithm_type dpmsolver++ (deis becomes dpmsolver++). Refused, with
/// the key named: the first-generation and SDE algorithms (dpmsolver, sde-dpmsolver,
/// sde-dpmsolver++), thresholding, learned variance, and Karras, exponential, beta, Lu-lambda or
/// flow sigmas — none of them is what a Stable Diffusion config asks for. The one exception is
/// LEDITS++ (`allowingSDE`), whose pipeline builds sde-dpmsolver++ of order 2 itself and hands
/// every step its noise.
public struct DPMSolverConfig: Sendable {
    public enum SolverType: String, Sendable { case midpoint, heun }
    /// dpmsolver++ (deterministic), or its SDE form (Lu et al. 2022, §4: each step adds
    /// σ_t·√(1 − e^{−2h})·z), which only LEDITS++ runs, with the noise its inversion solved for.
    public enum Algorithm: String, Sendable {
        case dpmsolverPlusPlus = "dpmsolver++"
        case sdeDPMSolverPlusPlus = "sde-dpmsolver++"
    }
    public enum FinalSigmas: String, Sendable {
        case zero
        case sigmaMin = "sigma_min"
    }

    public let schedule: NoiseSchedule
    public let solverOrder: Int
    public let solverType: SolverType
    public let algorithm: Algorithm
    public let predictionType: PredictionType
    public let lowerOrderFinal: Bool
    public let eulerAtFinal: Bool
    /// The forward scheduler's last σ (the inverse scheduler has no such key).
    public let finalSigmas: FinalSigmas
    /// True when algorithm_type is "deis" (renamed to dpmsolver++; the forward scheduler then
    /// refuses final_sigmas_type "zero", as diffusers does).
    let renamedFromDEIS: Bool
    public let lambdaMinClipped: Double
    public let timestepSpacing: TimestepSpacing
    public let stepsOffset: Int
    /// σ_t = √((1 − ᾱ_t)/ᾱ_t) at every training timestep, each operation in float32 as torch does.
    public let trainSigmas: [Float]
    /// torch.searchsorted(flip(λ_t), lambda_min_clipped): how many of the noisiest timesteps
    /// λ_t = log α_t − log σ_t (α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t)) falls below the clipping value.
    public let clippedCount: Int

    /// `allowingSDE`: sde-dpmsolver++ of order 1 or 2 is taken (LEDITS++); otherwise refused.
    public init(_ config: JSONConfig, allowingSDE: Bool = false) throws {
        let label = config.label
        schedule = try NoiseSchedule(config: config)
        solverOrder = try config.int("solver_order", default: 2)
        guard (1...3).contains(solverOrder) else {
            throw ToolError("\(label): solver_order \(solverOrder) is not supported by DPM-Solver — use 1, 2 or 3")
        }
        let algorithm = try config.string("algorithm_type", default: "dpmsolver++")
        if allowingSDE && algorithm == Algorithm.sdeDPMSolverPlusPlus.rawValue {
            guard solverOrder <= 2 else {
                throw ToolError("\(label): solver_order \(solverOrder) with sde-dpmsolver++ is not supported — LEDITS++ runs it at order 2")
            }
            self.algorithm = .sdeDPMSolverPlusPlus
        } else {
            guard algorithm == "dpmsolver++" || algorithm == "deis" else {
                throw ToolError("\(label): algorithm_type '\(algorithm)' is not supported — diffedit's DPM-Solver is dpmsolver++ (set algorithm_type to dpmsolver++ or remove it)")
            }
            self.algorithm = .dpmsolverPlusPlus
        }
        renamedFromDEIS = algorithm == "deis"
        let solver = try config.string("solver_type", default: "midpoint")
        if ["logrho", "bh1", "bh2"].contains(solver) {
            solverType = .midpoint  // diffusers' renaming of DEIS's and UniPC's solver types
        } else if let s = SolverType(rawValue: solver) {
            solverType = s
        } else {
            throw ToolError("\(label): solver_type '\(solver)' is not supported — use midpoint or heun")
        }
        let p = try config.string("prediction_type", default: "epsilon")
        guard let pt = PredictionType(rawValue: p) else {
            throw ToolError("\(label): prediction_type '\(p)' is not supported by diffedit's DPM-Solver — use epsilon, v_prediction or sample")
        }
        predictionType = pt
        lowerOrderFinal = try config.bool("lower_order_final", default: true)
        eulerAtFinal = try config.bool("euler_at_final", default: false)
        let f = try config.string("final_sigmas_type", default: "zero")
        guard let fs = FinalSigmas(rawValue: f) else {
            throw ToolError("\(label): final_sigmas_type '\(f)' is not supported — use zero or sigma_min")
        }
        finalSigmas = fs
        lambdaMinClipped = try config.doubleOrInfinity("lambda_min_clipped", default: -.infinity)
        let s = try config.string("timestep_spacing", default: "linspace")
        guard let sp = TimestepSpacing(rawValue: s) else {
            throw ToolError("\(label): timestep_spacing '\(s)' is not supported — use leading, trailing or linspace")
        }
        timestepSpacing = sp
        stepsOffset = try config.int("steps_offset", default: 0)
        if try config.bool("thresholding", default: false) {
            throw ToolError("\(label): thresholding = true (dynamic thresholding) is not supported — set it to false")
        }
        if config.has("variance_type") {
            throw ToolError("\(label): variance_type '\(try config.string("variance_type"))' (a learned variance) is not supported — remove the key (Stable Diffusion predicts no variance)")
        }
        for key in ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas"]
        where try config.bool(key, default: false) {
            throw ToolError("\(label): \(key) = true is not supported — set it to false (diffedit's DPM-Solver steps on the model's own timesteps)")
        }

        let acp = schedule.alphasCumprod
        trainSigmas = acp.map { a in ((1 - a) / a).squareRoot() }
        let lambdas = acp.map { a in log(a.squareRoot()) - log((1 - a).squareRoot()) }
        // λ falls with t: flipped it rises, and searchsorted counts the values below the bound.
        let bound = lambdaMinClipped
        clippedCount = lambdas.filter { Double($0) < bound }.count
        guard clippedCount < acp.count else {
            throw ToolError("\(label): lambda_min_clipped \(bound) clips every timestep — lower it or remove it")
        }
    }

    public var numTrainTimesteps: Int { schedule.numTrainTimesteps }

    /// σ at a (rounded, in-range) timestep: diffusers' np.interp over the training σ, which at an
    /// integer timestep is the training σ itself (clamped at both ends, as np.interp does).
    func sigma(at t: Int) -> Float { trainSigmas[min(max(t, 0), trainSigmas.count - 1)] }

    /// Refuses a schedule that repeats a timestep (only possible with about as many steps as
    /// training timesteps), where diffusers' step index would silently skip.
    static func requireDistinct(_ timesteps: [Int], steps: Int) throws {
        guard Set(timesteps).count == timesteps.count, !timesteps.isEmpty else {
            throw ToolError("\(steps) DPM-Solver steps do not fit this schedule's distinct timesteps — use fewer steps")
        }
    }

    /// diffusers' index_for_timestep: where t sits in the schedule (a schedule here never repeats
    /// a timestep). diffusers falls back on the last index for a timestep not in the schedule;
    /// that is refused here.
    static func index(of t: Int, in timesteps: [Int], scheduler: String) throws -> Int {
        guard let i = timesteps.firstIndex(of: t) else {
            throw ToolError("\(scheduler): timestep \(t) is not in the schedule \(timesteps.prefix(4))… — call setTimesteps with the steps the timesteps came from")
        }
        return i
    }
}
