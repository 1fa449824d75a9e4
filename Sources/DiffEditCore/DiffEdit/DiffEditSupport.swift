#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Pieces shared by the three DiffEdit stages: micro-batched UNet calls, embedding batches,
/// and the checks that tell a user which input does not belong to which model.
public enum DiffEditSupport {
    /// UNet outputs for a batch of latents at one timestep, in passes of at most `maxBatch`
    /// latents so that activation memory stays bounded. Every latent is independent in the
    /// UNet (GroupNorm and attention are per sample), so the result does not depend on
    /// `maxBatch` beyond float rounding in the matrix products.
    public static func predict(_ unet: UNet2DCondition, latents: Tensor, timestep: Int, embeddings: Tensor,
                               maxBatch: Int, progress: ((Int) -> Void)? = nil) throws -> Tensor {
        let b = latents.shape[0]
        precondition(embeddings.shape[0] == b)
        let step = max(1, maxBatch)
        if b <= step {
            let out = try unet(sample: latents, timestep: Float(timestep), encoderHiddenStates: embeddings)
            progress?(b)
            return out
        }
        var parts: [Tensor] = []
        var start = 0
        while start < b {
            let n = min(step, b - start)
            parts.append(try unet(sample: latents.slice(batch: start, count: n), timestep: Float(timestep),
                                  encoderHiddenStates: embeddings.slice(batch: start, count: n)))
            start += n
            progress?(start)
        }
        return Tensor.concat(batch: parts)
    }

    /// Each row of `t` repeated `times` times in place (torch's repeat_interleave on dim 0).
    public static func repeatInterleave(_ t: Tensor, _ times: Int) -> Tensor {
        let n = t.shape[0], inner = t.count / max(n, 1)
        var out = [Float]()
        out.reserveCapacity(t.count * times)
        for i in 0..<n {
            let row = t.data[(i * inner)..<((i + 1) * inner)]
            for _ in 0..<times { out.append(contentsOf: row) }
        }
        var s = t.shape
        s[0] = n * times
        return Tensor(shape: s, data: out)
    }

    /// Embeddings [1 or n, L, D] as a batch of n (one prompt for every image, or one per image).
    public static func broadcastPrompts(_ e: Tensor, to n: Int, option: String) throws -> Tensor {
        guard e.rank == 3 else {
            throw ToolError("\(option) has shape \(e.shape), expected text embeddings [N, 77, D] — make it with tokenize | encode-text")
        }
        if e.shape[0] == n { return e }
        if e.shape[0] == 1 { return repeatInterleave(e, n) }
        throw ToolError("\(option) holds \(e.shape[0]) prompts for \(n) images — give one prompt, or one per image")
    }

    /// Checks embeddings against the UNet's cross-attention width, and (given `images`) that
    /// they hold one prompt per image.
    public static func checkEmbeddings(_ e: Tensor, unet: UNet2DCondition, option: String, images n: Int? = nil) throws {
        let d = unet.config.crossAttentionDim[0]
        guard e.rank == 3, e.shape[2] == d, e.shape[1] >= 1 else {
            throw ToolError("\(option) has shape \(e.shape) but this model's UNet expects text embeddings [N, tokens, \(d)] — encode the prompt with the same model (tokenize --model M | encode-text --model M)")
        }
        if let n, e.shape[0] != n {
            throw ToolError("\(option) holds \(e.shape[0]) prompts for \(n) images — give one prompt, or one per image")
        }
    }

    /// The embedding of the empty prompt "" with the model's own tokenizer and text encoder
    /// (the unconditional embedding diffusers uses when no negative prompt is given).
    public static func emptyPromptEmbedding(folder: ModelFolder) throws -> Tensor {
        try promptEmbedding("", folder: folder)
    }

    /// The embedding [1, L, D] of one prompt with the model's own tokenizer and text encoder (a
    /// model's default negative prompt, diffedit_defaults.json).
    public static func promptEmbedding(_ text: String, folder: ModelFolder) throws -> Tensor {
        let tokenizer = try CLIPTokenizer(folder: folder)
        let ids = tokenizer.inputIDs(text)
        let encoder = try CLIPTextModel(folder: folder)
        let embedding = try encoder.encode(ids: ids, batch: 1, length: ids.count)
        // A single file's text encoder reads its 16-bit weights in place from the mapping the UNet
        // keeps: let those pages go now that the encoder is done.
        folder.singleFile?.releasePages(of: "text_encoder")
        return embedding
    }

    /// A short stable fingerprint (FNV-1a 64, hex) of bytes, for provenance in metadata.
    public static func fingerprint(_ bytes: [UInt8]) -> String {
        bytes.withUnsafeBytes { fingerprint($0) }
    }

    /// The same over bytes in memory (a mapped file).
    public static func fingerprint(_ bytes: UnsafeRawBufferPointer) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return String(h, radix: 16)
    }

    /// Fingerprint of a file's contents ("missing" if it cannot be read). Read as every model file
    /// is (InputFile): a FIFO or device in its place counts as missing instead of blocking.
    public static func fileFingerprint(_ path: String) -> String {
        guard let d = fileContents(path) else { return "missing" }
        return fingerprint(d)
    }

    /// The bytes of a small model file for a fingerprint, or nil when it is absent, not a regular
    /// file (never waited on) or unreadable: the tools that use the file refuse it by name.
    static func fileContents(_ path: String) -> [UInt8]? {
        try? InputFile.read(path, what: "model file", limit: JSONConfig.maxBytes)
    }

    /// The size of the file `path` names — its target's, for a symbolic link (stat, not lstat:
    /// the Hugging Face cache links every file to a blob, and a link and a copy are one model).
    static func fileSize(_ path: String) -> Int? {
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        return Int(st.st_size)
    }

    public static func schedulerFingerprint(_ folder: ModelFolder) -> String {
        if let singleFile = folder.singleFile { return singleFile.schedulerFingerprint }
        return fileFingerprint(folder.path("scheduler", "scheduler_config.json"))
    }
}
