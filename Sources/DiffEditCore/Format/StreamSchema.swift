/// The names of the records the tools pass between them, in one place (man 5 diffedit-tensor
/// lists them): a writer and its readers cannot drift apart.
public enum RecordName {
    /// tokenize: CLIP token ids [N, 77] i32.
    public static let ids = "ids"
    /// encode-text: text embeddings [N, 77, D].
    public static let embeddings = "embeddings"
    /// vae-encode: the posterior's mean and standard deviation, × scaling_factor.
    public static let posteriorMean = "posterior.mean"
    public static let posteriorStd = "posterior.std"
    /// vae-encode --sample, denoise: latents [N, 4, h, w].
    public static let latents = "latents"
    /// noise-diff-mask: the 0/1 mask [N, 1, h, w], and the soft map before thresholding.
    public static let mask = "mask"
    public static let softMask = "mask.soft"
    /// invert: the stack [N, T, 4, h, w] noisiest first, and the latent it started from.
    public static let inverted = "inverted"
    public static let invertedClean = "inverted.clean"
    /// invert --method ledits: x_T [N, 4, h, w] and the noise maps [N, T, 4, h, w] (LEditsStack).
    public static let leditsStart = "ledits.start"
    public static let leditsNoise = "ledits.noise"
}

/// Metadata keys more than one tool writes or reads. A key one tool writes for people only
/// (clamp, fraction_ones…) stays a literal where it is written.
public enum MetadataKey {
    /// The model folder or file, and its identity (DiffEditIO.modelFingerprint): an input made
    /// with another model is refused.
    public static let model = "model"
    public static let modelFingerprint = "model.fingerprint"
    /// The picture's size in pixels, carried from vae-encode to the mask and the edit.
    public static let imageWidth = "image.width"
    public static let imageHeight = "image.height"
    public static let latentWidth = "latent.width"
    public static let latentHeight = "latent.height"
    /// The diffedit_defaults.json values a stage used (ModelSettings.record).
    public static let defaults = "defaults"
    public static let steps = "steps"
    public static let strength = "strength"
    public static let guidance = "guidance"
    public static let seed = "seed"
    /// SchedulerKind's raw value: invert records it, denoise retraces it.
    public static let scheduler = "scheduler"
    public static let schedulerFingerprint = "scheduler.fingerprint"
    /// The stack's timesteps, noisiest first, comma-separated (StackInfo).
    public static let timesteps = "timesteps"
    public static let predictionType = "prediction_type"
    /// noise-diff-mask --image-size: the mask's enlargement factor.
    public static let scale = "scale"
    /// tensor cut: the rectangle of the photo a cut mask depicts, "X,Y,W,H" in its pixels, and
    /// the photo's size "WxH"; composite checks its --region against them.
    public static let region = "region"
    public static let regionOf = "region.of"
    /// tokenize --embedding: the textual-inversion embeddings its ids were made with
    /// (TextualInversion): the first added id (the tokenizer's size), and per embedding, in the
    /// order given, its file and token (JSON arrays), vector count and file fingerprint (comma
    /// lists). encode-text refuses other embeddings than the fingerprints name.
    public static let textualInversionFirstID = "textual_inversion.first_id"
    public static let textualInversionFiles = "textual_inversion.files"
    public static let textualInversionTokens = "textual_inversion.tokens"
    public static let textualInversionVectors = "textual_inversion.vectors"
    public static let textualInversionFingerprints = "textual_inversion.fingerprints"
    /// --lora: the adapters an output was made with ("FILE:SCALE …", or "none"), and the
    /// fingerprint of their contents and scales in order (LoRASet); a tool given other adapters
    /// refuses the input.
    public static let lora = "lora"
    public static let loraFingerprint = "lora.fingerprint"
}
