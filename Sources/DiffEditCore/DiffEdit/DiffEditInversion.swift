import Foundation

/// DiffEdit step 2: the deterministic inversion of the image latent under the source caption,
/// keeping every intermediate latent (diffusers' StableDiffusionDiffEditPipeline.invert), with
/// the pipeline's inverse scheduler: DDIMInverseScheduler or DPMSolverMultistepInverseScheduler.
public struct DiffEditInversion {
    public struct Options {
        public var steps = 50
        /// inpaint_strength: the fraction of the schedule inverted (the first ⌊steps·strength⌋).
        public var strength = 0.8
        public var guidance: Float = 7.5
        public var regularizer = InversionRegularizer()
        /// DeepCache's interval (UNetFeatureCache): 1, the default, runs the whole UNet every step.
        public var deepCache = 1
        public init() {}
    }

    public struct Result {
        /// [N, T, 4, h, w], noisiest first (diffusers' `stack(reversed(list), 1)`).
        public var inverted: Tensor
        /// The inverse timesteps, ascending (the stack holds them in reverse).
        public var timesteps: [Int]
        /// Per step: the guided prediction before / after regularisation, [N, 4, h, w] each.
        public var predictions: [Tensor]
        public var regularizedPredictions: [Tensor]
    }

    public let unet: UNet2DCondition
    public var scheduler: any InversionScheduler
    public var options: Options

    public init(unet: UNet2DCondition, scheduler: any InversionScheduler, options: Options = Options()) {
        self.unet = unet
        self.scheduler = scheduler
        self.options = options
    }

    /// Inverts latents [N, 4, h, w] (the posterior sample × scaling_factor). `prompt` and
    /// `negative` are [N, L, D]. The generator is used only by the regulariser's rolls (the
    /// posterior sample is drawn by the caller, before).
    public mutating func invert(latents start: Tensor, prompt: Tensor, negative: Tensor, generator: TorchGenerator,
                                progress: ProgressReporter? = nil) throws -> Result {
        let o = options
        let n = start.shape[0]
        var guided = try GuidedUNet(unet: unet, prompt: prompt, negative: negative, scale: o.guidance, images: n)
        if o.deepCache > 1 { guided.featureCache = UNetFeatureCache(interval: o.deepCache) }
        try scheduler.setTimesteps(o.steps)
        let timesteps = try scheduler.strengthTimesteps(strength: o.strength)
        guard !timesteps.isEmpty else {
            throw ToolError("--strength \(o.strength) with \(o.steps) steps inverts no step — raise it so that steps × strength ≥ 1")
        }
        var latents = start
        var outputs: [Tensor] = [], preds: [Tensor] = [], regPreds: [Tensor] = []
        progress?.begin("inversion step", total: timesteps.count)
        for (i, t) in timesteps.enumerated() {
            let input = guided.modelInput(latents)
            var pred = try guided.predict(modelInput: input, timestep: t)
            preds.append(pred)
            if o.regularizer.steps > 0 {
                let parts = o.regularizer.steps
                pred = o.regularizer.apply(pred, sample: input, predictionType: scheduler.predictionType,
                                           alphaProd: scheduler.alphasCumprod[t], generator: generator,
                                           progress: { progress?.update(i, part: $0, of: parts, "regularisation") })
            }
            regPreds.append(pred)
            latents = try scheduler.prevSample(modelOutput: pred, timestep: t, sample: latents)
            outputs.append(latents)
            progress?.update(i + 1)
        }
        // stack(reversed(outputs), dim 1): [N, T, C, h, w]
        let tCount = outputs.count
        let inner = start.count / n
        var data = [Float](repeating: 0, count: n * tCount * inner)
        for (k, x) in outputs.reversed().enumerated() {
            for b in 0..<n {
                for i in 0..<inner { data[(b * tCount + k) * inner + i] = x.data[b * inner + i] }
            }
        }
        var shape = start.shape
        shape.insert(tCount, at: 1)
        return Result(inverted: Tensor(shape: shape, data: data), timesteps: timesteps,
                      predictions: preds, regularizedPredictions: regPreds)
    }
}
