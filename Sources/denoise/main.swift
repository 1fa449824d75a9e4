import ArgumentParser
import DiffEditCore
import DiffEditCLI

extension MaskedDenoising.Blend: ExpressibleByArgument {}

/// denoise: masked DDIM decoding of an inverted stack under the target caption
/// (diffusers' StableDiffusionDiffEditPipeline.__call__); with --method ledits, LEDITS++'s edit
/// of its stack by semantic guidance (LEditsPPPipelineStableDiffusion.__call__). See denoise(1).
@main
struct Denoise: DiffEditTool {
    static let configuration = CommandConfiguration(
        commandName: "denoise",
        abstract: "Decode an inverted stack under the target caption, editing only inside the mask (--method ledits: LEDITS++'s semantic guidance per concept).",
        discussion: "Reads invert's output on stdin, writes the edited latents [N, 4, h, w] (record latents) for vae-decode. See denoise(1).",
        version: CLI.version)

    @Option(name: .long, help: "The mask: noise-diff-mask's (latent size), or a grey PGM/PBM of any size (white = edit; area average to the latent grid, then 0.5 or more = edit); required for diffedit; ledits: an optional user mask multiplying every concept's guidance.")
    var mask: String?
    @Option(name: .long, help: "Embeddings of the target caption (diffedit only; required there).")
    var prompt: String?
    @Option(name: .long, help: "Negative embeddings: the source caption (default: the model's negative_prompt in diffedit_defaults.json, else the empty prompt); ledits: the unconditional embedding.")
    var negative: String?
    @Option(StageNumbers.steps, "Inference steps (diffedit only)", defaultText: "the stack's, from invert")
    var steps: Int?
    @Option(StageNumbers.strength, "Strength (diffedit only)", defaultText: "the stack's, from invert")
    var strength: Double?
    @Option(StageNumbers.guidance, StageNumbers.guidanceAbstract + " (diffedit only; ledits: --edit-guidance)", defaultText: "the model's diffedit_defaults.json, else 7.5")
    var guidance: Float?
    @Option(name: .long, help: "Background blending: diffusers or paper (default: the model's diffedit_defaults.json, else diffusers; diffedit only).")
    var blend: MaskedDenoising.Blend?
    @Option(StageNumbers.dilate, "Dilate the mask by this many latent cells (diagonals included; diffedit only)", default: 0)
    var dilate: Int?
    @Option(StageNumbers.eta, "DDIM's eta: 0 deterministic, 1 DDPM-like; noise drawn from --seed (--scheduler ddim, diffedit only)", default: 0)
    var eta: Float?
    @Option(StageNumbers.seed, "Seed of the torch CPU generator (the noise of --eta > 0; diffedit only).", default: 0)
    var seed: UInt64?
    @Option(name: .long, help: "ledits: embeddings of one edit concept [1, 77, D] (an editing prompt); repeat the option for each concept.")
    var edit: [String] = []
    @Option(editDirectionHelp: "ledits: add or remove, per concept (a comma list in the order of --edit) or one for all (default: add).")
    var editDirection: [EditDirection]?
    @Option(LEditsNumbers.editGuidanceList, "ledits: guidance scale per concept (edit_guidance_scale), a comma list or one value for all", defaultText: "the model's diffedit_defaults.json section ledits, else 5")
    var editGuidance: [Float]?
    @Option(LEditsNumbers.editThresholdList, "ledits: mask threshold per concept (edit_threshold, the quantile; the top 1 − threshold of the picture is edited), a comma list or one value for all", defaultText: "the model's diffedit_defaults.json section ledits, else 0.9")
    var editThreshold: [Float]?
    @Option(LEditsNumbers.editWarmupList, "ledits: steps without guidance at the start, per concept (edit_warmup_steps), a comma list or one value for all", defaultText: "the model's diffedit_defaults.json section ledits, else 0")
    var editWarmup: [Int]?
    @Option(LEditsNumbers.editCooldownList, "ledits: the step from which a concept stops guiding, per concept (edit_cooldown_steps), a comma list or one value for all", defaultText: "none: to the end")
    var editCooldown: [Int]?
    @Option(name: .customLong("ledits-mask"), help: ArgumentHelp("ledits: intersect (cross-attention mask ∩ noise mask where t ≤ 800, diffusers' default), attention (cross-attention mask only) or noise (noise mask only).", valueName: "intersect|attention|noise"))
    var leditsMask: LEditsMaskMode = .intersect
    @Option(attentionGridHelp: "ledits: the query grid of the cross-attention maps, rows x columns (default: the model's diffedit_defaults.json section ledits, else diffusers' quarter of the latent, int(h/4) x int(w/4)).")
    var attentionGrid: AttentionGridOption?
    @Option(name: .customLong("masks-output"), help: "ledits: also write the masks applied per step and concept [T, C, 4, h, w] (record masks; [T, C, N, 4, h, w] for N images) and their union [N, 1, h, w] (record mask) to this file.")
    var masksOutput: String?
    @OptionGroup var methodOption: MethodOption
    @OptionGroup var schedulerOption: SchedulerOption
    @OptionGroup var common: StageOptions
    @OptionGroup var deepCacheOption: DeepCacheOption
    @Argument(help: "The inverted stack from invert (default or '-': stdin).")
    var input: String?

