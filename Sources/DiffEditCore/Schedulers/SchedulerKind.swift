/// What the DiffEdit stages need of a scheduler that denoises (noise-diff-mask's noising, denoise):
/// diffusers' set_timesteps, the pipeline's get_timesteps, add_noise and step(...).prev_sample.
public protocol DenoisingScheduler {
    var predictionType: PredictionType { get }
    /// Inference timesteps, high to low, after `setTimesteps`.
    var timesteps: [Int] { get }
    var numInferenceSteps: Int? { get }
    mutating func setTimesteps(_ steps: Int) throws
    func addNoise(original: Tensor, noise: Tensor, timesteps: [Int]) throws -> Tensor
    /// x at the next lower noise level. `eta` and `generator` are what the pipeline's
    /// prepare_extra_step_kwargs hands to a step that takes them: DDIM's η (with η > 0, one randn
    /// of the sample's shape from the generator per step); schedulers without η refuse η ≠ 0.
    mutating func prevSample(modelOutput: Tensor, timestep: Int, sample: Tensor, eta: Float,
                             generator: TorchGenerator?) throws -> Tensor
}

/// What DiffEdit's inversion needs of an inverse scheduler.
public protocol InversionScheduler {
    var predictionType: PredictionType { get }
    /// ᾱ per training timestep (the pipeline's get_epsilon reads the inverse scheduler's).
    var alphasCumprod: [Float] { get }
    /// Inference timesteps, low to high, after `setTimesteps`.
    var timesteps: [Int] { get }
    var numInferenceSteps: Int? { get }
    mutating func setTimesteps(_ steps: Int) throws
    /// x at the next higher noise level (diffusers' inverse step(...).prev_sample).
    mutating func prevSample(modelOutput: Tensor, timestep: Int, sample: Tensor) throws -> Tensor
}

extension DenoisingScheduler {
    /// The DiffEdit pipeline's get_timesteps(steps, strength): the last ⌊steps·strength⌋
    /// timesteps (high to low) of the schedule set by `setTimesteps(steps)` — timesteps[t_start ·
    /// order:], where every scheduler's `order` attribute here is 1.
    public func strengthTimesteps(strength: Double) throws -> [Int] {
        guard let steps = numInferenceSteps else { throw ToolError("strengthTimesteps called before setTimesteps") }
        let start = try TimestepSchedule.startIndex(steps: steps, strength: strength)
        return start < timesteps.count ? Array(timesteps[start...]) : []
    }
}

extension InversionScheduler {
    /// The DiffEdit pipeline's get_inverse_timesteps(steps, strength): the first
    /// ⌊steps·strength⌋ timesteps (low to high), or all of them when strength is 1.
    public func strengthTimesteps(strength: Double) throws -> [Int] {
        guard let steps = numInferenceSteps else { throw ToolError("strengthTimesteps called before setTimesteps") }
        let start = try TimestepSchedule.startIndex(steps: steps, strength: strength)
        return Array(timesteps[..<max(timesteps.count - start, 0)])
    }
}

/// The scheduler pairs the DiffEdit tools run with (`--scheduler`), each built from the model's
/// scheduler/scheduler_config.json the way diffusers' `from_config` builds it:
/// - ddim: DDIMScheduler, and DDIMInverseScheduler for the inversion (the pipeline's defaults);
/// - dpm:  DPMSolverMultistepScheduler (DPM-Solver++, second order), and
///         DPMSolverMultistepInverseScheduler for the inversion.
public enum SchedulerKind: String, CaseIterable, Sendable {
    case ddim, dpm

    public func denoising(folder: ModelFolder) throws -> any DenoisingScheduler {
        switch self {
        case .ddim: return try DDIMScheduler(folder: folder)
        case .dpm: return try DPMSolverMultistepScheduler(folder: folder)
        }
    }

    public func inversion(folder: ModelFolder) throws -> any InversionScheduler {
        switch self {
        case .ddim: return try DDIMInverseScheduler(folder: folder)
        case .dpm: return try DPMSolverMultistepInverseScheduler(folder: folder)
        }
    }
}

extension DDIMScheduler: DenoisingScheduler {
    public func prevSample(modelOutput: Tensor, timestep: Int, sample: Tensor, eta: Float,
                           generator: TorchGenerator?) throws -> Tensor {
        try step(modelOutput: modelOutput, timestep: timestep, sample: sample, eta: eta, generator: generator).prevSample
    }
}

extension DDIMInverseScheduler: InversionScheduler {
    public func prevSample(modelOutput: Tensor, timestep: Int, sample: Tensor) throws -> Tensor {
        try step(modelOutput: modelOutput, timestep: timestep, sample: sample).prevSample
    }
}

extension DPMSolverMultistepScheduler: DenoisingScheduler {
    /// diffusers' DPMSolverMultistepScheduler.step takes no η (the pipeline then drops it): a
    /// nonzero η is refused rather than ignored.
    public mutating func prevSample(modelOutput: Tensor, timestep: Int, sample: Tensor, eta: Float,
                                    generator: TorchGenerator?) throws -> Tensor {
        guard eta == 0 else {
            throw ToolError("eta \(eta) is DDIM's stochastic step; DPM-Solver++ is deterministic and takes no eta — use eta 0 or the DDIM scheduler")
        }
        return try step(modelOutput: modelOutput, timestep: timestep, sample: sample)
    }
}

extension DPMSolverMultistepInverseScheduler: InversionScheduler {
    public mutating func prevSample(modelOutput: Tensor, timestep: Int, sample: Tensor) throws -> Tensor {
        try step(modelOutput: modelOutput, timestep: timestep, sample: sample)
    }
}
