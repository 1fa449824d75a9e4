import Foundation

/// diffusers' DPMSolverMultistepInverseScheduler (the inverse of DPMSolverMultistepScheduler,
/// which diffusers built for DiffEdit's latent inversion) as
/// `DPMSolverMultistepInverseScheduler.from_config(pipe.scheduler.config)` builds it: the same
/// multistep DPM-Solver++ update, stepping from low noise to high. Keys and defaults:
/// `DPMSolverConfig` (final_sigmas_type does not apply: the last σ is the noisiest timestep's).
public struct DPMSolverMultistepInverseScheduler: DPMSolverScheduler {
    public let config: DPMSolverConfig
    public private(set) var numInferenceSteps: Int?
    private var solver: DPMSolverMultistep
    /// Inference timesteps, low to high, after `setTimesteps`.
    public var timesteps: [Int] { solver.timesteps }
    /// σ at each timestep, then σ at the noisiest (unclipped) training timestep.
    public var sigmas: [Float] { solver.sigmas }

    public init(config json: JSONConfig) throws {
        config = try DPMSolverConfig(json)
        solver = DPMSolverMultistep(config)
    }

    public init(folder: ModelFolder) throws {
        try self.init(config: folder.config("scheduler", file: "scheduler_config.json"))
    }

    /// diffusers' set_timesteps(n): with N = T − 1 − (timesteps λ-clipped) the noisiest
    /// timestep, timesteps are
    ///   linspace: round(linspace(0, N, n + 1)) without the last;
    ///   leading:  k·((N + 1) // (n + 1)) for k = 0 … n − 1, + steps_offset;
    ///   trailing: round(arange(N + 1, 0, −T/n)) reversed, − 1;
    /// σ is the training σ at each, then σ at N. Resets the multistep history.
    public mutating func setTimesteps(_ steps: Int) throws {
        let t = numTrainTimesteps
        try TimestepSchedule.requireSteps(steps, train: t)
        let noisiest = t - 1 - config.clippedCount
        var ts: [Int]
        switch config.timestepSpacing {
        case .linspace:
            ts = Array(TimestepSchedule.linspace(to: noisiest, count: steps + 1).dropLast())
        case .leading:
            let ratio = (noisiest + 1) / (steps + 1)
            ts = (0..<steps).map { $0 * ratio + config.stepsOffset }
        case .trailing:
            ts = TimestepSchedule.trailing(train: t, count: steps, from: noisiest + 1).reversed().map { $0 - 1 }
        }
        // diffusers drops repeated timesteps here (keeping σ as computed before); a schedule with
        // repeats only comes from about as many steps as training timesteps and is refused.
        try DPMSolverConfig.requireDistinct(ts, steps: steps)
        solver = DPMSolverMultistep(config, timesteps: ts, sigmas: ts.map(config.sigma(at:)) + [config.trainSigmas[noisiest]])
        numInferenceSteps = steps
    }

    /// One inversion step from timestep t to the next noisier level (diffusers'
    /// step(...).prev_sample, which names the noisier latent "previous"); see
    /// `DPMSolverMultistep.step`.
    public mutating func step(modelOutput: Tensor, timestep t: Int, sample: Tensor) throws -> Tensor {
        try solver.step(modelOutput: modelOutput, timestep: t, sample: sample, scheduler: "DPM-Solver inverse",
                        firstOrderLastStep: false)
    }
}
