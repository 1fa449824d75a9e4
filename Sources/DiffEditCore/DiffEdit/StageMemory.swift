/// What the three DiffEdit stages need in memory, estimated before the first UNet step so that an
/// input too large for the machine (or for $DIFFEDIT_MEMORY_LIMIT) is refused in one line instead
/// of ending in the OOM killer. Coarse and on the high side; in bytes:
///
///   the UNet's weight file (mapped, resident while it runs; MemoryBudget.weightFileBytes)
/// + one UNet forward pass of the batch the stage runs (MemoryBudget.unetBytes)
/// + the tensors the stage holds (counted below in floats, per latent of 4 × h × w and per
///   prompt embedding of L × D, each with the copies the code makes)
/// + 64 MiB for the process itself (Swift runtime, OpenBLAS's buffers, the model's f32 norms and
///   biases).
///
/// Checked against peak RSS (`/usr/bin/time`, debug build, 2 threads; GB = 2^30 bytes), the
/// estimate above it everywhere, by 10 % (SD 1.5's weights dominate) to 3× (tiny models, where
/// the kernels' scratch and the process allowance dominate):
///
///   model, latents              run                                     estimate   peak RSS
///   fixture sd1, 8²             invert --steps 4                         108 MB      34 MB
///                               noise-diff-mask --maps 10                116 MB      37 MB
///   demo, 64² (256² image)      invert --steps 10                        421 MB     216 MB
///                               noise-diff-mask --maps 10 (batch 10)     1.3 GB     776 MB
///                               denoise (8 latents)                      420 MB     216 MB
///   SD 1.5 shapes, f16 weights  invert --steps 2 --strength 1            2.4 GB     2.08 GB
///   (random), 32² (256² image)  noise-diff-mask --maps 4 (batch 10)      3.5 GB     3.17 GB
public enum StageMemory {
    /// The latent grid and the text embeddings a stage runs on.
    public struct Shape {
        public var images: Int
        public var latentHeight: Int
        public var latentWidth: Int
        /// Tokens and width of one prompt's embedding (77 × 768 for SD 1.x).
        public var tokens: Int
        public var embeddingWidth: Int

        public init(images: Int, latentHeight: Int, latentWidth: Int, tokens: Int, embeddingWidth: Int) {
            (self.images, self.latentHeight, self.latentWidth) = (images, latentHeight, latentWidth)
            (self.tokens, self.embeddingWidth) = (tokens, embeddingWidth)
        }

        var latent: Double { 4 * Double(latentHeight) * Double(latentWidth) }
        var embedding: Double { Double(tokens) * Double(embeddingWidth) }
        var n: Double { Double(images) }
    }

    static let processBytes = 64.0 * 1024 * 1024

    /// invert: the UNet on all N latents at once (2N with guidance); kept per step: the latent
    /// reached, the guided and the regularised predictions (3 per step), then the stack assembled,
    /// wrapped as a record and encoded (3 per step); the posterior, its sample, the UNet's input
    /// and output (12 latents per image); the prompt, negative and their concatenation with the
    /// broadcast copies (5 embeddings per image).
    public static func invert(folder: ModelFolder, shape s: Shape, steps: Int, guidance: Float) throws -> Double {
        let unet = try UNetConfig(folder.config("unet"))
        let batch = guidance > 1 ? 2 * s.images : s.images
        let floats = 6 * Double(steps) * s.n * s.latent + 12 * s.n * s.latent + 5 * s.n * s.embedding
        return total(folder, unet, batch: batch, shape: s, floats: floats)
    }

    /// denoise: the UNet on 2N latents (N without guidance); the stack as read and as a tensor
    /// (2 per step), kept per step: guided prediction, scheduler output, blended latents (3 per
    /// step); mask, clean latent, the UNet's input and output (12 latents per image); 5 embeddings
    /// per image.
    public static func denoise(folder: ModelFolder, shape s: Shape, stackLatents steps: Int, guidance: Float) throws -> Double {
        let unet = try UNetConfig(folder.config("unet"))
        let batch = guidance > 1 ? 2 * s.images : s.images
        let floats = 5 * Double(steps) * s.n * s.latent + 12 * s.n * s.latent + 5 * s.n * s.embedding
        return total(folder, unet, batch: batch, shape: s, floats: floats)
    }

    /// noise-diff-mask: N·maps noised latents under up to 4 embeddings (source, its negative,
    /// target, its negative: a batch of 4·N·maps, 3 when the negatives are the same) run in UNet
    /// passes of at most `maxBatch`; held: the repeated posterior, its sample, the noise and the
    /// noised latents (6 per map), the UNet's whole input and output and their parts (3 × 4 per
    /// map), the four predictions and the two guided ones (6 per map); the repeated embeddings
    /// and their copies while concatenated (2 × 4 per map), one pass's slice of them; the
    /// posterior as read (4 latents per image).
    public static func noiseDiffMask(folder: ModelFolder, shape s: Shape, maps: Int, maxBatch: Int) throws -> Double {
        let unet = try UNetConfig(folder.config("unet"))
        let m = s.n * Double(maps), parts = 4.0
        let batch = Int(min(Double(maxBatch), parts * m))
        let floats = (12 + 3 * parts) * m * s.latent + 4 * s.n * s.latent
            + (2 * parts * m + Double(batch)) * s.embedding
        return total(folder, unet, batch: batch, shape: s, floats: floats)
    }

