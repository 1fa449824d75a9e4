import Foundation

/// DiffEdit step 1 (Couairon et al. 2022, §3.2): where does the model's noise estimate change
/// when the caption changes? As diffusers' StableDiffusionDiffEditPipeline.generate_mask.
public struct NoiseDiffMask {
    public struct Options {
        /// num_maps_per_mask: noise draws averaged per image.
        public var maps = 10
        /// mask_encode_strength: how far into the schedule the image is noised.
        public var encodeStrength = 0.5
        /// mask_thresholding_ratio: the map is clamped at ratio × its mean, then halved.
        public var thresholdRatio: Float = 3.0
        public var steps = 50
        public var guidance: Float = 7.5
        /// Most latents per UNet call: 10 keeps a 512² image's mask stage near the memory of
        /// invert (the activations of 10 latents, not 30) at no cost in time (measured: batch 10
        /// as fast as 30 at 256², the products being large enough either way).
        public var maxBatch = 10
        /// Compute diffusers' guided predictions (`Result.epsSource`, `.epsTarget`) even when the
        /// map does not need them. With one negative prompt for both captions the map is
        /// |1 − g|·|ε(target) − ε(source)| whatever that prompt's prediction is (see `generate`), so
        /// by default its UNet branch is not run: 2 UNet latents per map instead of 3, the same
        /// map up to float rounding. Tests that compare the guided predictions set this.
        public var guidedPredictions = false
        public init() {}
    }

    public struct Result {
        /// The encode timestep (scheduler.timesteps[t_start]).
        public var timestep: Int
        /// Sampled image latents [N·maps, 4, h, w] (posterior sample × scaling_factor).
        public var imageLatents: Tensor
        public var noise: Tensor
        public var noisedLatents: Tensor
        /// Guided predictions named as diffusers names them (see `generate`); nil when the map
        /// was made without them (`Options.guidedPredictions`).
        public var epsSource: Tensor?
        public var epsTarget: Tensor?
        /// |ε_target − ε_source| averaged over maps and channels, [N, h, w].
        public var map: Tensor
        /// mean(map) × ratio over the whole batch.
        public var clamp: Float
        /// clamp(map, 0, c)/c, [N, 1, h, w].
        public var soft: Tensor
        /// soft > 0.5, as 0/1 floats, [N, 1, h, w].
        public var mask: Tensor
    }

    public let unet: UNet2DCondition
    /// The pipeline's `scheduler` (DDIM, or DPM-Solver++): its timesteps and add_noise.
    public var scheduler: any DenoisingScheduler
    public var options: Options

    public init(unet: UNet2DCondition, scheduler: any DenoisingScheduler, options: Options = Options()) {
        self.unet = unet
        self.scheduler = scheduler
        self.options = options
    }

