import ArgumentParser
import DiffEditCore

// `vae-encode`: netpbm image(s) → the VAE's latent posterior (man 1 vae-encode).

enum ResizeMode: String, ExpressibleByArgument, CaseIterable {
    case nearest, bilinear
}

@main
struct VAEEncode: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vae-encode",
        abstract: "Encode netpbm images into Stable Diffusion latents with the model's VAE.",
        discussion: """
            Writes the posterior of AutoencoderKL.encode as two records, posterior.mean and \
            posterior.std [N, 4, H/8, W/8], both multiplied by the VAE's scaling_factor, so that \
            mean + std·ε is a latent in the UNet's space. \
            Every image of a multi-image stream becomes one batch entry; all must share one size.
            """)

    @Option(name: .long, help: "Stable Diffusion folder in diffusers layout (default: $DIFFEDIT_MODEL).")
    var model: String?

    @Flag(name: .long, help: "Centre-crop each side down to a multiple of the VAE's downsampling factor.")
    var crop = false

    @Option(name: .long, help: "Resize each side down to a multiple of the downsampling factor: nearest or bilinear.")
    var resize: ResizeMode?

    @Flag(name: .shortAndLong, help: "Do not print notes on stderr.")
    var quiet = false

    @Flag(name: [.customShort("f"), .long], help: "Write binary data even to a terminal.")
    var force = false

    @Argument(help: "Netpbm image file (PBM/PGM/PPM/PAM); - is stdin.")
    var file = "-"

    func run() throws {
        try CLI.run("vae-encode") {
            if crop && resize != nil { throw ToolError("--crop and --resize exclude each other") }
            let folder = try ModelFolder.resolve(model)
            let vae = try AutoencoderKL(folder: folder)
            let out = try CLI.tensorOutput(force: force)
            let images = try NetpbmImage.readAll(try ByteReader(path: file))
            let fit: VAEImageFit = crop ? .crop
                : resize == .nearest ? .resizeNearest : resize == .bilinear ? .resizeBilinear : .exact
            let (x, notes) = try vae.inputTensor(images, fit: fit)
            if !quiet { for n in notes { CLI.note("vae-encode", n) } }
            let encoder = try vae.makeEncoder()
            let posterior = DiagonalGaussian(moments: encoder.moments(x))
            let sf = vae.config.scalingFactor
            let meta = [
                "model": folder.root,
                "scaling_factor": "\(sf)",
                "image.width": "\(x.shape[3])",
                "image.height": "\(x.shape[2])",
            ]
            try out.write(TensorRecord(name: "posterior.mean", tensor: posterior.mean * sf, metadata: meta))
            try out.write(TensorRecord(name: "posterior.std", tensor: posterior.std * sf, metadata: meta))
            try out.flush()
        }
    }
}
