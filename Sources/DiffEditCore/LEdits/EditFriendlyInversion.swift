import Foundation

/// LEDITS++ step 1 (Brack et al. 2024, arXiv 2311.16711): the edit-friendly DDPM inversion of
/// Huberman-Spiegelglas et al. 2023 (arXiv 2304.06140) as diffusers' LEditsPPPipelineStableDiffusion
/// `invert` runs it. Each xₜ is drawn independently from q(xₜ | x₀) — not by stepping — and then
/// the noise zₜ that makes the sampler's stochastic step land exactly on xₜ₋₁ is solved for,
/// noisiest step first; the edit retraces those steps with those noises (LEditsDenoising). With
/// no edit the image comes back as it was (up to the VAE).
///
/// - timesteps: set_timesteps(int(N·(1 + skip))) with "leading" spacing, the last N kept
///   (LEditsScheduler.schedule); skip leaves the noisiest part of the schedule out.
/// - x₀: the posterior's MEAN × scaling_factor (latent_dist.mode()), never a sample.
/// - xₜ: for t from the lowest up, z ~ randn(x₀'s shape) from the generator, xₜ = add_noise(x₀, z, t).
/// - zₜ: for t from the highest down, ε̂ = UNet(xₜ, t, uncond); with a source caption
///   ε̂ = e_s + g·(e_u − e_s), e_s = UNet(xₜ, t, source), e_u = UNet(xₜ, t, uncond), two separate
///   passes — guidance away from the caption, as diffusers 0.42.1 computes it: its `invert`
///   unpacks encode_prompt's (edit, uncond) as (uncond, text) — then compute_noise(xₜ₋₁, xₜ, t, ε̂)
///   gives zₜ and the latent the step reaches, which replaces xₜ₋₁ (so the next, lower step
///   starts from where this one lands).
public struct EditFriendlyInversion {
    public struct Options {
        /// num_inversion_steps: the steps inverted and later edited.
        public var steps = 30
        /// skip: the fraction of int(N·(1 + skip)) scheduler steps left out at the noisy end.
        public var skip = 0.15
        /// source_guidance_scale: used only with a source caption.
        public var guidance: Float = 3.5
        public init() {}
    }

    public struct Result {
        /// x_T, the noisiest latent [N, 4, h, w]: the edit starts from it.
        public var start: Tensor
        /// The noise maps [N, T, 4, h, w], the first (noisiest) denoising step's first.
        public var noise: Tensor
        /// The T timesteps, high to low (denoising order).
        public var timesteps: [Int]
        /// int(T·(1 + skip)): the steps the scheduler's schedule is set to.
        public var totalSteps: Int
    }

    public let unet: UNet2DCondition
    public var scheduler: LEditsScheduler
    public var options: Options

    public init(unet: UNet2DCondition, scheduler: LEditsScheduler, options: Options = Options()) {
        self.unet = unet
        self.scheduler = scheduler
        self.options = options
    }

    /// Inverts x₀ [N, 4, h, w] (the posterior mean × scaling_factor). `negative` is the
    /// unconditional embedding [N, L, D]; `source` the source caption's (nil: source_prompt "",
    /// no guidance). The generator draws the N noised latents, lowest timestep first.
    public mutating func invert(x0: Tensor, source: Tensor?, negative: Tensor, generator: TorchGenerator,
                                progress: ProgressReporter? = nil) throws -> Result {
        let o = options
        guard x0.rank == 4, x0.shape[1] == unet.config.inChannels else {
            throw ToolError("the image latent has shape \(x0.shape), expected [N, \(unet.config.inChannels), h, w] — pipe in vae-encode's posterior")
        }
        let n = x0.shape[0]
        try DiffEditSupport.checkEmbeddings(negative, unet: unet, option: "--negative", images: n)
        if let source { try DiffEditSupport.checkEmbeddings(source, unet: unet, option: "--prompt", images: n) }
        let (total, timesteps) = try scheduler.schedule(steps: o.steps, skip: o.skip)
        let tCount = timesteps.count

        // xts[k]: x₀ for k = 0, then the latent at the k-th lowest timestep.
        var xts = [x0]
        xts.reserveCapacity(tCount + 1)
        for t in timesteps.reversed() {
            let z = generator.randn(shape: x0.shape)
            xts.append(try scheduler.addNoise(original: x0, noise: z, timestep: t))
        }
        try scheduler.setTimesteps(total)  // diffusers sets it again: DPM-Solver's state starts afresh

        // zs in inversion order: zs[k] carries xts[k + 1] to xts[k].
        var zs = [Tensor](repeating: Tensor(zeros: [0]), count: tCount)
        progress?.begin("inversion step", total: tCount)
        for (i, t) in timesteps.enumerated() {
            let k = tCount - i - 1
            let xt = xts[k + 1]
            // diffusers unpacks encode_prompt's (edit, uncond) as (uncond, text): the first pass
            // runs under the source caption, the second under the unconditional embedding.
            var eps = try unet(sample: xt, timestep: Float(t), encoderHiddenStates: source ?? negative)
            if source != nil {
                let second = try unet(sample: xt, timestep: Float(t), encoderHiddenStates: negative)
                eps = Guidance.classifierFree(uncond: eps, cond: second, scale: o.guidance)
            }
            let (z, corrected) = try scheduler.computeNoise(previous: xts[k], sample: xt, timestep: t, noisePrediction: eps)
            zs[k] = z
            xts[k] = corrected
            progress?.update(i + 1)
        }

        // [T, N, …] flipped to denoising order and laid out [N, T, …].
        let inner = x0.count / n
        var noise = [Float](repeating: 0, count: n * tCount * inner)
        noise.withUnsafeMutableBufferPointer { out in
            for step in 0..<tCount {
                let z = zs[tCount - 1 - step]
                z.data.withUnsafeBufferPointer { zp in
                    for b in 0..<n {
                        let dst = (b * tCount + step) * inner
                        for e in 0..<inner { out[dst + e] = zp[b * inner + e] }
                    }
                }
            }
        }
        return Result(start: xts[tCount], noise: Tensor(shape: [n, tCount] + Array(x0.shape.dropFirst()), data: noise),
                      timesteps: timesteps, totalSteps: total)
    }
}
