import ArgumentParser
import DiffEditCore
import DiffEditCLI

/// invert's own numeric options (the regulariser's; diffusers' defaults, bounded so that a run
/// stays within minutes: one regularisation step costs about as much as `rolls` auto-correlation
/// gradients of the latent).
private enum Numbers {
    static let regSteps = NumberOption<Int>("--reg-steps", .from(0, to: 100))
    static let lambdaAutoCorr = NumberOption<Float>("--lambda-auto-corr", .from(0, to: 1000))
    static let lambdaKl = NumberOption<Float>("--lambda-kl", .from(0, to: 1000))
    static let autoCorrRolls = NumberOption<Int>("--auto-corr-rolls", .from(0, to: 100))
}

/// invert: DDIM inversion of an image latent under its caption, every step kept
/// (diffusers' StableDiffusionDiffEditPipeline.invert); with --method ledits, LEDITS++'s
/// edit-friendly DDPM inversion (LEditsPPPipelineStableDiffusion.invert). See invert(1).
@main
struct Invert: DiffEditTool {
    static let configuration = CommandConfiguration(
        commandName: "invert",
        abstract: "DDIM-invert an image latent under its caption; write every intermediate latent (--method ledits: LEDITS++'s edit-friendly inversion).",
        discussion: "Reads vae-encode's posterior on stdin, writes the stack [N, T, 4, h, w] noisiest first (record inverted) and the clean latent (record inverted.clean); with --method ledits x_T (record ledits.start) and the noise maps [N, T, 4, h, w] (record ledits.noise). See invert(1).",
        version: CLI.version)

    @Option(name: .long, help: "Embeddings of the caption of the image (the source caption; required for diffedit, optional for ledits: without it no guidance).")
    var prompt: String?
    @Option(name: .long, help: "Negative embeddings (default: the model's negative_prompt in diffedit_defaults.json, else the empty prompt).")
    var negative: String?
    @Option(StageNumbers.steps, "Inference steps of the schedule (ledits: num_inversion_steps, the steps inverted and edited)", defaultText: "the model's diffedit_defaults.json, else 50; ledits: its section ledits, else 30")
    var steps: Int?
    @Option(StageNumbers.strength, "Fraction of the schedule to invert (inpaint_strength; diffedit only)", defaultText: "the model's diffedit_defaults.json, else 0.8")
    var strength: Double?
    @Option(StageNumbers.guidance, StageNumbers.guidanceAbstract + " (ledits: source_guidance_scale, used with --prompt only)", defaultText: "the model's diffedit_defaults.json, else 7.5; ledits: its section ledits, else 3.5")
    var guidance: Float?
    @Option(LEditsNumbers.skip, "Fraction of int(steps × (1 + skip)) scheduler steps left out at the noisy end (ledits only)", defaultText: "the model's diffedit_defaults.json section ledits, else 0.15")
    var skip: Double?
    @Option(StageNumbers.seed, "Seed of the torch CPU generator (posterior sample, then the regulariser's rolls; ledits: the noised latents).")
    var seed: UInt64 = 0
    @Option(Numbers.regSteps, "Regularisation steps per inversion step (num_reg_steps; 0 = off; diffedit only).", default: 0)
    var regSteps: Int?
    @Option(Numbers.lambdaAutoCorr, "Weight of the auto-correlation loss (diffedit only).", default: 20)
    var lambdaAutoCorr: Float?
    @Option(Numbers.lambdaKl, "Weight of the KL divergence loss (diffedit only).", default: 20)
    var lambdaKl: Float?
    @Option(Numbers.autoCorrRolls, "Auto-correlation gradient steps per regularisation step (diffedit only).", default: 5)
    var autoCorrRolls: Int?
    @OptionGroup var methodOption: MethodOption
    @OptionGroup var schedulerOption: SchedulerOption
    @OptionGroup var common: StageOptions
    @OptionGroup var deepCacheOption: DeepCacheOption
    @Argument(help: "Posterior from vae-encode (default or '-': stdin).")
    var input: String?

    /// DiffEdit needs the source caption (ArgumentParser's own words, status 64, as when the
    /// option was required).
    func validate() throws {
        if methodOption.method == .diffedit && prompt == nil {
            throw ValidationError("Missing expected argument '--prompt <prompt>'")
        }
    }

