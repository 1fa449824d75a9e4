import Foundation

/// diffusers' DPMSolverMultistepInverseScheduler (the inverse of DPMSolverMultistepScheduler,
/// which diffusers built for DiffEdit's latent inversion) as
/// `DPMSolverMultistepInverseScheduler.from_config(pipe.scheduler.config)` builds it: the same
/// multistep DPM-Solver++ update, stepping from low noise to high. Keys and defaults:
/// `DPMSolverConfig` (final_sigmas_type does not apply: the last σ is the noisiest timestep's).
public struct DPMSolverMultistepInverseScheduler {
    public let config: DPMSolverConfig
    /// Inference timesteps, low to high, after `setTimesteps`.
    public private(set) var timesteps: [Int] = []
    /// σ at each timestep, then σ at the noisiest (unclipped) training timestep.
    public private(set) var sigmas: [Float] = []
    public private(set) var numInferenceSteps: Int?
    private var solver: DPMSolverMultistep
    private var stepIndex: Int?

    public var predictionType: PredictionType { config.predictionType }
    public var alphasCumprod: [Float] { config.schedule.alphasCumprod }
    public var numTrainTimesteps: Int { config.numTrainTimesteps }

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
        try DDIMTimesteps.requireSteps(steps, train: t)
        let noisiest = t - 1 - config.clippedCount
        var ts: [Int]
        switch config.timestepSpacing {
        case .linspace:
            ts = Array(DDIMTimesteps.linspace(to: noisiest, count: steps + 1).dropLast())
        case .leading:
            let ratio = (noisiest + 1) / (steps + 1)
            ts = (0..<steps).map { $0 * ratio + config.stepsOffset }
        case .trailing:
            ts = DDIMTimesteps.trailing(train: t, count: steps, from: noisiest + 1).reversed().map { $0 - 1 }
        }
        // diffusers drops repeated timesteps here (keeping σ as computed before); a schedule with
        // repeats only comes from about as many steps as training timesteps and is refused.
        try DPMSolverConfig.requireDistinct(ts, steps: steps)
        timesteps = ts
        sigmas = ts.map(config.sigma(at:)) + [config.trainSigmas[noisiest]]
        numInferenceSteps = steps
        solver = DPMSolverMultistep(config)
        stepIndex = nil
    }

    /// One inversion step from timestep t to the next noisier level (diffusers'
    /// step(...).prev_sample, which names the noisier latent "previous"). Steps follow the
    /// schedule in order from where the first one starts. With lower_order_final below 15 steps
    /// (or euler_at_final) the last step of the schedule is first order and the one before it at
    /// most second order.
    public mutating func step(modelOutput: Tensor, timestep t: Int, sample: Tensor) throws -> Tensor {
        guard numInferenceSteps != nil else {
            throw ToolError("DPMSolverMultistepInverseScheduler.step called before setTimesteps")
        }
        guard modelOutput.shape == sample.shape else {
            throw ToolError("DPM-Solver inverse step: model output \(modelOutput.shape) and sample \(sample.shape) differ in shape")
        }
        let i = try stepIndex ?? DPMSolverConfig.index(of: t, in: timesteps, scheduler: "DPM-Solver inverse step")
        guard i < timesteps.count, timesteps[i] == t else {
            throw ToolError("DPM-Solver inverse step: timestep \(t) is not the next one of the schedule — the multistep solver steps through it in order")
        }
        let n = timesteps.count
        let lowerOrderFinal = i == n - 1 && (config.eulerAtFinal || (config.lowerOrderFinal && n < 15))
        let lowerOrderSecond = i == n - 2 && config.lowerOrderFinal && n < 15
        let next = solver.step(modelOutput: modelOutput, sample: sample, sigmas: sigmas, index: i,
                               lowerOrderFinal: lowerOrderFinal, lowerOrderSecond: lowerOrderSecond)
        stepIndex = i + 1
        return next
    }

    /// The DiffEdit pipeline's get_inverse_timesteps(steps, strength): the first
    /// ⌊steps·strength⌋ timesteps (low to high), or all of them when strength is 1.
    public func strengthTimesteps(strength: Double) throws -> [Int] {
        guard let steps = numInferenceSteps else { throw ToolError("strengthTimesteps called before setTimesteps") }
        let start = try DDIMTimesteps.startIndex(steps: steps, strength: strength)
        return Array(timesteps[..<max(timesteps.count - start, 0)])
    }
}
