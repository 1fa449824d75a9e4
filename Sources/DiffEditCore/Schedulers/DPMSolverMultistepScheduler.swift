import Foundation

/// diffusers' DPMSolverMultistepScheduler as `DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)`
/// builds it for a Stable Diffusion model (keys and defaults: `DPMSolverConfig`): the multistep
/// DPM-Solver++ of Lu et al. 2022, second order by default, for denoising in fewer steps than DDIM.
/// It keeps state between steps (the last data predictions and the step index), which
/// `setTimesteps` resets; steps must follow the schedule in order, as in diffusers.
public struct DPMSolverMultistepScheduler: DPMSolverScheduler {
    public let config: DPMSolverConfig
    /// The steps asked of setTimesteps (the pipeline's num_inference_steps).
    public private(set) var numInferenceSteps: Int?
    private var solver: DPMSolverMultistep
    /// Inference timesteps, high to low, after `setTimesteps`.
    public var timesteps: [Int] { solver.timesteps }
    /// σ at each timestep, then the final σ (0, or σ at t = 0 with final_sigmas_type sigma_min).
    public var sigmas: [Float] { solver.sigmas }

    /// `allowingSDE`: a config asking for sde-dpmsolver++ is taken (LEDITS++, which gives every
    /// step its noise); the DiffEdit stages refuse it.
    public init(config json: JSONConfig, allowingSDE: Bool = false) throws {
        config = try DPMSolverConfig(json, allowingSDE: allowingSDE)
        if config.renamedFromDEIS && config.finalSigmas == .zero {
            throw ToolError("\(json.label): algorithm_type 'deis' with final_sigmas_type 'zero' is refused by diffusers too — set final_sigmas_type to sigma_min, or algorithm_type to dpmsolver++")
        }
        solver = DPMSolverMultistep(config)
    }

    /// The scheduler of a model folder (scheduler/scheduler_config.json).
    public init(folder: ModelFolder) throws {
        try self.init(config: folder.config("scheduler", file: "scheduler_config.json"))
    }

    /// diffusers' set_timesteps(n) without custom timesteps or sigma schedules. With T training
    /// steps and T′ = T − (timesteps λ-clipped), timesteps are
    ///   linspace: round(linspace(0, T′ − 1, n + 1)) reversed, without the last (0);
    ///   leading:  k·(T′ // (n + 1)) for k = n … 1, + steps_offset;
    ///   trailing: round(arange(T′, 0, −T/n)) − 1;
    /// σ is the training σ at each, then the final σ. Resets the multistep history.
    public mutating func setTimesteps(_ steps: Int) throws {
        let t = numTrainTimesteps
        try TimestepSchedule.requireSteps(steps, train: t)
        let last = t - config.clippedCount
        var ts: [Int]
        switch config.timestepSpacing {
        case .linspace:
            ts = Array(TimestepSchedule.linspace(to: last - 1, count: steps + 1).reversed().dropLast())
        case .leading:
            let ratio = last / (steps + 1)
            ts = (1...steps).reversed().map { $0 * ratio + config.stepsOffset }
        case .trailing:
            ts = TimestepSchedule.trailing(train: t, count: steps, from: last).map { $0 - 1 }
        }
        try DPMSolverConfig.requireDistinct(ts, steps: steps)
        let final: Float = config.finalSigmas == .zero ? 0 : config.trainSigmas[0]
        solver = DPMSolverMultistep(config, timesteps: ts, sigmas: ts.map(config.sigma(at:)) + [final])
        numInferenceSteps = steps
    }

    /// One step of the schedule from timestep t to the next (diffusers' step(...).prev_sample);
    /// see `DPMSolverMultistep.step`. The last step is first order when final_sigmas_type is zero
    /// (it returns x̂₀).
    /// sde-dpmsolver++ takes the step's noise z as `noise` (diffusers' variance_noise).
    public mutating func step(modelOutput: Tensor, timestep t: Int, sample: Tensor, noise: Tensor? = nil) throws -> Tensor {
        try solver.step(modelOutput: modelOutput, timestep: t, sample: sample, scheduler: "DPM-Solver",
                        firstOrderLastStep: config.finalSigmas == .zero, noise: noise)
    }

    /// The LEDITS++ pipeline's compute_noise_sde_dpm_pp_2nd (see `DPMSolverMultistep.computeNoise`):
    /// the noise z of the step from `sample` at timestep t to `previous`, and the latent the step
    /// reaches with it. Steps through the schedule, keeping the multistep state, as `step` does.
    public mutating func computeNoise(previous: Tensor, sample: Tensor, timestep t: Int,
                                      modelOutput: Tensor) throws -> (noise: Tensor, corrected: Tensor) {
        guard config.algorithm == .sdeDPMSolverPlusPlus, config.solverOrder == 2 else {
            throw ToolError("DPM-Solver compute_noise needs sde-dpmsolver++ of order 2 (the LEDITS++ pipeline's)")
        }
        return try solver.computeNoise(previous: previous, sample: sample, timestep: t, modelOutput: modelOutput,
                                       scheduler: "DPM-Solver")
    }

    /// diffusers' add_noise: α·x₀ + σ_t·ε with (α, σ_t) from the σ of each timestep's place in
    /// the schedule set by setTimesteps (one timestep for all, or one per batch element).
    public func addNoise(original: Tensor, noise: Tensor, timesteps ts: [Int]) throws -> Tensor {
        guard numInferenceSteps != nil else { throw ToolError("DPM-Solver add_noise called before setTimesteps") }
        return try TimestepSchedule.addNoise(original: original, noise: noise, timesteps: ts) { t in
            let i = try DPMSolverConfig.index(of: t, in: timesteps, scheduler: "DPM-Solver add_noise")
            let (a, s) = DPMSolverMultistep.alphaSigma(sigmas[i])
            return (a, s)
        }
    }
}