    static func total(_ folder: ModelFolder, _ unet: UNetConfig, batch: Int, shape s: Shape, floats: Double) -> Double {
        MemoryBudget.weightFileBytes(folder, "unet")
            + MemoryBudget.unetBytes(config: unet, batch: batch, latentHeight: s.latentHeight, latentWidth: s.latentWidth,
                                     threads: ComputeContext.defaultThreads)
            + 4 * floats + processBytes
    }

    /// `latents` [N, 4, h, w] (or the stack [N, T, 4, h, w]) and `embeddings` [N, L, D].
    static func shape(latents: [Int], embeddings: [Int]) -> Shape {
        Shape(images: latents.first ?? 1, latentHeight: latents.count >= 2 ? latents[latents.count - 2] : 1,
              latentWidth: latents.last ?? 1, tokens: embeddings.count == 3 ? embeddings[1] : 77,
              embeddingWidth: embeddings.count == 3 ? embeddings[2] : 768)
    }

    static let override = "or set $DIFFEDIT_MEMORY_LIMIT (bytes) higher if this machine has the room"

    /// Refuses (one line) an inversion whose estimate is more than the memory limit.
    public static func requireInvert(folder: ModelFolder, latents: [Int], embeddings: [Int], steps: Int, guidance: Float) throws {
        let s = shape(latents: latents, embeddings: embeddings)
        try require(invert(folder: folder, shape: s, steps: steps, guidance: guidance), "", s,
                    remedy: "invert fewer images per run, fewer --steps or a smaller image, \(override)")
    }

    /// Refuses (one line) a denoising whose estimate is more than the memory limit; `stack` is
    /// the inverted stack's shape [N, T, 4, h, w].
    public static func requireDenoise(folder: ModelFolder, stack: [Int], embeddings: [Int], guidance: Float) throws {
        let s = shape(latents: stack, embeddings: embeddings)
        try require(denoise(folder: folder, shape: s, stackLatents: stack.count == 5 ? stack[1] : 1, guidance: guidance), "", s,
                    remedy: "denoise fewer images per run or a smaller image, \(override)")
    }

    /// denoise --method ledits: the UNet on (1 + C)·N latents; the noise maps as read and as a
    /// tensor (2 per step), the masks kept (C per step) and the guided predictions (1 per step);
    /// the UNet's input and output and the guidance ((1 + C)·2 + 8 latents per image); the
    /// concepts' and the unconditional embeddings with the batch of them ((1 + C)·2 per image).
    /// The attention store's sums are a grid's worth per token and are left in the allowance.
    public static func leditsDenoise(folder: ModelFolder, shape s: Shape, steps: Int, concepts c: Int) throws -> Double {
        let unet = try UNetConfig(folder.config("unet"))
        let k = Double(c)
        let floats = (3 + k) * Double(steps) * s.n * s.latent + ((1 + k) * 2 + 8) * s.n * s.latent + (1 + k) * 2 * s.n * s.embedding
        return total(folder, unet, batch: (1 + c) * s.images, shape: s, floats: floats)
    }

    /// Refuses (one line) a LEDITS++ edit whose estimate is more than the memory limit; `stack` is
    /// the noise maps' shape [N, T, 4, h, w], `embeddings` the concepts' [C, L, D].
    public static func requireLEditsDenoise(folder: ModelFolder, stack: [Int], embeddings: [Int], concepts: Int) throws {
        let s = shape(latents: stack, embeddings: embeddings)
        try require(leditsDenoise(folder: folder, shape: s, steps: stack.count == 5 ? stack[1] : 1, concepts: concepts),
                    " with \(concepts) concept\(concepts == 1 ? "" : "s")", s,
                    remedy: "edit fewer images or concepts per run or a smaller image, \(override)")
    }

    /// Refuses (one line) a mask whose estimate is more than the memory limit.
    public static func requireNoiseDiffMask(folder: ModelFolder, latents: [Int], embeddings: [Int], maps: Int, maxBatch: Int) throws {
        let s = shape(latents: latents, embeddings: embeddings)
        try require(noiseDiffMask(folder: folder, shape: s, maps: maps, maxBatch: maxBatch), " with --maps \(maps) --batch \(maxBatch)", s,
                    remedy: "lower --batch (latents per UNet pass) or --maps, mask fewer images per run or a smaller image, \(override)")
    }

    /// "1 image at 64x64 latents needs about 3.1 GB of memory, more than …"
    static func require(_ bytes: Double, _ detail: String, _ s: Shape, remedy: String) throws {
        try MemoryBudget.require(bytes, for: "\(s.images) image\(s.images == 1 ? "" : "s") at \(s.latentWidth)x\(s.latentHeight) latents\(detail)",
                                 remedy: remedy)
    }
}