    /// DiffEdit needs the mask and the target caption; LEDITS++ at least one concept (ArgumentParser's
    /// own words and status 64, as when the options were required).
    func validate() throws {
        switch methodOption.method {
        case .diffedit:
            if mask == nil { throw ValidationError("Missing expected argument '--mask <mask>'") }
            if prompt == nil { throw ValidationError("Missing expected argument '--prompt <prompt>'") }
        case .ledits:
            if edit.isEmpty { throw ValidationError("Missing expected argument '--edit <edit>' (--method ledits: one per concept)") }
        }
    }

    func run() throws {
        try CLI.run(Self.toolName) {
            let run = try StageRun(Self.toolName, common, input: input, expecting: "the inverted stack from invert")
            try methodOption.refuse([("--prompt", prompt != nil), ("--steps", steps != nil), ("--strength", strength != nil),
                                     ("--guidance", guidance != nil), ("--blend", blend != nil), ("--dilate", dilate != nil),
                                     ("--eta", eta != nil), ("--seed", seed != nil), ("--deep-cache", deepCacheOption.deepCache != 1)],
                                    only: .diffedit, tool: Self.toolName)
            try methodOption.refuse([("--edit", !edit.isEmpty), ("--edit-direction", editDirection != nil),
                                     ("--edit-guidance", editGuidance != nil), ("--edit-threshold", editThreshold != nil),
                                     ("--edit-warmup", editWarmup != nil), ("--edit-cooldown", editCooldown != nil),
                                     ("--ledits-mask", leditsMask != .intersect), ("--attention-grid", attentionGrid != nil),
                                     ("--masks-output", masksOutput != nil)], only: .ledits, tool: Self.toolName)
            try LEditsStack.refuseOtherMethod(run.records, running: methodOption.method.rawValue, label: run.inputLabel)
            if methodOption.method == .ledits { return try runLEdits(run) }
            let (mask, prompt, dilate, eta, seed) = (mask!, prompt!, dilate ?? 0, eta ?? 0, seed ?? 0)
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
            options.deepCache = deepCacheOption.deepCache
            try StageMemory.requireDenoise(folder: run.folder, stack: stackRec.shape, embeddings: p.shape, guidance: options.guidance)
            var stage = MaskedDenoising(unet: try run.loadUNet(), scheduler: try stack.scheduler.denoising(folder: run.folder), options: options)
            let r = try stage.denoise(inverted: stackRec.tensor(), mask: maskTensor, prompt: p, negative: neg,
                                      clean: clean, generator: TorchGenerator(seed: seed), progress: run.progress)
            var meta = [MetadataKey.steps: "\(stack.steps)", MetadataKey.strength: "\(stack.strength)",
                        MetadataKey.guidance: "\(options.guidance)", "blend": options.blend.rawValue,
                        MetadataKey.scheduler: stack.scheduler.rawValue]
            if dilate > 0 { meta["mask.dilate"] = "\(dilate)" }
            if eta > 0 { (meta["eta"], meta[MetadataKey.seed]) = ("\(eta)", "\(seed)") }
            meta.merge(deepCacheOption.metadata) { $1 }
            try run.write(TensorRecord(name: RecordName.latents, tensor: r.latents, metadata: run.metadata(meta, carryingImageSizeOf: stackRec)))
        }
    }

