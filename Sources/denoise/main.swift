import ArgumentParser
import DiffEditCore
import DiffEditCLI

extension MaskedDenoising.Blend: ExpressibleByArgument {}

/// denoise: masked DDIM decoding of an inverted stack under the target caption
/// (diffusers' StableDiffusionDiffEditPipeline.__call__). See denoise(1).
@main
struct Denoise: DiffEditTool {
    static let configuration = CommandConfiguration(
        commandName: "denoise",
        abstract: "Decode an inverted stack under the target caption, editing only inside the mask.",
        discussion: "Reads invert's output on stdin, writes the edited latents [N, 4, h, w] (record latents) for vae-decode. See denoise(1).",
        version: CLI.version)

    @Option(name: .long, help: "The mask: noise-diff-mask's (latent size), or a grey PGM/PBM of any size (white = edit; area average to the latent grid, then 0.5 or more = edit).")
    var mask: String
    @Option(name: .long, help: "Embeddings of the target caption.")
    var prompt: String
    @Option(name: .long, help: "Negative embeddings: the source caption (default: the model's negative_prompt in diffedit_defaults.json, else the empty prompt).")
    var negative: String?
    @Option(StageNumbers.steps, "Inference steps", defaultText: "the stack's, from invert")
    var steps: Int?
    @Option(StageNumbers.strength, "Strength", defaultText: "the stack's, from invert")
    var strength: Double?
    @Option(StageNumbers.guidance, StageNumbers.guidanceAbstract, defaultText: "the model's diffedit_defaults.json, else 7.5")
    var guidance: Float?
    @Option(name: .long, help: "Background blending: diffusers or paper (default: the model's diffedit_defaults.json, else diffusers).")
    var blend: MaskedDenoising.Blend?
    @Option(StageNumbers.dilate, "Dilate the mask by this many latent cells (diagonals included)")
    var dilate = 0
    @Option(StageNumbers.eta, "DDIM's eta: 0 deterministic, 1 DDPM-like; noise drawn from --seed (--scheduler ddim only)")
    var eta: Float = 0
    @Option(StageNumbers.seed, "Seed of the torch CPU generator (the noise of --eta > 0).")
    var seed: UInt64 = 0
    @OptionGroup var schedulerOption: SchedulerOption
    @OptionGroup var common: StageOptions
    @Argument(help: "The inverted stack from invert (default or '-': stdin).")
    var input: String?

    func run() throws {
        try CLI.run(Self.toolName) {
            let run = try StageRun(Self.toolName, common, input: input, expecting: "the inverted stack from invert")
            let stackRec = try DiffEditIO.pick(run.records, RecordName.inverted, option: run.inputLabel, what: "invert's output")
            guard stackRec.rank == 5 else {
                throw ToolError("\(run.inputLabel): record '\(stackRec.name)' is \(stackRec.shapeDescription); expected invert's stack [N, T, 4, h, w] — pipe in the output of invert")
            }
            try run.checkModel(stackRec, "the inverted stack")
            let stack = try StackInfo.read(stackRec, folder: run.folder, scheduler: schedulerOption.scheduler, steps: steps, strength: strength)
            if eta > 0 && stack.scheduler != .ddim {
                throw ToolError("--eta \(eta) applies to the DDIM scheduler only; DPM-Solver++ is deterministic (diffusers ignores eta there) — drop --eta, or invert and denoise with --scheduler ddim")
            }
            let n = stackRec.shape[0]
            let picture = [stackRec.metadata[MetadataKey.imageWidth], stackRec.metadata[MetadataKey.imageHeight]].compactMap { $0.flatMap(Int.init) }
            let maskTensor = try MaskImport.load(mask, folder: run.folder, latentHeight: stackRec.shape[3], latentWidth: stackRec.shape[4],
                                                 pictureSize: picture.count == 2 ? (picture[0], picture[1]) : nil,
                                                 allowNonfinite: common.allowNonfinite)
            let p = try run.embeddings(prompt, option: "--prompt", images: n)
            let neg = try run.negative(negative, option: "--negative", images: n)
            let clean = run.records.first { $0.name == RecordName.invertedClean }?.tensor()
            var options = MaskedDenoising.Options()
            options.steps = stack.steps
            options.strength = stack.strength
            options.guidance = run.pick(guidance, \.guidance, "guidance", builtIn: 7.5)
            options.blend = run.pick(blend, \.blend, "blend", builtIn: .diffusers)
            options.dilate = dilate
            options.eta = eta
            try StageMemory.requireDenoise(folder: run.folder, stack: stackRec.shape, embeddings: p.shape, guidance: options.guidance)
            var stage = MaskedDenoising(unet: try run.loadUNet(), scheduler: try stack.scheduler.denoising(folder: run.folder), options: options)
            let r = try stage.denoise(inverted: stackRec.tensor(), mask: maskTensor, prompt: p, negative: neg,
                                      clean: clean, generator: TorchGenerator(seed: seed), progress: run.progress)
            var meta = [MetadataKey.steps: "\(stack.steps)", MetadataKey.strength: "\(stack.strength)",
                        MetadataKey.guidance: "\(options.guidance)", "blend": options.blend.rawValue,
                        MetadataKey.scheduler: stack.scheduler.rawValue]
            if dilate > 0 { meta["mask.dilate"] = "\(dilate)" }
            if eta > 0 { (meta["eta"], meta[MetadataKey.seed]) = ("\(eta)", "\(seed)") }
            try run.write(TensorRecord(name: RecordName.latents, tensor: r.latents, metadata: run.metadata(meta, carryingImageSizeOf: stackRec)))
        }
    }
}