    /// The mask for N images. `mean`/`std` are the scaled posterior [N, 4, h, w] (vae-encode's
    /// records); embeddings are [N, L, D] (already broadcast to the images). The generator draws
    /// the posterior sample randn([N·maps, 4, h, w]) first and then the noise of the same shape,
    /// as diffusers does.
    ///
    /// diffusers' generate_mask unpacks encode_prompt's (prompt, negative) pair into variables
    /// named (negative, prompt), so its UNet batch is [source, sourceNegative, target,
    /// targetNegative] and its "guided" predictions are c0 + g·(c1 − c0), c2 + g·(c3 − c2). That
    /// is reproduced exactly: the difference is −(g−1)/g times the intended one, and the mask is
    /// invariant to that scale, but the intermediate values follow the reference.
    public mutating func generate(mean: Tensor, std: Tensor, source: Tensor, sourceNegative: Tensor,
                                  target: Tensor, targetNegative: Tensor, generator: TorchGenerator,
                                  progress: ProgressReporter? = nil) throws -> Result {
        let o = options
        guard mean.rank == 4, mean.shape == std.shape else {
            throw ToolError("posterior mean \(mean.shape) and std \(std.shape) must both be [N, 4, h, w] — pipe in vae-encode's output")
        }
        guard o.maps >= 1 else { throw ToolError("--maps must be at least 1") }
        guard o.thresholdRatio > 0 else { throw ToolError("--threshold-ratio must be positive") }
        let n = mean.shape[0], c = mean.shape[1], h = mean.shape[2], w = mean.shape[3]
        for (e, name) in [(source, "--source"), (sourceNegative, "--source-negative"),
                          (target, "--target"), (targetNegative, "--target-negative")] {
            try DiffEditSupport.checkEmbeddings(e, unet: unet, option: name, images: n)
        }
        guard c == unet.config.inChannels else {
            throw ToolError("the posterior has \(c) channels but the UNet takes \(unet.config.inChannels) — encode the image with the same model")
        }

        // 5. timesteps; the encode timestep is the first of the last ⌊steps·strength⌋.
        try scheduler.setTimesteps(o.steps)
        let ts = try scheduler.strengthTimesteps(strength: o.encodeStrength)
        guard let t = ts.first else {
            throw ToolError("--encode-strength \(o.encodeStrength) with \(o.steps) steps leaves no timestep — raise it so that steps × strength ≥ 1")
        }

        // 6. image.repeat_interleave(maps) → latent_dist.sample(generator) × sf, then noise.
        let m = n * o.maps
        let meanR = DiffEditSupport.repeatInterleave(mean, o.maps)
        let stdR = DiffEditSupport.repeatInterleave(std, o.maps)
        let posteriorNoise = generator.randn(count: meanR.count)
        let imageLatents = DiagonalGaussian(mean: meanR, std: stdR).sample(noise: posteriorNoise)
        let noise = generator.randn(shape: imageLatents.shape)
        let noised = try scheduler.addNoise(original: imageLatents, noise: noise, timesteps: [t])

        // 7. one UNet batch [source, sourceNeg, target, targetNeg] (each ×maps), micro-batched.
        // diffusers' guided predictions are εS = c0 + g·(c1 − c0) and εT = c2 + g·(c3 − c2). With
        // the default negatives (both the empty prompt) c1 = c3, so εT − εS = (1 − g)·(c2 − c0):
        // the map is |1 − g| times that of the conditional predictions and the negative's branch
        // cancels — it is not run (2/3 of the UNet work for the same numbers up to rounding). At
        // g ≤ 1 diffusers runs no negative branch either: the map is |c2 − c0|.
        let g = o.guidance
        let sharedNegative = sourceNegative.shape == targetNegative.shape && sourceNegative.data == targetNegative.data
        let negatives = g > 1 && (o.guidedPredictions || !sharedNegative)
        // Identical captions (and negatives): the target half is the source half, so it is not
        // computed again. In diffusers the identical rows give identical noise; here they would
        // differ by the rounding of their batch position, turning a zero map into a random mask.
        let sameCaptions = sharedNegative && source.shape == target.shape && source.data == target.data
        var parts = [source]
        if negatives { parts.append(sourceNegative) }
        if !sameCaptions { parts.append(target) }
        if negatives && !sharedNegative { parts.append(targetNegative) }
        let embeds = Tensor.concat(batch: parts.map { DiffEditSupport.repeatInterleave($0, o.maps) })
        let input = Tensor.concat(batch: [Tensor](repeating: noised, count: parts.count))
        progress?.begin("noise maps (UNet latents)", total: parts.count * m)
        let out = try DiffEditSupport.predict(unet, latents: input, timestep: t, embeddings: embeds,
                                              maxBatch: o.maxBatch, progress: { progress?.update($0) })
        let part = { (i: Int) in out.slice(batch: i * m, count: m) }
        let c0 = part(0)
        let c1: Tensor? = negatives ? part(1) : nil
        let c2 = sameCaptions ? c0 : part(negatives ? 2 : 1)
        let c3: Tensor? = negatives ? (sharedNegative ? c1 : part(3)) : nil
        var epsSource: Tensor? = nil, epsTarget: Tensor? = nil
        // The map's two terms and its factor: the guided predictions, or the conditional ones
        // scaled by |1 − g| (g > 1, one negative), or the conditional ones (g ≤ 1).
        let a: Tensor, b: Tensor
        var factor: Float = 1
        if let c1, let c3 {
            let s = Guidance.classifierFree(uncond: c0, cond: c1, scale: g)
            let tg = Guidance.classifierFree(uncond: c2, cond: c3, scale: g)
            (epsSource, epsTarget, a, b) = (s, tg, s, tg)
        } else {
            (a, b) = (c0, c2)
            if g > 1 { factor = g - 1 }
        }

        // 8. map = |target − source| averaged over maps and channels; clamp at mean × ratio.
        let plane = h * w
        var map = [Float](repeating: 0, count: n * plane)
        a.data.withUnsafeBufferPointer { s in
            b.data.withUnsafeBufferPointer { tg in
                for i in 0..<n {
                    for p in 0..<plane {
                        var acc: Double = 0
                        for k in 0..<o.maps {
                            for ch in 0..<c {
                                let idx = ((i * o.maps + k) * c + ch) * plane + p
                                acc += Double(abs(factor * (tg[idx] - s[idx])))
                            }
                        }
                        map[i * plane + p] = Float(acc / Double(o.maps * c))
                    }
                }
            }
        }
        try NonfiniteOutput.check(map, what: "the noise-difference map")
        let (clamp, soft, mask) = NoiseDiffMask.threshold(map, ratio: o.thresholdRatio)
        return Result(timestep: t, imageLatents: imageLatents, noise: noise, noisedLatents: noised,
                      epsSource: epsSource, epsTarget: epsTarget,
                      map: Tensor(shape: [n, h, w], data: map), clamp: clamp,
                      soft: Tensor(shape: [n, 1, h, w], data: soft), mask: Tensor(shape: [n, 1, h, w], data: mask))
    }

