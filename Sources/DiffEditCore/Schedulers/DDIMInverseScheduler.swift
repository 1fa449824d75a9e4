/// diffusers' DDIMInverseScheduler as the DiffEdit pipeline builds it,
/// `DDIMInverseScheduler.from_config(scheduler.config)`: the same noise schedule as the DDIM
/// scheduler, with the inverse scheduler's own keys and defaults. It takes
/// num_train_timesteps, beta_*, trained_betas, clip_sample (default true), clip_sample_range,
/// set_alpha_to_one (default true; decides `initial_alpha_cumprod`), steps_offset,
/// prediction_type and timestep_spacing (leading or trailing only: diffusers raises for
/// linspace at set_timesteps, and so does this). DDIM-only keys such as thresholding are ignored.
public struct DDIMInverseScheduler: Sendable {
    public let config: DDIMConfig
    /// ᾱ used before the first training timestep: 1 with set_alpha_to_one, else ᾱ₀.
    public let initialAlphaCumprod: Float
    public private(set) var numInferenceSteps: Int?
    /// Inference timesteps, low to high, after `setTimesteps`.
    public private(set) var timesteps: [Int] = []

    public var schedule: NoiseSchedule { config.schedule }
    public var predictionType: PredictionType { config.predictionType }
    public var alphasCumprod: [Float] { schedule.alphasCumprod }
    public var numTrainTimesteps: Int { schedule.numTrainTimesteps }

    public init(config json: JSONConfig) throws {
        config = try DDIMConfig(json, honoursSetAlphaToZero: true)
        initialAlphaCumprod = config.setAlphaToOne ? 1 : config.schedule.alphasCumprod[0]
    }

    public init(folder: ModelFolder) throws {
        try self.init(config: folder.schedulerConfig())
    }

    /// diffusers' DDIMInverseScheduler.set_timesteps: ascending timesteps.
    public mutating func setTimesteps(_ steps: Int) throws {
        let t = numTrainTimesteps
        try TimestepSchedule.requireSteps(steps, train: t)
        switch config.timestepSpacing {
        case .leading:
            let ratio = t / steps
            timesteps = (0..<steps).map { $0 * ratio + config.stepsOffset }
        case .trailing:
            timesteps = TimestepSchedule.trailing(train: t, count: steps).reversed().map { $0 - 1 }
        case .linspace:
            throw ToolError("timestep_spacing 'linspace' is not supported by the DDIM inverse scheduler (diffusers refuses it too) — use a scheduler config with 'leading' or 'trailing'")
        }
        try TimestepSchedule.requireWithinSchedule(timesteps, train: t, steps: steps, offset: config.stepsOffset)
        numInferenceSteps = steps
    }

    /// One inversion step that moves the sample from noise level t − T/n up to level t (the
    /// reverse of formula (12) of the DDIM paper with η = 0):
    ///
    ///     x_t = √ᾱ_t · x̂₀ + √(1 − ᾱ_t) · ε̂,   x̂₀ = (x_{t−Δ} − √(1 − ᾱ_{t−Δ}) · ε̂) / √ᾱ_{t−Δ},
    ///
    /// where ᾱ_{t−Δ} is initial_alpha_cumprod when t − Δ < 0. As in diffusers, the "current"
    /// timestep is min(t − T//n, T − 1). Returns (prev_sample, pred_original_sample) named as
    /// diffusers names them (prev_sample is the noisier latent).
    public func step(modelOutput: Tensor, timestep t: Int, sample: Tensor) throws -> (prevSample: Tensor, predOriginalSample: Tensor) {
        guard let steps = numInferenceSteps else {
            throw ToolError("DDIMInverseScheduler.step called before setTimesteps")
        }
        guard modelOutput.shape == sample.shape else {
            throw ToolError("DDIM inverse step: model output \(modelOutput.shape) and sample \(sample.shape) differ in shape")
        }
        guard t >= 0, t < numTrainTimesteps else {
            throw ToolError("DDIM inverse step: timestep \(t) is outside 0..<\(numTrainTimesteps)")
        }
        let target = t
        let current = min(t - numTrainTimesteps / steps, numTrainTimesteps - 1)
        let alphaT = current >= 0 ? alphasCumprod[current] : initialAlphaCumprod
        let alphaTarget = alphasCumprod[target]
        let betaT = 1 - alphaT
        var (x0, eps) = predictOriginalAndEpsilon(predictionType, modelOutput: modelOutput, sample: sample,
                                                  alphaProd: alphaT, betaProd: betaT)
        if config.clipSample {
            let r = config.clipSampleRange
            x0 = Elementwise.map1(x0) { min(max($0, -r), r) }
        }
        let dirScale = (1 - alphaTarget).squareRoot()
        let sat = alphaTarget.squareRoot()
        let next = Elementwise.map2(x0, eps) { x0, e in sat * x0 + dirScale * e }
        return (next, x0)
    }
}
