import ArgumentParser
import DiffEditCore
import DiffEditCLI

/// noise-diff-mask's own numeric options.
private enum Numbers {
    static let maps = NumberOption<Int>("--maps", .from(1, to: 10_000))
    static let encodeStrength = NumberOption<Double>("--encode-strength", .fraction)
    static let thresholdRatio = NumberOption<Float>("--threshold-ratio", .above(0, atMost: 1000))
    static let batch = NumberOption<Int>("--batch", .from(1, to: 1000))
}

/// noise-diff-mask: DiffEdit's mask from the difference of two noise estimates
/// (diffusers' StableDiffusionDiffEditPipeline.generate_mask). See noise-diff-mask(1).
@main
struct NoiseDiffMaskTool: DiffEditTool {
    static let configuration = CommandConfiguration(
        commandName: "noise-diff-mask",
        abstract: "Compute DiffEdit's edit mask from an image posterior and two captions.",
        discussion: "Reads vae-encode's posterior on stdin, writes the mask [N, 1, h, w] (record mask). See noise-diff-mask(1).",
        version: CLI.version)

    @Option(name: .long, help: "Embeddings of the source caption (what the image shows).")
    var source: String
    @Option(name: .long, help: "Embeddings of the target caption (what it should show).")
    var target: String
    @Option(name: .long, help: "Negative embeddings for the source (default: the model's negative_prompt in diffedit_defaults.json, else the empty prompt).")
    var sourceNegative: String?
    @Option(name: .long, help: "Negative embeddings for the target (default: as --source-negative).")
    var targetNegative: String?
    @Option(name: .long, parsing: .unconditional, help: Numbers.maps.help("Noise draws averaged per image (num_maps_per_mask).", default: 10),
            transform: Numbers.maps.transform)
    var maps = 10
    @Option(name: .long, parsing: .unconditional, help: Numbers.encodeStrength.help("Fraction of the schedule the image is noised to (mask_encode_strength).", default: 0.5),
            transform: Numbers.encodeStrength.transform)
    var encodeStrength = 0.5
    @Option(name: .long, parsing: .unconditional, help: Numbers.thresholdRatio.help("Clamp the map at this multiple of its mean; the mask is where it exceeds half that.", default: 3),
            transform: Numbers.thresholdRatio.transform)
    var thresholdRatio: Float = 3.0
    @Option(name: .long, parsing: .unconditional, help: StageNumbers.steps.help("Inference steps of the schedule the encode timestep is taken from", defaultText: "the model's diffedit_defaults.json, else 50"),
            transform: StageNumbers.steps.transform)
    var steps: Int?
    @Option(name: .long, parsing: .unconditional, help: StageNumbers.guidance.help(StageNumbers.guidanceAbstract, defaultText: "the model's diffedit_defaults.json, else 7.5"),
            transform: StageNumbers.guidance.transform)
    var guidance: Float?
    @Option(name: .long, parsing: .unconditional, help: StageNumbers.seed.help("Seed of the torch CPU generator (posterior sample, then noise).", default: 0),
            transform: StageNumbers.seed.transform)
    var seed: UInt64 = 0
    @Option(name: .long, parsing: .unconditional, help: Numbers.batch.help("Most latents per UNet call (bounds memory; results do not depend on it).", default: 10),
            transform: Numbers.batch.transform)
    var batch = 10
    @Flag(name: .long, help: "Write the normalised difference map before thresholding (record mask.soft).")
    var soft = false
    @Option(name: .long, help: "Also write the soft map (record mask.soft) to this file, the mask going to stdout: both from one run.")
    var softOutput: String?
    @Option(name: .long, parsing: .unconditional, help: StageNumbers.dilate.help("Dilate the mask by this many latent cells (diagonals included; the soft map is not dilated)", default: 0),
            transform: StageNumbers.dilate.transform)
    var dilate = 0
    @Flag(name: .long, help: "Enlarge the output to image size (nearest neighbour by the VAE factor).")
    var imageSize = false
    @OptionGroup var schedulerOption: SchedulerOption
    @OptionGroup var common: StageOptions
    @Argument(help: "Posterior from vae-encode (default or '-': stdin).")
    var input: String?

