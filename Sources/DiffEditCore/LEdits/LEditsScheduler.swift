import Foundation

/// The scheduler LEDITS++ runs, built from the model's scheduler config the way diffusers'
/// LEditsPPPipelineStableDiffusion ends up with it:
/// - ddim: DDIMScheduler; dpm: DPMSolverMultistepScheduler with algorithm_type sde-dpmsolver++
///   and solver_order 2 (`from_config(config, algorithm_type="sde-dpmsolver++", solver_order=2)`,
///   what the pipeline's `__init__` makes of any other scheduler);
/// - steps_offset 1 and clip_sample false (the pipeline's `__init__` rewrites both);
/// - timestep_spacing "leading" (`invert` sets it), over int(N·(1 + skip)) steps of which the
///   last N are run (`LEditsScheduler.schedule`).
/// Unlike DiffEdit there is no inverse scheduler: the inversion noises x₀ to every timestep and
/// solves each step's noise with the forward scheduler (`computeNoise`), and the edit retraces
/// the same steps with that noise (`step`).
public enum LEditsScheduler {
    case ddim(DDIMScheduler)
    case dpm(DPMSolverMultistepScheduler)

    /// The config keys the pipeline overrides, for each scheduler.
    static func overrides(_ kind: SchedulerKind) -> [String: Any] {
        var o: [String: Any] = ["steps_offset": 1, "timestep_spacing": "leading"]
        switch kind {
        case .ddim: o["clip_sample"] = false
        case .dpm: (o["algorithm_type"], o["solver_order"]) = ("sde-dpmsolver++", 2)
        }
        return o
    }

    public init(_ kind: SchedulerKind, config json: JSONConfig) throws {
        let config = JSONConfig(values: json.values.merging(Self.overrides(kind)) { $1 }, label: json.label)
        switch kind {
        case .ddim: self = .ddim(try DDIMScheduler(config: config))
        case .dpm: self = .dpm(try DPMSolverMultistepScheduler(config: config, allowingSDE: true))
        }
    }

    /// The scheduler of a model (its scheduler/scheduler_config.json, or a single file's).
    public init(_ kind: SchedulerKind, folder: ModelFolder) throws {
        try self.init(kind, config: folder.schedulerConfig())
    }

    public var kind: SchedulerKind {
        switch self {
        case .ddim: return .ddim
        case .dpm: return .dpm
        }
    }

    public var predictionType: PredictionType {
        switch self {
        case .ddim(let s): return s.predictionType
        case .dpm(let s): return s.predictionType
        }
    }

    /// Timesteps of the schedule set last, high to low.
    public var timesteps: [Int] {
        switch self {
        case .ddim(let s): return s.timesteps
        case .dpm(let s): return s.timesteps
        }
    }

    /// diffusers' set_timesteps (which also resets DPM-Solver's multistep state).
    public mutating func setTimesteps(_ steps: Int) throws {
        switch self {
        case .ddim(var s): try s.setTimesteps(steps); self = .ddim(s)
        case .dpm(var s): try s.setTimesteps(steps); self = .dpm(s)
        }
    }

    /// int(N·(1 + skip)) as Python computes it (a double product, truncated).
    public static func totalSteps(steps: Int, skip: Double) -> Int {
        Int(Double(steps) * (1 + skip))
    }

    /// What `invert` sets up: set_timesteps(int(N·(1 + skip))), the last N timesteps of it (high to
    /// low, the denoising order). The schedule is left set.
    public mutating func schedule(steps: Int, skip: Double) throws -> (total: Int, timesteps: [Int]) {
        guard skip >= 0, skip < 1 else { throw ToolError("skip must be in [0, 1), got \(skip)") }
        let total = Self.totalSteps(steps: steps, skip: skip)
        guard total <= 1000 else {
            throw ToolError("--steps \(steps) with --skip \(skip) makes \(total) scheduler steps, more than the 1000 training timesteps — use fewer steps or a smaller skip")
        }
        try setTimesteps(total)
        let all = timesteps
        guard all.count >= steps else {
            throw ToolError("the \(kind.rawValue) schedule of \(total) steps has \(all.count) timesteps, fewer than --steps \(steps)")
        }
        return (total, Array(all.suffix(steps)))
    }

    /// The LEDITS++ schedule of a model folder: (total steps, the N timesteps run, high to low).
    public static func schedule(_ kind: SchedulerKind, folder: ModelFolder, steps: Int, skip: Double) throws -> (total: Int, timesteps: [Int]) {
        var s = try LEditsScheduler(kind, folder: folder)
        return try s.schedule(steps: steps, skip: skip)
    }

    /// diffusers' add_noise at one timestep, for the whole batch.
    public func addNoise(original: Tensor, noise: Tensor, timestep t: Int) throws -> Tensor {
        switch self {
        case .ddim(let s): return try s.addNoise(original: original, noise: noise, timesteps: [t])
        case .dpm(let s): return try s.addNoise(original: original, noise: noise, timesteps: [t])
        }
    }

    /// The pipeline's compute_noise: the noise of the step from `sample` at t to `previous` and
    /// the latent that step reaches (DDIM with η = 1, or sde-dpmsolver++ keeping its state).
    public mutating func computeNoise(previous: Tensor, sample: Tensor, timestep t: Int,
                                      noisePrediction: Tensor) throws -> (noise: Tensor, corrected: Tensor) {
        switch self {
        case .ddim(let s):
            return try s.computeNoise(previous: previous, sample: sample, timestep: t, noisePrediction: noisePrediction, eta: 1)
        case .dpm(var s):
            let r = try s.computeNoise(previous: previous, sample: sample, timestep: t, modelOutput: noisePrediction)
            self = .dpm(s)
            return r
        }
    }

    /// scheduler.step(noise_pred, t, latents, variance_noise=z, eta=1).prev_sample: DDIM's step
    /// with η = 1 and the given variance noise, or sde-dpmsolver++'s with it.
    public mutating func step(noisePrediction: Tensor, timestep t: Int, sample: Tensor, noise: Tensor) throws -> Tensor {
        switch self {
        case .ddim(let s):
            return try s.step(modelOutput: noisePrediction, timestep: t, sample: sample, eta: 1, varianceNoise: noise).prevSample
        case .dpm(var s):
            let r = try s.step(modelOutput: noisePrediction, timestep: t, sample: sample, noise: noise)
            self = .dpm(s)
            return r
        }
    }
}
