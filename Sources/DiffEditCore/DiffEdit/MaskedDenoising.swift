import Foundation

/// DiffEdit step 3: DDIM decoding from the inverted latent under the target caption, keeping
/// the inverted latents outside the mask (diffusers' StableDiffusionDiffEditPipeline.__call__),
/// with the pipeline's scheduler: DDIMScheduler (η as `eta`) or DPMSolverMultistepScheduler.
public struct MaskedDenoising {
    public enum Blend: String, Sendable {
        /// diffusers: after step i, `latents·mask + inverted[:, i]·(1 − mask)`. The background
        /// is one step noisier than the foreground, and the last one is the t = first inverse
        /// timestep latent, not the clean x₀ (diffusers issue #3865).
        case diffusers
        /// The paper's: after step i, blend with the inverted latent of the level just reached
        /// (inverted[:, i+1]) and, after the last step, with the clean latent x₀.
        case paper
    }

    public struct Options {
        public var steps = 50
        public var strength = 0.8
        public var guidance: Float = 7.5
        public var blend = Blend.diffusers
        /// Cells the binarised mask is dilated by (MaskDilation; 0 = as given, diffusers).
        public var dilate = 0
        /// DDIM's η (the pipeline's eta): 0 is deterministic DDIM; η > 0 adds σₜ·z per step with z
        /// drawn from the generator given to `denoise`.
        public var eta: Float = 0
        /// DeepCache's interval (UNetFeatureCache): 1, the default, runs the whole UNet every step.
        public var deepCache = 1
        public init() {}
    }

    public struct Result {
        public var latents: Tensor
        public var timesteps: [Int]
        /// Per step: guided prediction, scheduler output, blended latents ([N, 4, h, w] each).
        public var predictions: [Tensor]
        public var stepOutputs: [Tensor]
        public var blended: [Tensor]
    }

    public let unet: UNet2DCondition
    public var scheduler: any DenoisingScheduler
    public var options: Options

    public init(unet: UNet2DCondition, scheduler: any DenoisingScheduler, options: Options = Options()) {
        self.unet = unet
        self.scheduler = scheduler
        self.options = options
    }

    /// The denoising timesteps for the options (the last ⌊steps·strength⌋, high to low).
    public static func timesteps(scheduler: any DenoisingScheduler, steps: Int, strength: Double) throws -> [Int] {
        var s = scheduler
        try s.setTimesteps(steps)
        return try s.strengthTimesteps(strength: strength)
    }

    /// Edits the inverted stack [N, T, 4, h, w] (noisiest first) with a binary mask
    /// [N or 1, 1, h, w] (binarised at 0.5 as diffusers' preprocess_mask does). `prompt` (target
    /// caption) and `negative` (source caption) are [N, L, D]. `clean` [N, 4, h, w] is x₀ for the
    /// paper blend. `generator` draws η's noise (the pipeline's generator: one randn of the latents'
    /// shape per step, in step order); it is needed only when `options.eta` > 0.
    public mutating func denoise(inverted: Tensor, mask maskIn: Tensor, prompt: Tensor, negative: Tensor,
                                 clean: Tensor? = nil, generator: TorchGenerator? = nil,
                                 progress: ProgressReporter? = nil) throws -> Result {
        let o = options
        guard inverted.rank == 5 else {
            throw ToolError("the inverted stack has shape \(inverted.shape), expected [N, T, 4, h, w] — pipe in invert's output")
        }
        let n = inverted.shape[0], tCount = inverted.shape[1]
        let c = inverted.shape[2], h = inverted.shape[3], w = inverted.shape[4]
        var guided = try GuidedUNet(unet: unet, prompt: prompt, negative: negative, scale: o.guidance, images: n)
        if o.deepCache > 1 { guided.featureCache = UNetFeatureCache(interval: o.deepCache) }
        guard c == unet.config.inChannels else {
            throw ToolError("the inverted latents have \(c) channels but this UNet takes \(unet.config.inChannels) — invert with the same --model")
        }
        // preprocess_mask: [h, w], [N, h, w] or [N, 1, h, w]; one mask broadcasts to N.
        var mask = maskIn
        if mask.rank == 2 { mask = mask.reshaped([1, 1] + mask.shape) }
        if mask.rank == 3 { mask = mask.reshaped([mask.shape[0], 1, mask.shape[1], mask.shape[2]]) }
        guard mask.rank == 4, mask.shape[1] == 1 else {
            throw ToolError("--mask has shape \(maskIn.shape), expected one channel [N, 1, h, w] — use noise-diff-mask's mask record")
        }
        guard mask.shape[2] == h, mask.shape[3] == w else {
            throw ToolError("--mask is \(mask.shape[3])x\(mask.shape[2]) but the latents are \(w)x\(h) — make the mask from the same image and model at latent size (noise-diff-mask without --image-size)")
        }
        if mask.shape[0] == 1 && n > 1 { mask = DiffEditSupport.repeatInterleave(mask, n) }
        guard mask.shape[0] == n else {
            throw ToolError("--mask holds \(mask.shape[0]) masks for \(n) images — give one mask, or one per image")
        }
        guard !mask.data.contains(where: { !($0 >= 0 && $0 <= 1) }) else {
            throw ToolError("--mask has values outside [0, 1] — give a 0/1 mask (noise-diff-mask's mask record)")
        }
        mask.data = mask.data.map { $0 < 0.5 ? 0 : 1 }
        mask = MaskDilation.dilate(mask, cells: o.dilate)

        try scheduler.setTimesteps(o.steps)
        let timesteps = try scheduler.strengthTimesteps(strength: o.strength)
        guard timesteps.count == tCount else {
            throw ToolError("the inverted stack holds \(tCount) latents but --steps \(o.steps) with --strength \(o.strength) denoises \(timesteps.count) steps — use the steps and strength given to invert (diffusers issue #5465)")
        }
        if o.blend == .paper {
            guard let clean, clean.shape == [n, c, h, w] else {
                throw ToolError("--blend paper needs the clean latent (record inverted.clean, written by invert) with shape [\(n), \(c), \(h), \(w)]")
            }
        }

        // Per pixel: the mask, broadcast over channels.
        let plane = h * w
        var m = [Float](repeating: 0, count: n * c * plane)
        for b in 0..<n { for ch in 0..<c { for p in 0..<plane { m[(b * c + ch) * plane + p] = mask.data[b * plane + p] } } }

        var latents = inverted.step(0)
        var preds: [Tensor] = [], stepOuts: [Tensor] = [], blended: [Tensor] = []
        progress?.begin("denoising step", total: tCount)
        for (i, t) in timesteps.enumerated() {
            let pred = try guided(latents, timestep: t)
            let stepped = try scheduler.prevSample(modelOutput: pred, timestep: t, sample: latents, eta: o.eta,
                                                   generator: generator)
            let background: Tensor
            switch o.blend {
            case .diffusers: background = inverted.step(i)
            case .paper: background = i + 1 < tCount ? inverted.step(i + 1) : clean!
            }
            // latents·mask + background·(1 − mask), each operation rounded as torch does
            var next = stepped
            for k in 0..<next.count {
                next.data[k] = stepped.data[k] * m[k] + background.data[k] * (1 - m[k])
            }
            latents = next
            preds.append(pred)
            stepOuts.append(stepped)
            blended.append(next)
            progress?.update(i + 1)
        }
        return Result(latents: latents, timesteps: timesteps, predictions: preds, stepOutputs: stepOuts, blended: blended)
    }
}
