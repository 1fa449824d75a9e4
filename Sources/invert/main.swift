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
/// (diffusers' StableDiffusionDiffEditPipeline.invert). See invert(1).
@main
struct Invert: DiffEditTool {
    static let configuration = CommandConfiguration(
        commandName: "invert",
        abstract: "DDIM-invert an image latent under its caption; write every intermediate latent.",
        discussion: "Reads vae-encode's posterior on stdin, writes the stack [N, T, 4, h, w] noisiest first (record inverted) and the clean latent (record inverted.clean). See invert(1).",
        version: CLI.version)

    @Option(name: .long, help: "Embeddings of the caption of the image (the source caption).")
    var prompt: String
    @Option(name: .long, help: "Negative embeddings (default: the model's negative_prompt in diffedit_defaults.json, else the empty prompt).")
    var negative: String?
    @Option(name: .long, parsing: .unconditional, help: StageNumbers.steps.help("Inference steps of the schedule", defaultText: "the model's diffedit_defaults.json, else 50"),
            transform: StageNumbers.steps.transform)
    var steps: Int?
    @Option(name: .long, parsing: .unconditional, help: StageNumbers.strength.help("Fraction of the schedule to invert (inpaint_strength)", defaultText: "the model's diffedit_defaults.json, else 0.8"),
            transform: StageNumbers.strength.transform)
    var strength: Double?
    @Option(name: .long, parsing: .unconditional, help: StageNumbers.guidance.help(StageNumbers.guidanceAbstract, defaultText: "the model's diffedit_defaults.json, else 7.5"),
            transform: StageNumbers.guidance.transform)
    var guidance: Float?
    @Option(name: .long, parsing: .unconditional, help: StageNumbers.seed.help("Seed of the torch CPU generator (posterior sample, then the regulariser's rolls).", default: 0),
            transform: StageNumbers.seed.transform)
    var seed: UInt64 = 0
    @Option(name: .long, parsing: .unconditional, help: Numbers.regSteps.help("Regularisation steps per inversion step (num_reg_steps; 0 = off).", default: 0),
            transform: Numbers.regSteps.transform)
    var regSteps = 0
    @Option(name: .long, parsing: .unconditional, help: Numbers.lambdaAutoCorr.help("Weight of the auto-correlation loss.", default: 20),
            transform: Numbers.lambdaAutoCorr.transform)
    var lambdaAutoCorr: Float = 20
    @Option(name: .long, parsing: .unconditional, help: Numbers.lambdaKl.help("Weight of the KL divergence loss.", default: 20),
            transform: Numbers.lambdaKl.transform)
    var lambdaKl: Float = 20
    @Option(name: .long, parsing: .unconditional, help: Numbers.autoCorrRolls.help("Auto-correlation gradient steps per regularisation step.", default: 5),
            transform: Numbers.autoCorrRolls.transform)
    var autoCorrRolls = 5
    @OptionGroup var schedulerOption: SchedulerOption
    @OptionGroup var common: StageOptions
    @Argument(help: "Posterior from vae-encode (default or '-': stdin).")
    var input: String?

    func run() throws {
        try CLI.run("invert") {
            let out = try CLI.tensorOutput(force: common.force)
            let reader = try CLI.tensorInput(input)
            let records = try reader.readAllNonEmpty(expecting: "the image posterior from vae-encode")
            for r in records { try r.requireFinite(from: reader.label, allow: common.allowNonfinite) }
            let (meanRec, stdRec) = try DiffEditIO.posterior(records, label: reader.label)
            let folder = try ModelFolder.resolve(common.model)
            try DiffEditIO.checkModel(meanRec, folder, option: "the posterior on stdin")
            let n = meanRec.shape[0]
            let p = try DiffEditSupport.broadcastPrompts(DiffEditIO.embeddings(prompt, folder: folder, option: "--prompt", allowNonfinite: common.allowNonfinite), to: n, option: "--prompt")
            let settings = try ModelSettings(folder: folder)
            let neg = try DiffEditSupport.broadcastPrompts(
                settings.negative(negative, option: "--negative", allowNonfinite: common.allowNonfinite), to: n, option: "--negative")
            let steps = settings.pick(self.steps, \.steps, "steps", builtIn: 50)
            let strength = settings.pick(self.strength, \.strength, "strength", builtIn: 0.8)
            let guidance = settings.pick(self.guidance, \.guidance, "guidance", builtIn: 7.5)
            settings.note("invert", common)

            // diffusers: latent_dist.sample(generator) × scaling_factor, the generator's first draw.
            let generator = TorchGenerator(seed: seed)
            let latents: Tensor
            if let stdRec {
                let mean = meanRec.tensor()
                latents = DiagonalGaussian(mean: mean, std: stdRec.tensor()).sample(noise: generator.randn(count: mean.count))
            } else {
                latents = meanRec.tensor()  // already sampled (vae-encode --sample)
            }
            try StageMemory.requireInvert(folder: folder, latents: meanRec.shape, embeddings: p.shape, steps: steps, guidance: guidance)
            let unet = try common.loadUNet(folder, tool: "invert")
            var options = DDIMInversion.Options()
            options.steps = steps
            options.strength = strength
            options.guidance = guidance
            options.regularizer = InversionRegularizer(steps: regSteps, lambdaAutoCorr: lambdaAutoCorr,
                                                       lambdaKL: lambdaKl, rolls: autoCorrRolls)
            let kind = schedulerOption.scheduler ?? .ddim
            let scheduler = try kind.inversion(folder: folder)
            var inv = DDIMInversion(unet: unet, scheduler: scheduler, options: options)
            let report = ProgressReporter(tool: "invert", quiet: common.quiet, force: common.progress)
            let r = try inv.invert(latents: latents, prompt: p, negative: neg, generator: generator, progress: report)

            var meta = DiffEditIO.provenance(folder)
            meta["steps"] = "\(steps)"
            meta["strength"] = "\(strength)"
            meta["guidance"] = "\(guidance)"
            meta["seed"] = "\(seed)"
            meta[StackSchedule.timestepsKey] = StackSchedule.format(r.timesteps.reversed())  // denoise checks it
            meta["order"] = "noisiest first"
            meta["scheduler.fingerprint"] = DiffEditSupport.schedulerFingerprint(folder)
            meta[SchedulerOption.metadataKey] = kind.rawValue  // denoise retraces it with the same scheduler
            meta["prediction_type"] = scheduler.predictionType.rawValue
            meta["reg_steps"] = "\(regSteps)"
            settings.record(into: &meta)
            if regSteps > 0 {
                meta["lambda_auto_corr"] = "\(lambdaAutoCorr)"
                meta["lambda_kl"] = "\(lambdaKl)"
                meta["auto_corr_rolls"] = "\(autoCorrRolls)"
            }
            meta["sampled"] = stdRec == nil ? "input" : "posterior"
            for k in ["image.width", "image.height"] { if let v = meanRec.metadata[k] { meta[k] = v } }
            try out.write(TensorRecord(name: DiffEditIO.invertedRecord, tensor: r.inverted, metadata: meta))
            var cleanMeta = DiffEditIO.provenance(folder)
            cleanMeta["seed"] = "\(seed)"
            cleanMeta["note"] = "the posterior sample the inversion started from (x0), for denoise --blend paper"
            try out.write(TensorRecord(name: DiffEditIO.cleanRecord, tensor: latents, metadata: cleanMeta))
            try out.flush()
        }
    }
}
