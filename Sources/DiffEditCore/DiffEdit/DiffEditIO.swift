import Foundation

/// Reading and checking the files the DiffEdit tools pass between them, with messages that name
/// the option to fix.
public enum DiffEditIO {

    /// Metadata keys every DiffEdit output carries.
    public static func provenance(_ folder: ModelFolder) -> [String: String] {
        var meta = [MetadataKey.model: folder.root, MetadataKey.modelFingerprint: modelFingerprint(folder)]
        if let lora = folder.lora {
            meta[MetadataKey.lora] = lora.description
            meta[MetadataKey.loraFingerprint] = lora.fingerprint
        }
        return meta
    }

    /// Identity of a model for compatibility checks: FNV-1a of the UNet, VAE and scheduler
    /// configs and the sizes of the UNet and VAE weight files (cheap even for gigabyte
    /// checkpoints, and stable when the folder moves); a single file's from its effective configs.
    /// Files are read without blocking (a FIFO counts as absent; the tool that uses it refuses it)
    /// and symbolic links are followed, so a Hugging Face cache snapshot, whose files link to
    /// blobs, is the same model as a plain copy.
    public static func modelFingerprint(_ folder: ModelFolder) -> String {
        if let singleFile = folder.singleFile { return singleFile.fingerprint }
        var bytes: [UInt8] = []
        for (c, f) in [("unet", "config.json"), ("vae", "config.json"), ("scheduler", "scheduler_config.json"),
                       ("text_encoder", "config.json")] {
            bytes += DiffEditSupport.fileContents(folder.path(c, f)) ?? []
        }
        for c in ["unet", "vae", "text_encoder"] {
            for name in ModelFolder.weightFileNames {
                if let size = DiffEditSupport.fileSize(folder.path(c, name)) {
                    bytes += Array("\(c)/\(name):\(size)".utf8)
                }
            }
        }
        return DiffEditSupport.fingerprint(bytes)
    }

    /// Reads all records of a file given to `option` (or stdin for "-").
    /// NaN or ±Inf in any record is refused unless `allowNonfinite` (--allow-nonfinite).
    /// `reader`: the file already open (MaskImport peeks at its first bytes).
    public static func records(_ path: String, option: String, allowNonfinite: Bool = false,
                               reader: ByteReader? = nil) throws -> [TensorRecord] {
        let all: [TensorRecord]
        do {
            all = try (reader.map { TensorStreamReader($0) } ?? CLI.tensorInput(path)).readAllNonEmpty(expecting: "a tensor stream")
        } catch let e as ToolError {
            throw ToolError("\(option) \(path): \(e.message)")
        }
        for r in all { try r.requireFinite(from: "\(option) \(path)", allow: allowNonfinite) }
        return all
    }

    /// The record named `name`, else the only record.
    public static func pick(_ records: [TensorRecord], _ name: String, option: String, what: String) throws -> TensorRecord {
        if let r = records.first(where: { $0.name == name }) { return r }
        if records.count == 1 { return records[0] }
        throw ToolError("\(option) has no record '\(name)' (it has \(records.map(\.name).joined(separator: ", "))) — give \(what)")
    }

    /// Text embeddings [N, L, D] from a file (encode-text's `embeddings` record).
    public static func embeddings(_ path: String, folder: ModelFolder, option: String, allowNonfinite: Bool = false) throws -> Tensor {
        let r = try pick(try records(path, option: option, allowNonfinite: allowNonfinite), RecordName.embeddings, option: option,
                         what: "text embeddings from tokenize | encode-text")
        try checkModel(r, folder, option: option)
        guard r.rank == 3, [.f32, .f16, .bf16].contains(r.dtype) else {
            throw ToolError("\(option) \(path) holds \(r.shapeDescription), expected text embeddings [N, 77, D] — make them with tokenize | encode-text")
        }
        return r.tensor()
    }

    /// Refuses an input made with another model (metadata model.fingerprint).
    public static func checkModel(_ r: TensorRecord, _ folder: ModelFolder, option: String) throws {
        guard let fp = r.metadata[MetadataKey.modelFingerprint] else { return }
        let mine = modelFingerprint(folder)
        guard fp == mine else {
            throw ToolError("\(option) was made with model \(r.metadata[MetadataKey.model] ?? "?") (fingerprint \(fp)), not \(folder.root) (\(mine)) — remake it with --model \(folder.root), or pass --model \(r.metadata[MetadataKey.model] ?? "of that file")")
        }
        // Outputs of the tools that take --lora record theirs; the VAE's record none.
        if let lora = folder.lora, let recorded = r.metadata[MetadataKey.loraFingerprint], recorded != lora.fingerprint {
            throw ToolError("\(option) was made with --lora \(r.metadata[MetadataKey.lora] ?? "?"), this run has \(lora.isEmpty ? "none" : "--lora " + lora.description) — give every stage the same --lora files and scales, in the same order")
        }
    }

    /// The image posterior from vae-encode: (mean, std), or a sampled latent (std nil).
    public static func posterior(_ records: [TensorRecord], label: String) throws -> (mean: TensorRecord, std: TensorRecord?) {
        if let m = records.first(where: { $0.name == RecordName.posteriorMean }) {
            guard let s = records.first(where: { $0.name == RecordName.posteriorStd }) else {
                throw ToolError("\(label) has posterior.mean but no posterior.std — pipe in vae-encode's complete output")
            }
            guard m.rank == 4, m.shape == s.shape else {
                throw ToolError("\(label): posterior.mean \(m.shapeDescription) and posterior.std \(s.shapeDescription) must both be [N, 4, h, w] — pipe in vae-encode's complete output")
            }
            return (m, s)
        }
        if let l = records.first(where: { $0.name == RecordName.latents }), l.rank == 4 {
            return (l, nil)
        }
        throw ToolError("\(label) holds \(records.map(\.name).joined(separator: ", ")); expected the image posterior (posterior.mean, posterior.std) — pipe in the output of vae-encode")
    }
}