    func run() throws {
        try CLI.run("noise-diff-mask") {
            let softFile = try softOutput.map { try SideOutput(path: $0, option: "--soft-output", inputs: [input ?? "-", source, target, sourceNegative, targetNegative].compactMap { $0 }) }
            if soft && softFile != nil { throw ToolError("--soft and --soft-output both ask for the soft map — give --soft-output FILE alone to get the mask on stdout and the map in FILE") }
            let out = try CLI.tensorOutput(force: common.force)
            let reader = try CLI.tensorInput(input)
            let records = try reader.readAllNonEmpty(expecting: "the image posterior from vae-encode")
            for r in records { try r.requireFinite(from: reader.label, allow: common.allowNonfinite) }
            let (meanRec, stdRec) = try DiffEditIO.posterior(records, label: reader.label)
            guard let stdRec else {
                throw ToolError("\(reader.label) holds sampled latents, but noise-diff-mask draws its own samples from the posterior — pipe in vae-encode without --sample")
            }
            let folder = try ModelFolder.resolve(common.model)
            try DiffEditIO.checkModel(meanRec, folder, option: "the posterior on stdin")
            let n = meanRec.shape[0]
            func load(_ path: String?, _ option: String, _ empty: () throws -> Tensor) throws -> Tensor {
                let e = try path.map { try DiffEditIO.embeddings($0, folder: folder, option: option, allowNonfinite: common.allowNonfinite) } ?? empty()
                return try DiffEditSupport.broadcastPrompts(e, to: n, option: option)
            }
            let src = try load(source, "--source", { throw ToolError("--source is required") })
            let tgt = try load(target, "--target", { throw ToolError("--target is required") })
            let settings = try ModelSettings(folder: folder)
            let srcNeg = try DiffEditSupport.broadcastPrompts(settings.negative(sourceNegative, option: "--source-negative", allowNonfinite: common.allowNonfinite), to: n, option: "--source-negative")
            let tgtNeg = try DiffEditSupport.broadcastPrompts(settings.negative(targetNegative, option: "--target-negative", allowNonfinite: common.allowNonfinite), to: n, option: "--target-negative")
            let steps = settings.pick(self.steps, \.steps, "steps", builtIn: 50)
            let guidance = settings.pick(self.guidance, \.guidance, "guidance", builtIn: 7.5)
            settings.note("noise-diff-mask", common)

            try StageMemory.requireNoiseDiffMask(folder: folder, latents: meanRec.shape, embeddings: src.shape, maps: maps, maxBatch: batch)
            let unet = try common.loadUNet(folder, tool: "noise-diff-mask")
            var options = NoiseDiffMask.Options()
            options.maps = maps
            options.encodeStrength = encodeStrength
            options.thresholdRatio = thresholdRatio
            options.steps = steps
            options.guidance = guidance
            options.maxBatch = batch
            let kind = schedulerOption.scheduler ?? .ddim
            var nd = NoiseDiffMask(unet: unet, scheduler: try kind.denoising(folder: folder), options: options)
            let report = ProgressReporter(tool: "noise-diff-mask", quiet: common.quiet, force: common.progress)
            let r = try nd.generate(mean: meanRec.tensor(), std: stdRec.tensor(), source: src, sourceNegative: srcNeg,
                                    target: tgt, targetNegative: tgtNeg, generator: TorchGenerator(seed: seed),
                                    progress: report)
            // Identical captions: no difference anywhere, a whole-image mask (diffusers' result too).
            let sameCaptions = src.data == tgt.data && srcNeg.data == tgtNeg.data
            if !common.quiet && (sameCaptions || r.clamp == 0) {
                CLI.note("noise-diff-mask", "warning: \(sameCaptions ? "the source and target captions are the same" : "the source and target noise estimates do not differ"), so the mask covers the whole image (as diffusers' does) — give a target caption that names the edit")
            }
            var meta = DiffEditIO.provenance(folder)
            meta["maps"] = "\(maps)"
            meta["encode_strength"] = "\(encodeStrength)"
            meta["threshold_ratio"] = "\(thresholdRatio)"
            meta["steps"] = "\(steps)"
            meta["guidance"] = "\(guidance)"
            meta["seed"] = "\(seed)"
            meta["timestep"] = "\(r.timestep)"
            settings.record(into: &meta)
            meta[SchedulerOption.metadataKey] = kind.rawValue
            meta["clamp"] = "\(r.clamp)"
            meta["latent.height"] = "\(meanRec.shape[2])"
            meta["latent.width"] = "\(meanRec.shape[3])"
            for k in ["image.width", "image.height"] { if let v = meanRec.metadata[k] { meta[k] = v } }
            let mask = MaskDilation.dilate(r.mask, cells: dilate)
            if dilate > 0 { meta["dilate"] = "\(dilate)" }
            let ones = mask.data.reduce(0, +)
            meta["fraction_ones"] = "\(Double(ones) / Double(r.mask.count))"
            let near = r.soft.data.filter { abs($0 - 0.5) < 1e-4 }.count
            meta["near_threshold"] = "\(near)"
            var t = soft ? r.soft : mask, softMap = r.soft
            if imageSize {
                let factor = try AutoencoderKLConfig(folder.config("vae")).downsamplingFactor
                t = NoiseDiffMask.upscaleNearest(t, factor: factor)
                softMap = NoiseDiffMask.upscaleNearest(softMap, factor: factor)
                meta["scale"] = "\(factor)"
            }
            if !common.quiet && report.enabled {
                CLI.note("noise-diff-mask", "mask covers \(Int(ones)) of \(r.mask.count) latent pixels; clamp \(r.clamp)")
            }
            try out.write(TensorRecord(name: soft ? DiffEditIO.softRecord : DiffEditIO.maskRecord, tensor: t, metadata: meta))
            try out.flush()
            try softFile?.write(TensorRecord(name: DiffEditIO.softRecord, tensor: softMap, metadata: meta.filter { $0.key != "dilate" }))
        }
    }
}
