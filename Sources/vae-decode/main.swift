import ArgumentParser
import DiffEditCore
import DiffEditCLI


// `vae-decode`: Stable Diffusion latents → netpbm images (man 1 vae-decode).

@main
struct VAEDecode: DiffEditTool {
    static let configuration = CommandConfiguration(
        commandName: "vae-decode",
        abstract: "Decode Stable Diffusion latents into PPM images with the model's VAE.",
        discussion: """
            Reads latents [N, 4, h, w] (in the UNet's space: they are divided by the VAE's \
            scaling_factor first) and writes one raw PPM per batch entry as a multi-image netpbm \
            stream, postprocessed as diffusers: (x/2 + 0.5) clamped to [0, 1], × 255 (or 65535), \
            rounded.
            """,
        version: CLI.version)

    @Option(name: .long, help: ArgumentHelp(CLI.modelHelp))
    var model: String?

    @Option(VAEDecode.depthOption, "Bits per sample of the output")
    var depth = 8
    static let depthOption = NumberOption<Int>("--depth", .oneOf([8, 16]))

    @OptionGroup var tileOption: TileOption
    @OptionGroup var precisionOption: PrecisionOption

    @Option(name: .long, help: "Name of the record to decode (default: latents, else the only record, else posterior.mean).")
    var record: String?

    @Flag(name: .shortAndLong, help: "Do not print notes on stderr.")
    var quiet = false

    @Flag(name: .long, help: "Process inputs holding NaN or infinite values instead of refusing them.")
    var allowNonfinite = false
    @Flag(name: [.customShort("f"), .long], help: "Write binary data even to a terminal.")
    var force = false

    @Argument(help: "Tensor stream file; - is stdin.")
    var file = "-"

    /// --record, else `latents`, else the only record, else `posterior.mean` (so that
    /// `vae-encode | vae-decode` decodes the posterior mean).
    func pick(_ records: [TensorRecord], label: String) throws -> TensorRecord {
        let names = records.map(\.name).joined(separator: ", ")
        if let record {
            guard let r = records.first(where: { $0.name == record }) else {
                throw ToolError("\(label) has no record named '\(record)' (it has: \(names))")
            }
            return r
        }
        if let r = records.first(where: { $0.name == RecordName.latents }) { return r }
        if records.count == 1 { return records[0] }
        if let r = records.first(where: { $0.name == RecordName.posteriorMean }) { return r }
        throw ToolError("\(label) holds \(records.count) records (\(names)) and none is named latents — choose one with --record NAME")
    }

    func run() throws {
        try CLI.run(Self.toolName) {
            try precisionOption.apply(tool: Self.toolName, quiet: quiet)
            let folder = try ModelFolder.resolve(model)
            let vae = try AutoencoderKL(folder: folder)
            let tiling = try tileOption.tiling(vae: vae)
            let out = try CLI.binaryOutput(force: force)
            let reader = try CLI.tensorInput(file)
            let records = try reader.readAllNonEmpty(expecting: "latents [N, \(vae.config.latentChannels), h, w]")
            for r in records { try r.requireFinite(from: reader.label, allow: allowNonfinite) }
            let r = try pick(records, label: reader.label)
            let lc = vae.config.latentChannels
            guard r.dtype.isFloatingPoint, r.rank == 4 || r.rank == 3, r.shape[r.rank - 3] == lc,
                  r.shape[r.rank - 1] > 0, r.shape[r.rank - 2] > 0 else {
                throw ToolError("record '\(r.name)' is \(r.shapeDescription); vae-decode needs float latents [N, \(lc), h, w] — pipe in denoise's output or vae-encode's posterior, or choose a record with --record")
            }
            let sf = vae.config.scalingFactor
            if !quiet, let s = r.metadata["scaling_factor"], let v = Float(s), v != sf {
                CLI.note(Self.toolName, "note: the latents were scaled by \(s) but this VAE's scaling_factor is \(sf) — are they from another model?")
            }
            // Latents from another model decode to garbage, but two models may share one VAE
            // (SD 1.4 and 1.5): warn rather than refuse.
            if !quiet, let fp = r.metadata["model.fingerprint"], fp != DiffEditIO.modelFingerprint(folder) {
                CLI.note(Self.toolName, "warning: the latents were made with model \(r.metadata["model"] ?? "?") (fingerprint \(fp)), not \(folder.root) — decode with --model \(r.metadata["model"] ?? "of that model") unless both share this VAE")
            }
            let f = vae.config.downsamplingFactor
            let (lh, lw) = (r.shape[r.rank - 2], r.shape[r.rank - 1])
            // Tiled, the decoder's activations are those of one tile.
            let (bw, bh) = tiling.map { (min(lw * f, $0.sampleSize), min(lh * f, $0.sampleSize)) } ?? (lw * f, lh * f)
            try MemoryBudget.require(MemoryBudget.vaeBytes(width: bw, height: bh, widestChannels: vae.config.blockOutChannels.first ?? 128),
                                     for: "decoding \(lw)x\(lh) latents into a \(lw * f)x\(lh * f) image",
                                     remedy: tiling != nil ? "give a smaller --tile-size" : "decode with --tile, or make smaller latents (vae-encode a scaled-down image, e.g. pamscale -xyfit 1024 1024)")
            let latents = r.rank == 4 ? r.tensor() : r.tensor().reshaped([1] + r.shape)
            let decoder = try vae.makeDecoder()
            // One batch entry at a time: memory stays that of a single image.
            for b in 0..<latents.shape[0] {
                var z = latents.slice(batch: b, count: 1)
                // diffusers: vae.decode(latents / scaling_factor).
                z.data.withUnsafeMutableBufferPointer { p in for i in 0..<p.count { p[i] = p[i] / sf } }
                let image = tiling?.decode(z, decoder: decoder) ?? decoder.decode(z)
                try NonfiniteOutput.check(image.data, what: "the decoded image \(b)")
                try NetpbmImage.write(image, bits: depth, to: out)
                try out.flush()
            }
        }
    }
}