    func run() throws {
        try CLI.run(Self.toolName) {
            let run = try StageRun(Self.toolName, common, input: input, expecting: "the image posterior from vae-encode")
            try methodOption.refuse([("--strength", strength != nil), ("--reg-steps", regSteps != nil),
                                     ("--lambda-auto-corr", lambdaAutoCorr != nil), ("--lambda-kl", lambdaKl != nil),
                                     ("--auto-corr-rolls", autoCorrRolls != nil), ("--deep-cache", deepCacheOption.deepCache != 1)],
                                    only: .diffedit, tool: Self.toolName)
            try methodOption.refuse([("--skip", skip != nil)], only: .ledits, tool: Self.toolName)
            if methodOption.method == .ledits { return try runLEdits(run) }
            let (regSteps, lambdaAutoCorr, lambdaKl, autoCorrRolls) = (regSteps ?? 0, lambdaAutoCorr ?? 20, lambdaKl ?? 20, autoCorrRolls ?? 5)
            let (meanRec, stdRec) = try DiffEditIO.posterior(run.records, label: run.inputLabel)
            try run.checkModel(meanRec, "the posterior")
            let n = meanRec.shape[0]
            let p = try run.embeddings(prompt!, option: "--prompt", images: n)
            let neg = try run.negative(negative, option: "--negative", images: n)
            var options = DiffEditInversion.Options()
            options.steps = run.pick(steps, \.steps, "steps", builtIn: 50)
            options.strength = run.pick(strength, \.strength, "strength", builtIn: 0.8)
            options.guidance = run.pick(guidance, \.guidance, "guidance", builtIn: 7.5)
            options.regularizer = InversionRegularizer(steps: regSteps, lambdaAutoCorr: lambdaAutoCorr,
                                                       lambdaKL: lambdaKl, rolls: autoCorrRolls)
            options.deepCache = deepCacheOption.deepCache

            // diffusers: latent_dist.sample(generator) × scaling_factor, the generator's first draw.
            let generator = TorchGenerator(seed: seed)
            let latents: Tensor
            if let stdRec {
                let mean = meanRec.tensor()
                latents = DiagonalGaussian(mean: mean, std: stdRec.tensor()).sample(noise: generator.randn(count: mean.count))
            } else {
                latents = meanRec.tensor()  // already sampled (vae-encode --sample)
            }
            try StageMemory.requireInvert(folder: run.folder, latents: meanRec.shape, embeddings: p.shape,
                                          steps: options.steps, guidance: options.guidance)
            let kind = schedulerOption.scheduler ?? .ddim
            let scheduler = try kind.inversion(folder: run.folder)
            var inversion = DiffEditInversion(unet: try run.loadUNet(), scheduler: scheduler, options: options)
            let r = try inversion.invert(latents: latents, prompt: p, negative: neg, generator: generator, progress: run.progress)

            let stack = StackInfo(scheduler: kind, steps: options.steps, strength: options.strength,
                                  timestepsNoisiestFirst: r.timesteps.reversed(), folder: run.folder,
                                  predictionType: scheduler.predictionType)
            var meta = stack.metadata
            meta[MetadataKey.guidance] = "\(options.guidance)"
            meta[MetadataKey.seed] = "\(seed)"
            meta["reg_steps"] = "\(regSteps)"
            if regSteps > 0 {
                meta["lambda_auto_corr"] = "\(lambdaAutoCorr)"
                meta["lambda_kl"] = "\(lambdaKl)"
                meta["auto_corr_rolls"] = "\(autoCorrRolls)"
            }
            meta["sampled"] = stdRec == nil ? "input" : "posterior"
            meta.merge(deepCacheOption.metadata) { $1 }
            let clean = [MetadataKey.seed: "\(seed)",
                         "note": "the posterior sample the inversion started from (x0), for denoise --blend paper"]
            try run.write(TensorRecord(name: RecordName.inverted, tensor: r.inverted, metadata: run.metadata(meta, carryingImageSizeOf: meanRec)),
                          TensorRecord(name: RecordName.invertedClean, tensor: latents, metadata: DiffEditIO.provenance(run.folder).merging(clean) { $1 }))
        }
    }

    /// --method ledits: LEDITS++'s edit-friendly inversion from the posterior's mean.
    func runLEdits(_ run: StageRun) throws {
        let meanRec = try DiffEditIO.pick(run.records, RecordName.posteriorMean, option: run.inputLabel, what: "the image posterior from vae-encode")
        guard meanRec.name == RecordName.posteriorMean, meanRec.rank == 4 else {
            throw ToolError("\(run.inputLabel) holds \(run.records.map(\.name).joined(separator: ", ")); --method ledits starts from the posterior's mean (diffusers' latent_dist.mode()) — pipe in vae-encode's output, without --sample")
        }
        try run.checkModel(meanRec, "the posterior")
        let n = meanRec.shape[0]
        let source = try prompt.map { try run.embeddings($0, option: "--prompt", images: n) }
        let neg = try run.negative(negative, option: "--negative", images: n)
        var options = EditFriendlyInversion.Options()
        options.steps = run.settings.pickLEdits(steps, \.steps, "steps", builtIn: LEditsNumbers.defaultSteps)
        options.skip = run.settings.pickLEdits(skip, \.skip, "skip", builtIn: LEditsNumbers.defaultSkip)
        options.guidance = run.settings.pickLEdits(guidance, \.sourceGuidance, "source guidance", builtIn: LEditsNumbers.defaultSourceGuidance)
        let kind = schedulerOption.scheduler ?? .ddim
        var scheduler = try LEditsScheduler(kind, folder: run.folder)
        _ = try scheduler.schedule(steps: options.steps, skip: options.skip)  // refuses a schedule that does not fit before the UNet loads
        // Two UNet passes of N latents per step with a source caption (as DiffEdit's guided batch).
        try StageMemory.requireInvert(folder: run.folder, latents: meanRec.shape, embeddings: neg.shape,
                                      steps: options.steps, guidance: 1)
        var inversion = EditFriendlyInversion(unet: try run.loadUNet(), scheduler: scheduler, options: options)
        let r = try inversion.invert(x0: meanRec.tensor(), source: source, negative: neg,
                                     generator: TorchGenerator(seed: seed), progress: run.progress)
        let stack = LEditsStack(scheduler: kind, steps: options.steps, skip: options.skip, totalSteps: r.totalSteps,
                                timesteps: r.timesteps, folder: run.folder, predictionType: scheduler.predictionType)
        var meta = stack.metadata
        meta[MetadataKey.seed] = "\(seed)"
        meta["source"] = source == nil ? "none (source_prompt \"\", no guidance)" : "--prompt"
        if source != nil { meta[MetadataKey.guidance] = "\(options.guidance)" }
        let m = run.metadata(meta, carryingImageSizeOf: meanRec)
        try run.write(TensorRecord(name: RecordName.leditsStart, tensor: r.start, metadata: m),
                      TensorRecord(name: RecordName.leditsNoise, tensor: r.noise, metadata: m))
    }
}
