import ArgumentParser
import DiffEditCore
import DiffEditCLI


// `vae-encode`: netpbm image(s) → the VAE's latent posterior (man 1 vae-encode).

enum ResizeMode: String, ExpressibleByArgument, CaseIterable {
    case nearest, bilinear
}

@main
struct VAEEncode: DiffEditTool {
    static let configuration = CommandConfiguration(
        commandName: "vae-encode",
        abstract: "Encode netpbm images into Stable Diffusion latents with the model's VAE.",
        discussion: """
            Writes the posterior of AutoencoderKL.encode as two records, posterior.mean and \
            posterior.std [N, 4, H/8, W/8], both multiplied by the VAE's scaling_factor, so that \
            mean + std·ε is a latent in the UNet's space. With --sample --seed N, writes one sampled \
            latent instead (record latents), as diffusers' latent_dist.sample(generator) × \
            scaling_factor with torch.Generator("cpu").manual_seed(N). \
            Every image of a multi-image stream becomes one batch entry; all must share one size.
            """,
        version: CLI.version)

    @Option(name: .long, help: ArgumentHelp(CLI.modelHelp))
    var model: String?

    @Flag(name: .long, help: "Centre-crop each side down to a multiple of the VAE's downsampling factor.")
    var crop = false

    @Option(name: .long, help: "Resize each side down to a multiple of the downsampling factor: nearest or bilinear.")
    var resize: ResizeMode?

    @OptionGroup var tileOption: TileOption
    @OptionGroup var precisionOption: PrecisionOption

    @Flag(name: .long, help: "Write one sample of the posterior (record latents) instead of mean and std; needs --seed.")
    var sample = false

    @Option(StageNumbers.seed, "Seed of the torch CPU generator used by --sample", defaultText: nil)
    var seed: UInt64?

    @Flag(name: .shortAndLong, help: "Do not print notes on stderr.")
    var quiet = false

    @Flag(name: [.customShort("f"), .long], help: "Write binary data even to a terminal.")
    var force = false

    @Argument(help: "Netpbm image file (PBM/PGM/PPM/PAM); - is stdin.")
    var file = "-"

    func run() throws {
        try CLI.run(Self.toolName) {
            if crop && resize != nil { throw ToolError("--crop and --resize exclude each other — give only one of them") }
            if sample && seed == nil { throw ToolError("--sample needs a seed — add --seed N (the seed of torch.Generator('cpu').manual_seed(N))") }
            if seed != nil && !sample { throw ToolError("--seed only applies to --sample — add --sample, or drop --seed to write the posterior") }
            try precisionOption.apply(tool: Self.toolName, quiet: quiet)
            let folder = try ModelFolder.resolve(model)
            let vae = try AutoencoderKL(folder: folder)
            let tiling = try tileOption.tiling(vae: vae)
            let out = try CLI.tensorOutput(force: force)
            let images = try NetpbmImage.readAll(try ByteReader(path: file)) { w, h, _ in
                // Tiled, the encoder's activations are those of one tile.
                let (bw, bh) = tiling.map { (min(w, $0.sampleSize), min(h, $0.sampleSize)) } ?? (w, h)
                try MemoryBudget.require(MemoryBudget.vaeBytes(width: bw, height: bh, widestChannels: vae.config.blockOutChannels.first ?? 128),
                                         for: "encoding a \(w)x\(h) image",
                                         remedy: tiling != nil ? "give a smaller --tile-size" : "encode with --tile, or scale it down first, e.g. pamscale -xyfit 1024 1024 \(file == "-" ? "image.ppm" : file) | vae-encode")
            }
            let fit: VAEImageFit = crop ? .crop
                : resize == .nearest ? .resizeNearest : resize == .bilinear ? .resizeBilinear : .exact
            let (x, notes) = try vae.inputTensor(images, fit: fit)
            if !quiet { for n in notes { CLI.note(Self.toolName, n) } }
            let encoder = try vae.makeEncoder()
            let posterior = DiagonalGaussian(moments: tiling?.moments(x, encoder: encoder) ?? encoder.moments(x))
            let sf = vae.config.scalingFactor
            var meta = [
                "model": folder.root,
                "model.fingerprint": DiffEditIO.modelFingerprint(folder),
                "scaling_factor": "\(sf)",
                "image.width": "\(x.shape[3])",
                "image.height": "\(x.shape[2])",
            ]
            if sample, let seed {
                // diffusers: latent_dist.sample(generator) * scaling_factor, where sample() is
                // mean + std * torch.randn(mean.shape, generator=torch.Generator("cpu").manual_seed(seed)).
                meta["seed"] = "\(seed)"
                let noise = TorchGenerator(seed: seed).randn(count: posterior.mean.count)
                try out.write(TensorRecord(name: RecordName.latents, tensor: posterior.sample(noise: noise) * sf, metadata: meta))
            } else {
                try out.write(TensorRecord(name: RecordName.posteriorMean, tensor: posterior.mean * sf, metadata: meta))
                try out.write(TensorRecord(name: RecordName.posteriorStd, tensor: posterior.std * sf, metadata: meta))
            }
            try out.flush()
        }
    }
}
