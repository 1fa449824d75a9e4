import ArgumentParser
import DiffEditCore
import DiffEditCLI

/// noise-diff-mask's own numeric options.
private enum Numbers {
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
    @Option(MaskNumbers.maps, "Noise draws averaged per image (num_maps_per_mask)", defaultText: "the model's diffedit_defaults.json, else 10")
    var maps: Int?
    @Option(MaskNumbers.encodeStrength, "Fraction of the schedule the image is noised to (mask_encode_strength)", defaultText: "the model's diffedit_defaults.json, else 0.5")
    var encodeStrength: Double?
    @Option(MaskNumbers.thresholdRatio, "Clamp the map at this multiple of its mean; the mask is where it exceeds half that", defaultText: "the model's diffedit_defaults.json, else 3")
    var thresholdRatio: Float?
    @Option(StageNumbers.steps, "Inference steps of the schedule the encode timestep is taken from", defaultText: "the model's diffedit_defaults.json, else 50")
    var steps: Int?
    @Option(StageNumbers.guidance, StageNumbers.guidanceAbstract, defaultText: "the model's diffedit_defaults.json, else 7.5")
    var guidance: Float?
    @Option(StageNumbers.seed, "Seed of the torch CPU generator (posterior sample, then noise).")
    var seed: UInt64 = 0
    @Option(Numbers.batch, "Most latents per UNet call (bounds memory; results do not depend on it).")
    var batch = 10
    @Flag(name: .long, help: "Write the normalised difference map before thresholding (record mask.soft).")
    var soft = false
    @Option(name: .long, help: "Also write the soft map (record mask.soft) to this file, the mask going to stdout: both from one run.")
    var softOutput: String?
    @Option(StageNumbers.dilate, "Dilate the mask by this many latent cells (diagonals included; the soft map is not dilated)", defaultText: "the model's diffedit_defaults.json, else 0")
    var dilate: Int?
    @Flag(name: .long, help: "Enlarge the output to image size (nearest neighbour by the VAE factor).")
    var imageSize = false
    @OptionGroup var schedulerOption: SchedulerOption
    @OptionGroup var common: StageOptions
    @Argument(help: "Posterior from vae-encode (default or '-': stdin).")
    var input: String?

    func run() throws {
        try CLI.run(Self.toolName) {
            // Checked before any work: FILE's folder, name, and that it is no input nor stdout.
            let softFile = try softOutput.map { try SideOutput(path: $0, option: "--soft-output", inputs: [input ?? "-", source, target, sourceNegative, targetNegative].compactMap { $0 }) }
            if soft && softFile != nil { throw ToolError("--soft and --soft-output both ask for the soft map — give --soft-output FILE alone to get the mask on stdout and the map in FILE") }
            let run = try StageRun(Self.toolName, common, input: input, expecting: "the image posterior from vae-encode")
            let (meanRec, stdRec) = try DiffEditIO.posterior(run.records, label: run.inputLabel)
            guard let stdRec else {
                throw ToolError("\(run.inputLabel) holds sampled latents, but noise-diff-mask draws its own samples from the posterior — pipe in vae-encode without --sample")
            }
            try run.checkModel(meanRec, "the posterior")
            let n = meanRec.shape[0]
            let src = try run.embeddings(source, option: "--source", images: n)
            let tgt = try run.embeddings(target, option: "--target", images: n)
            let srcNeg = try run.negative(sourceNegative, option: "--source-negative", images: n)
            let tgtNeg = try run.negative(targetNegative, option: "--target-negative", images: n)
            var options = NoiseDiffMask.Options()
            let maps = run.pick(self.maps, \.maps, "maps", builtIn: 10)
            let encodeStrength = run.pick(self.encodeStrength, \.encodeStrength, "encode strength", builtIn: 0.5)
            let thresholdRatio = run.pick(self.thresholdRatio, \.thresholdRatio, "threshold ratio", builtIn: 3.0)
            let dilate = run.pick(self.dilate, \.dilate, "dilate", builtIn: 0)
            options.maps = maps
            options.encodeStrength = encodeStrength
            options.thresholdRatio = thresholdRatio
            options.steps = run.pick(steps, \.steps, "steps", builtIn: 50)
            options.guidance = run.pick(guidance, \.guidance, "guidance", builtIn: 7.5)
            options.maxBatch = batch
            try StageMemory.requireNoiseDiffMask(folder: run.folder, latents: meanRec.shape, embeddings: src.shape,
                                                 maps: maps, maxBatch: batch)
            let kind = schedulerOption.scheduler ?? .ddim
            var stage = NoiseDiffMask(unet: try run.loadUNet(), scheduler: try kind.denoising(folder: run.folder), options: options)
            let r = try stage.generate(mean: meanRec.tensor(), std: stdRec.tensor(), source: src, sourceNegative: srcNeg,
                                       target: tgt, targetNegative: tgtNeg, generator: TorchGenerator(seed: seed),
                                       progress: run.progress)
            // Identical captions: no difference anywhere, a whole-image mask (diffusers' result too).
            let sameCaptions = src.data == tgt.data && srcNeg.data == tgtNeg.data
            if sameCaptions || r.clamp == 0 {
                run.note("warning: \(sameCaptions ? "the source and target captions are the same" : "the source and target noise estimates do not differ"), so the mask covers the whole image (as diffusers' does) — give a target caption that names the edit")
            }
            let mask = MaskDilation.dilate(r.mask, cells: dilate)
            let ones = mask.data.reduce(0, +)
            var meta = ["maps": "\(maps)", "encode_strength": "\(encodeStrength)", "threshold_ratio": "\(thresholdRatio)",
                        MetadataKey.steps: "\(options.steps)", MetadataKey.guidance: "\(options.guidance)",
                        MetadataKey.seed: "\(seed)", "timestep": "\(r.timestep)", MetadataKey.scheduler: kind.rawValue,
                        "clamp": "\(r.clamp)", MetadataKey.latentHeight: "\(meanRec.shape[2])", MetadataKey.latentWidth: "\(meanRec.shape[3])",
                        "fraction_ones": "\(Double(ones) / Double(r.mask.count))",
                        "near_threshold": "\(r.soft.data.filter { abs($0 - 0.5) < 1e-4 }.count)"]
            if dilate > 0 { meta["dilate"] = "\(dilate)" }
            var t = soft ? r.soft : mask, softMap = r.soft
            if imageSize {
                let factor = try AutoencoderKLConfig(run.folder.config("vae")).downsamplingFactor
                t = NoiseDiffMask.upscaleNearest(t, factor: factor)
                softMap = NoiseDiffMask.upscaleNearest(softMap, factor: factor)
                meta[MetadataKey.scale] = "\(factor)"
            }
            if run.progress.enabled { run.note("mask covers \(Int(ones)) of \(r.mask.count) latent pixels; clamp \(r.clamp)") }
            let metadata = run.metadata(meta, carryingImageSizeOf: meanRec)
            try run.write(TensorRecord(name: soft ? RecordName.softMask : RecordName.mask, tensor: t, metadata: metadata))
            try softFile?.write(TensorRecord(name: RecordName.softMask, tensor: softMap, metadata: metadata.filter { $0.key != "dilate" }))
        }
    }
}