    /// --method ledits: the LEDITS++ edit of invert --method ledits's stack.
    func runLEdits(_ run: StageRun) throws {
        let label = run.inputLabel
        if attentionGrid != nil && !leditsMask.usesAttention {
            throw ToolError("--attention-grid chooses the cross-attention maps, which --ledits-mask noise does not read — drop --attention-grid, or use --ledits-mask intersect or attention")
        }
        let masksFile = try masksOutput.map {
            try SideOutput(path: $0, option: "--masks-output", inputs: [input ?? "-", negative, mask].compactMap { $0 } + edit)
        }
        let startRec = try DiffEditIO.pick(run.records, RecordName.leditsStart, option: label, what: "invert --method ledits's output")
        guard let noiseRec = run.records.first(where: { $0.name == RecordName.leditsNoise }), startRec.name == RecordName.leditsStart else {
            throw ToolError("\(label) holds \(run.records.map(\.name).joined(separator: ", ")); expected the LEDITS++ stack (records ledits.start and ledits.noise) — pipe in invert --method ledits's output")
        }
        try run.checkModel(noiseRec, "the LEDITS++ stack")
        let stack = try LEditsStack.read(start: startRec, noise: noiseRec, folder: run.folder,
                                         scheduler: schedulerOption.scheduler, label: label)
        let n = startRec.shape[0], h = startRec.shape[2], w = startRec.shape[3]
        // The concepts: one embedding each, [1, L, D].
        var rows: [Tensor] = []
        for path in edit {
            let e = try DiffEditIO.embeddings(path, folder: run.folder, option: "--edit", allowNonfinite: common.allowNonfinite)
            guard e.shape[0] == 1 else {
                throw ToolError("--edit \(path) holds \(e.shape[0]) prompts; each --edit is one concept [1, 77, D] — encode one prompt per file and repeat --edit")
            }
            if let first = rows.first, first.shape != e.shape {
                throw ToolError("--edit \(path) has shape \(e.shape), the first --edit \(first.shape) — encode every concept with the same model and tokenizer length")
            }
            rows.append(e)
        }
        let concepts = Tensor.concat(batch: rows)
        let c = rows.count
        let neg = try run.negative(negative, option: "--negative", images: n)
        let s = run.settings
        let directions = try editDirection.map { d -> [EditDirection] in
            if d.count == 1 { return Array(repeating: d[0], count: c) }
            guard d.count == c else {
                throw ToolError("--edit-direction lists \(d.count) directions for \(c) concept\(c == 1 ? "" : "s") (--edit given \(c) time\(c == 1 ? "" : "s")) — give one for all, or one per concept in the order of --edit")
            }
            return d
        } ?? Array(repeating: .add, count: c)
        let scales = try LEditsNumbers.editGuidanceList.values(editGuidance, count: c)
            ?? Array(repeating: s.pickLEdits(nil, \.editGuidance, "edit guidance", builtIn: LEditsNumbers.defaultEditGuidance), count: c)
        let thresholds = try LEditsNumbers.editThresholdList.values(editThreshold, count: c)
            ?? Array(repeating: s.pickLEdits(nil, \.editThreshold, "edit threshold", builtIn: LEditsNumbers.defaultEditThreshold), count: c)
        let warmups = try LEditsNumbers.editWarmupList.values(editWarmup, count: c)
            ?? Array(repeating: s.pickLEdits(nil, \.editWarmup, "edit warmup", builtIn: LEditsNumbers.defaultEditWarmup), count: c)
        let cooldowns: [Int?] = try LEditsNumbers.editCooldownList.values(editCooldown, count: c) ?? Array(repeating: nil, count: c)
        var options = LEditsDenoising.Options()
        options.mode = leditsMask
        options.concepts = (0..<c).map { k in
            EditConcept(remove: directions[k] == .remove, scale: scales[k], threshold: thresholds[k], warmup: warmups[k], cooldown: cooldowns[k])
        }
        let picture = [startRec.metadata[MetadataKey.imageWidth], startRec.metadata[MetadataKey.imageHeight]].compactMap { $0.flatMap(Int.init) }
        let userMask = try mask.map {
            try MaskImport.load($0, folder: run.folder, latentHeight: h, latentWidth: w,
                                pictureSize: picture.count == 2 ? (picture[0], picture[1]) : nil, allowNonfinite: common.allowNonfinite)
        }
        if let userMask, !(userMask.shape[0] == 1 || userMask.shape[0] == n) || userMask.rank != 4 || userMask.shape[1] != 1 {
            throw ToolError("--mask holds \(userMask.shape) masks for \(n) images — give one mask, or one per image, of one channel")
        }
        // The grid: the command line's, else the model's file's (section ledits), else diffusers'.
        var gridGiven = attentionGrid.map { ($0.height, $0.width) }
        var gridSource = "--attention-grid"
        if gridGiven == nil, leditsMask.usesAttention, let text = s.defaults.ledits?.attentionGridText {
            gridGiven = LEditsNumbers.grid(s.pickLEdits(nil, \.attentionGridText, "attention grid", builtIn: text))
            gridSource = "the attention grid of \(s.defaults.path ?? ModelDefaults.fileName) (section ledits)"
        }
        let unet = try run.loadUNet()
        let grid = leditsMask.usesAttention
            ? try LEditsDenoising.attentionGrid(gridGiven, givenAs: gridSource, unet: unet, latentHeight: h, latentWidth: w) : nil
        try StageMemory.requireLEditsDenoise(folder: run.folder, stack: noiseRec.shape, embeddings: concepts.shape, concepts: c)
        var stage = LEditsDenoising(unet: unet, attentionGrid: grid,
                                    scheduler: try LEditsScheduler(stack.scheduler, folder: run.folder), options: options)
        let r = try stage.denoise(start: startRec.tensor(), noise: noiseRec.tensor(), timesteps: stack.timesteps,
                                  totalSteps: stack.totalSteps, concepts: concepts, negative: neg, userMask: userMask,
                                  progress: run.progress)
        var meta = [LEditsStack.methodKey: LEditsStack.method, MetadataKey.scheduler: stack.scheduler.rawValue,
                    MetadataKey.steps: "\(stack.steps)", LEditsStack.skipKey: "\(stack.skip)",
                    "ledits.mask": leditsMask.rawValue, "concepts": "\(c)",
                    "edit.direction": directions.map(\.rawValue).joined(separator: ","),
                    "edit.guidance": scales.map { "\($0)" }.joined(separator: ","),
                    "edit.threshold": thresholds.map { "\($0)" }.joined(separator: ","),
                    "edit.warmup": warmups.map(String.init).joined(separator: ",")]
        if editCooldown != nil { meta["edit.cooldown"] = cooldowns.map { $0.map(String.init) ?? "none" }.joined(separator: ",") }
        if let grid { meta["attention.grid"] = "\(grid.height)x\(grid.width)" }
        if mask != nil { meta["user_mask"] = "--mask" }
        if let masksFile {
            // masks: activation_mask as diffusers keeps it; mask: their union over the steps,
            // concepts and channels, one 0/1 mask per image [N, 1, h, w] (what denoise --mask,
            // composite and tensor take as noise-diff-mask's).
            let masks = n == 1 ? r.masks.reshaped([r.masks.shape[0], c] + Array(r.masks.shape[3...])) : r.masks
            var union = [Float](repeating: 0, count: n * h * w)
            let plane = h * w, inner = r.masks.shape[3] * plane
            for (k, v) in r.masks.data.enumerated() where v != 0 {
                let image = (k / inner) % n
                union[image * plane + k % plane] = 1
            }
            var maskMeta = run.metadata(meta, carryingImageSizeOf: startRec)
            maskMeta["timesteps"] = StackSchedule.format(stack.timesteps)
            var unionMeta = maskMeta
            unionMeta["note"] = "the union of the masks applied over every step and concept (record masks: each)"
            (unionMeta[MetadataKey.latentHeight], unionMeta[MetadataKey.latentWidth]) = ("\(h)", "\(w)")
            try masksFile.write(TensorRecord(name: RecordName.mask, tensor: Tensor(shape: [n, 1, h, w], data: union), metadata: unionMeta),
                                TensorRecord(name: "masks", tensor: masks, metadata: maskMeta))
        }
        try run.write(TensorRecord(name: RecordName.latents, tensor: r.latents, metadata: run.metadata(meta, carryingImageSizeOf: startRec)))
    }
}
