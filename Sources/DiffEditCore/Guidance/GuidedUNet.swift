/// ε̂(xₜ, t): the UNet under classifier-free guidance, the one place a sampler or an inversion
/// calls the UNet per step (as stable-diffusion.cpp's `denoise_cb_t` is for its samplers).
/// DDIM, DPM-Solver++ and their inversions step through it; a second editing method adds its
/// guidance terms here rather than in each stage.
///
/// With a scale above 1 one UNet batch [negative; prompt] is run on [xₜ; xₜ] and guided
/// (`Guidance.classifierFree`); at a scale ≤ 1 diffusers' pipelines skip guidance
/// (`do_classifier_free_guidance = guidance_scale > 1`) and so does this: one branch, the
/// prompt's, half the UNet work.
public struct GuidedUNet {
    public let unet: UNet2DCondition
    public let scale: Float
    /// [negative; prompt] when guided, else the prompt: [N or 2N, L, D].
    let embeddings: Tensor
    /// DeepCache for the loop this prediction serves (nil: every step runs the whole UNet).
    public var featureCache: UNetFeatureCache?

    /// `prompt` and `negative` are [N, L, D], one row per image (checked against the UNet and
    /// `images`; `--prompt` and `--negative` name them in messages).
    public init(unet: UNet2DCondition, prompt: Tensor, negative: Tensor, scale: Float, images n: Int) throws {
        try DiffEditSupport.checkEmbeddings(prompt, unet: unet, option: "--prompt", images: n)
        try DiffEditSupport.checkEmbeddings(negative, unet: unet, option: "--negative", images: n)
        self.unet = unet
        self.scale = scale
        embeddings = scale > 1 ? Tensor.concat(batch: [negative, prompt]) : prompt
    }

    public var isGuided: Bool { scale > 1 }

    /// What the UNet is given for `latents` (diffusers' `latent_model_input`): [xₜ; xₜ] when
    /// guided. The inversion's regulariser reads it, as diffusers' does.
    public func modelInput(_ latents: Tensor) -> Tensor {
        isGuided ? Tensor.concat(batch: [latents, latents]) : latents
    }

    /// The guided prediction for latents [N, C, h, w] at timestep `t`.
    public func callAsFunction(_ latents: Tensor, timestep t: Int) throws -> Tensor {
        try predict(modelInput: modelInput(latents), timestep: t)
    }

    /// The guided prediction from an input already made by `modelInput`.
    public func predict(modelInput input: Tensor, timestep t: Int) throws -> Tensor {
        let out = try unet.forward(sample: input, timesteps: [Float(t)], encoderHiddenStates: embeddings, cache: featureCache)
        return isGuided ? Guidance.classifierFree(batched: out, scale: scale) : out
    }
}
