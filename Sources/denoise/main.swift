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

    @Option(name: .long, help: "The mask from noise-diff-mask (latent size).")
    var mask: String
    @Option(name: .long, help: "Embeddings of the target caption.")
    var prompt: String
    @Option(name: .long, help: "Negative embeddings: the source caption (default: the empty prompt).")
    var negative: String?
    @Option(name: .long, help: "Inference steps (default: the stack's, from invert).")
    var steps: Int?
    @Option(name: .long, help: "Strength (default: the stack's, from invert).")
    var strength: Double?
    @Option(name: .long, help: "Classifier-free guidance scale.")
    var guidance: Float = 7.5
    @Option(name: .long, help: "Background blending: diffusers (default) or paper.")
    var blend: MaskedDenoising.Blend = .diffusers
    @Option(name: .long, help: "DDIM's eta in [0, 1]: 0 deterministic (default), 1 DDPM-like; noise drawn from --seed (--scheduler ddim only).")
    var eta: Float = 0
    @Option(name: .long, help: "Seed of the torch CPU generator (the noise of --eta > 0).")
    var seed: UInt64 = 0
    @OptionGroup var schedulerOption: SchedulerOption
    @OptionGroup var common: StageOptions
    @Argument(help: "The inverted stack from invert (default or '-': stdin).")
    var input: String?

    func run() throws {
        try CLI.run("denoise") {
            guard eta >= 0, eta <= 1 else {
                throw ToolError("--eta must be in [0, 1], got \(eta) — 0 is deterministic DDIM, 1 DDPM-like sampling")
            }
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
            let stackSteps = stackRec.metadata["steps"].flatMap(Int.init)
            let stackStrength = stackRec.metadata["strength"].flatMap(Double.init)
            if let steps, let stackSteps, steps != stackSteps {
                throw ToolError("--steps \(steps) differs from the \(stackSteps) steps the stack was inverted with — the denoising schedule must retrace the inversion; drop --steps or invert again with --steps \(steps)")
            }
            if let strength, let stackStrength, strength != stackStrength {
                throw ToolError("--strength \(strength) differs from the strength \(stackStrength) the stack was inverted with — drop --strength or invert again with --strength \(strength)")
            }
            guard let useSteps = steps ?? stackSteps, let useStrength = strength ?? stackStrength else {
                throw ToolError("the stack has no steps/strength metadata (not written by invert) — give --steps and --strength as used for the inversion")
            }
            let n = stackRec.shape[0]
            let maskRecords = try DiffEditIO.records(mask, option: "--mask", allowNonfinite: common.allowNonfinite)
            let maskRec = try DiffEditIO.pick(maskRecords, DiffEditIO.maskRecord, option: "--mask", what: "noise-diff-mask's output")
            try DiffEditIO.checkModel(maskRec, folder, option: "--mask")
            if maskRec.metadata["scale"] != nil {
                throw ToolError("--mask was written at image size (noise-diff-mask --image-size) — make it without --image-size for denoise")
            }
            let p = try DiffEditSupport.broadcastPrompts(DiffEditIO.embeddings(prompt, folder: folder, option: "--prompt", allowNonfinite: common.allowNonfinite), to: n, option: "--prompt")
            let neg = try DiffEditSupport.broadcastPrompts(
                try negative.map { try DiffEditIO.embeddings($0, folder: folder, option: "--negative", allowNonfinite: common.allowNonfinite) }
                    ?? DiffEditSupport.emptyPromptEmbedding(folder: folder), to: n, option: "--negative")
            let clean = records.first { $0.name == DiffEditIO.cleanRecord }?.tensor()

            let unet = try common.loadUNet(folder, tool: "denoise")
            var options = MaskedDenoising.Options()
            options.steps = useSteps
            options.strength = useStrength
            options.guidance = guidance
            options.blend = blend
            options.eta = eta
            var dn = MaskedDenoising(unet: unet, scheduler: try kind.denoising(folder: folder), options: options)
            let report = ProgressReporter(tool: "denoise", quiet: common.quiet, force: common.progress)
            let r = try dn.denoise(inverted: stackRec.tensor(), mask: maskRec.tensor(), prompt: p, negative: neg,
                                   clean: clean, generator: TorchGenerator(seed: seed), progress: report)
            var meta = DiffEditIO.provenance(folder)
            meta["steps"] = "\(useSteps)"
            meta["strength"] = "\(useStrength)"
            meta["guidance"] = "\(guidance)"
            meta["blend"] = blend.rawValue
            meta[SchedulerOption.metadataKey] = kind.rawValue
            if eta > 0 { (meta["eta"], meta["seed"]) = ("\(eta)", "\(seed)") }
            for k in ["image.width", "image.height"] { if let v = stackRec.metadata[k] { meta[k] = v } }
            try out.write(TensorRecord(name: DiffEditIO.latentsRecord, tensor: r.latents, metadata: meta))
            try out.flush()
        }
    }
}
