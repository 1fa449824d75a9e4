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
    @Option(name: .long, parsing: .unconditional, help: StageNumbers.steps.help("Inference steps", defaultText: "the stack's, from invert"),
            transform: StageNumbers.steps.transform)
    var steps: Int?
    @Option(name: .long, parsing: .unconditional, help: StageNumbers.strength.help("Strength", defaultText: "the stack's, from invert"),
            transform: StageNumbers.strength.transform)
    var strength: Double?
    @Option(name: .long, parsing: .unconditional, help: StageNumbers.guidance.help(StageNumbers.guidanceAbstract, defaultText: "the model's diffedit_defaults.json, else 7.5"),
            transform: StageNumbers.guidance.transform)
    var guidance: Float?
    @Option(name: .long, help: "Background blending: diffusers or paper (default: the model's diffedit_defaults.json, else diffusers).")
    var blend: MaskedDenoising.Blend?
    @Option(name: .long, parsing: .unconditional, help: StageNumbers.dilate.help("Dilate the mask by this many latent cells (diagonals included)", default: 0),
            transform: StageNumbers.dilate.transform)
    var dilate = 0
    @Option(name: .long, parsing: .unconditional, help: StageNumbers.eta.help("DDIM's eta: 0 deterministic, 1 DDPM-like; noise drawn from --seed (--scheduler ddim only)", default: 0),
            transform: StageNumbers.eta.transform)
    var eta: Float = 0
    @Option(name: .long, parsing: .unconditional, help: StageNumbers.seed.help("Seed of the torch CPU generator (the noise of --eta > 0).", default: 0),
            transform: StageNumbers.seed.transform)
    var seed: UInt64 = 0
    @OptionGroup var schedulerOption: SchedulerOption
    @OptionGroup var common: StageOptions
    @Argument(help: "The inverted stack from invert (default or '-': stdin).")
    var input: String?

    func run() throws {
        try CLI.run("denoise") {
            let out = try CLI.tensorOutput(force: common.force)
            let reader = try CLI.tensorInput(input)
            let records = try reader.readAllNonEmpty(expecting: "the inverted stack from invert")
            for r in records { try r.requireFinite(from: reader.label, allow: common.allowNonfinite) }
            let stackRec = try DiffEditIO.pick(records, DiffEditIO.invertedRecord, option: reader.label,
                                               what: "invert's output")
            guard stackRec.rank == 5 else {
                throw ToolError("\(reader.label): record '\(stackRec.name)' is \(stackRec.shapeDescription); expected invert's stack [N, T, 4, h, w] — pipe in the output of invert")
            }
            let folder = try ModelFolder.resolve(common.model)
            try DiffEditIO.checkModel(stackRec, folder, option: "the inverted stack on stdin")
            if let fp = stackRec.metadata["scheduler.fingerprint"], fp != DiffEditSupport.schedulerFingerprint(folder) {
                throw ToolError("the inverted stack was made with another scheduler config (\(stackRec.metadata["model"] ?? "?")) — invert again with --model \(folder.root)")
            }
            let kind = try schedulerOption.resolved(forStack: stackRec.metadata)
            if eta > 0 && kind != .ddim {
                throw ToolError("--eta \(eta) applies to the DDIM scheduler only; DPM-Solver++ is deterministic (diffusers ignores eta there) — drop --eta, or invert and denoise with --scheduler ddim")
            }
            // Steps and strength come from invert; explicit options must agree (diffusers #5465).
            let damaged = "the stack is damaged or was not written by invert; invert again"
            let stackSteps = try stackRec.metadata["steps"].map { try StageNumbers.steps.parse($0, subject: "the stack's metadata steps=", remedy: damaged) }
            let stackStrength = try stackRec.metadata["strength"].map { try StageNumbers.strength.parse($0, subject: "the stack's metadata strength=", remedy: damaged) }
            if let steps, let stackSteps, steps != stackSteps {
                throw ToolError("--steps \(steps) differs from the \(stackSteps) steps the stack was inverted with — the denoising schedule must retrace the inversion; drop --steps or invert again with --steps \(steps)")
            }
            if let strength, let stackStrength, strength != stackStrength {
                throw ToolError("--strength \(strength) differs from the strength \(stackStrength) the stack was inverted with — drop --strength or invert again with --strength \(strength)")
            }
            guard let useSteps = steps ?? stackSteps, let useStrength = strength ?? stackStrength else {
                throw ToolError("the stack has no steps/strength metadata (not written by invert) — give --steps and --strength as used for the inversion")
            }
            try StackSchedule.check(metadata: stackRec.metadata, count: stackRec.shape[1], kind: kind,
                                    schedulerGiven: schedulerOption.scheduler != nil,
                                    steps: useSteps, strength: useStrength, folder: folder)
            let n = stackRec.shape[0]
            let picture = [stackRec.metadata["image.width"], stackRec.metadata["image.height"]].compactMap { $0.flatMap(Int.init) }
            let maskTensor = try MaskImport.load(mask, folder: folder, latentHeight: stackRec.shape[3], latentWidth: stackRec.shape[4],
                                                 pictureSize: picture.count == 2 ? (picture[0], picture[1]) : nil,
                                                 allowNonfinite: common.allowNonfinite)
            let settings = try ModelSettings(folder: folder)
            let p = try DiffEditSupport.broadcastPrompts(DiffEditIO.embeddings(prompt, folder: folder, option: "--prompt", allowNonfinite: common.allowNonfinite), to: n, option: "--prompt")
            let neg = try DiffEditSupport.broadcastPrompts(
                settings.negative(negative, option: "--negative", allowNonfinite: common.allowNonfinite), to: n, option: "--negative")
            let clean = records.first { $0.name == DiffEditIO.cleanRecord }?.tensor()

            let useGuidance = settings.pick(guidance, \.guidance, "guidance", builtIn: 7.5)
            try StageMemory.requireDenoise(folder: folder, stack: stackRec.shape, embeddings: p.shape, guidance: useGuidance)
            let unet = try common.loadUNet(folder, tool: "denoise")
            var options = MaskedDenoising.Options()
            options.steps = useSteps
            options.strength = useStrength
            options.guidance = useGuidance
            options.blend = settings.pick(blend, \.blend, "blend", builtIn: .diffusers)
            options.dilate = dilate
            options.eta = eta
            settings.note("denoise", common)
            var dn = MaskedDenoising(unet: unet, scheduler: try kind.denoising(folder: folder), options: options)
            let report = ProgressReporter(tool: "denoise", quiet: common.quiet, force: common.progress)
            let r = try dn.denoise(inverted: stackRec.tensor(), mask: maskTensor, prompt: p, negative: neg,
                                   clean: clean, generator: TorchGenerator(seed: seed), progress: report)
            var meta = DiffEditIO.provenance(folder)
            meta["steps"] = "\(useSteps)"
            meta["strength"] = "\(useStrength)"
            meta["guidance"] = "\(options.guidance)"
            meta["blend"] = options.blend.rawValue
            if dilate > 0 { meta["mask.dilate"] = "\(dilate)" }
            settings.record(into: &meta)
            meta[SchedulerOption.metadataKey] = kind.rawValue
            if eta > 0 { (meta["eta"], meta["seed"]) = ("\(eta)", "\(seed)") }
            for k in ["image.width", "image.height"] { if let v = stackRec.metadata[k] { meta[k] = v } }
            try out.write(TensorRecord(name: DiffEditIO.latentsRecord, tensor: r.latents, metadata: meta))
            try out.flush()
        }
    }
}
