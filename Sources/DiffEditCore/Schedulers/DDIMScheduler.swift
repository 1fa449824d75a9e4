import Foundation

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
    public let config: DDIMConfig
    /// ᾱ used for the step past the last timestep: 1 with set_alpha_to_one, else ᾱ₀.
    public let finalAlphaCumprod: Float
    public private(set) var numInferenceSteps: Int?
    /// Inference timesteps, high to low, after `setTimesteps`.
    public private(set) var timesteps: [Int] = []

    public var schedule: NoiseSchedule { config.schedule }
    public var predictionType: PredictionType { config.predictionType }
    public var alphasCumprod: [Float] { schedule.alphasCumprod }
    public var numTrainTimesteps: Int { schedule.numTrainTimesteps }

    public init(config json: JSONConfig) throws {
        config = try DDIMConfig(json)
        if try json.bool("thresholding", default: false) {
            throw ToolError("\(json.label): thresholding = true (dynamic thresholding) is not supported — set it to false")
        }
        finalAlphaCumprod = config.setAlphaToOne ? 1 : config.schedule.alphasCumprod[0]
    }

    /// The scheduler of a model (ModelFolder.schedulerConfig).
    public init(folder: ModelFolder) throws {
        try self.init(config: folder.schedulerConfig())
    }

    /// diffusers' set_timesteps.
    public mutating func setTimesteps(_ steps: Int) throws {
        let t = numTrainTimesteps
        try TimestepSchedule.requireSteps(steps, train: t)
        numInferenceSteps = steps
        switch config.timestepSpacing {
        case .linspace:
            // np.linspace(0, T − 1, n).round()[::-1]
            timesteps = TimestepSchedule.linspace(to: t - 1, count: steps).reversed()
        case .leading:
            // (arange(n) · (T // n)).round()[::-1] + steps_offset
            let ratio = t / steps
            timesteps = (0..<steps).reversed().map { $0 * ratio + config.stepsOffset }
        case .trailing:
            // round(arange(T, 0, −T/n)) − 1
            timesteps = TimestepSchedule.trailing(train: t, count: steps).map { $0 - 1 }
        }
        try TimestepSchedule.requireWithinSchedule(timesteps, train: t, steps: steps, offset: config.stepsOffset)
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
        if config.clipSample {
            let r = config.clipSampleRange
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

    /// The edit-friendly DDPM inversion's noise map (Huberman-Spiegelglas et al. 2023), as the
    /// LEDITS++ pipeline's `compute_noise_ddim` solves for it: the DDIM mean of the step from
    /// `sample` (xₜ) at timestep t,
    ///
    ///     μₜ = √ᾱₜ₋₁ · x̂₀ + √(1 − ᾱₜ₋₁ − σₜ²) · ε̂,   x̂₀ = (xₜ − √(1 − ᾱₜ) · ε̂) / √ᾱₜ,
    ///
    /// and the z that carries it to `previous` (xₜ₋₁): z = (xₜ₋₁ − μₜ) / (√variance · η), with the
    /// latent the step then reaches, μₜ + (η · √variance) · z (it replaces xₜ₋₁, "to avoid error
    /// accumulation"). As in diffusers, `noisePrediction` is taken for ε̂ whatever the model's
    /// prediction type (the pipeline's own formula, v-prediction models included), and x̂₀ is
    /// clipped only with clip_sample (the pipeline sets it false). A zero variance gives z = 0.
    public func computeNoise(previous: Tensor, sample: Tensor, timestep t: Int, noisePrediction eps: Tensor,
                             eta: Float) throws -> (noise: Tensor, corrected: Tensor) {
        guard let steps = numInferenceSteps else {
            throw ToolError("DDIM compute_noise called before setTimesteps")
        }
        guard eps.shape == sample.shape, previous.shape == sample.shape else {
            throw ToolError("DDIM compute_noise: latents \(previous.shape), \(sample.shape) and prediction \(eps.shape) differ in shape")
        }
        guard t >= 0, t < numTrainTimesteps else {
            throw ToolError("DDIM compute_noise: timestep \(t) is outside 0..<\(numTrainTimesteps)")
        }
        let prev = t - numTrainTimesteps / steps
        let alphaT = alphasCumprod[t], alphaPrev = alphaProd(prev)
        let betaT = 1 - alphaT
        let sb = betaT.squareRoot(), sa = alphaT.squareRoot()
        let clip = config.clipSample, r = config.clipSampleRange
        let variance = variance(timestep: t, previous: prev)
        let stdDev = eta * variance.squareRoot()
        let dirScale = (1 - alphaPrev - stdDev * stdDev).squareRoot()
        let sap = alphaPrev.squareRoot()
        let divisor = variance.squareRoot() * eta   // (variance ** 0.5 * eta)
        let scale = eta * variance.squareRoot()     // (eta * variance ** 0.5)
        var noise = [Float](repeating: 0, count: sample.count)
        var corrected = [Float](repeating: 0, count: sample.count)
        sample.data.withUnsafeBufferPointer { x in
            eps.data.withUnsafeBufferPointer { e in
                previous.data.withUnsafeBufferPointer { p in
                    noise.withUnsafeMutableBufferPointer { z in
                        corrected.withUnsafeMutableBufferPointer { c in
                            for k in 0..<x.count {
                                var x0 = (x[k] - sb * e[k]) / sa
                                if clip { x0 = min(max(x0, -r), r) }
                                let mu = sap * x0 + dirScale * e[k]
                                // diffusers: noise = tensor([0.0]) when the variance is 0, broadcast
                                let zk: Float = variance > 0 ? (p[k] - mu) / divisor : 0
                                z[k] = zk
                                c[k] = mu + scale * zk
                            }
                        }
                    }
                }
            }
        }
        return (Tensor(shape: sample.shape, data: noise), Tensor(shape: sample.shape, data: corrected))
    }

    /// diffusers' add_noise: √ᾱₜ·x₀ + √(1 − ᾱₜ)·ε, one timestep per batch element (or one for all).
    public func addNoise(original: Tensor, noise: Tensor, timesteps: [Int]) throws -> Tensor {
        try TimestepSchedule.addNoise(alphasCumprod: alphasCumprod, original: original, noise: noise, timesteps: timesteps)
    }
}