    /// The binary mask for another thresholding ratio of the same map (no UNet work).
    public static func threshold(map: Tensor, ratio: Float) -> (clamp: Float, soft: [Float], mask: [Float]) {
        threshold(map.data, ratio: ratio)
    }

    /// clamp(map, 0, c)/c with c = mean(map)·ratio, and the mask where that exceeds 0.5. A map
    /// that is zero everywhere (identical captions) makes that 0/0: diffusers gets NaN there and a
    /// mask of ones (NaN fails its `<= 0.5` test); here the soft map is 1, the same mask, no NaN.
    static func threshold(_ map: [Float], ratio: Float) -> (clamp: Float, soft: [Float], mask: [Float]) {
        let mean = Float(map.reduce(0.0) { $0 + Double($1) } / Double(map.count))
        let c = mean * ratio
        let soft = c > 0 ? map.map { min(max($0, 0), c) / c } : [Float](repeating: 1, count: map.count)
        return (c, soft, soft.map { $0 <= 0.5 ? 0 : 1 })
    }

    /// A latent-resolution mask [N, 1, h, w] enlarged `factor` times by nearest neighbour (for
    /// inpainting tools that take an image-size mask).
    public static func upscaleNearest(_ mask: Tensor, factor: Int) -> Tensor {
        let n = mask.shape[0], c = mask.shape[1], h = mask.shape[2], w = mask.shape[3]
        let H = h * factor, W = w * factor
        var out = [Float](repeating: 0, count: n * c * H * W)
        for b in 0..<(n * c) {
            for y in 0..<H {
                for x in 0..<W { out[(b * H + y) * W + x] = mask.data[(b * h + y / factor) * w + x / factor] }
            }
        }
        return Tensor(shape: [n, c, H, W], data: out)
    }
}
