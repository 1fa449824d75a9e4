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
    @Option(StageNumbers.steps, "Inference steps of the schedule", defaultText: "the model's diffedit_defaults.json, else 50")
    var steps: Int?
    @Option(StageNumbers.strength, "Fraction of the schedule to invert (inpaint_strength)", defaultText: "the model's diffedit_defaults.json, else 0.8")
    var strength: Double?
    @Option(StageNumbers.guidance, StageNumbers.guidanceAbstract, defaultText: "the model's diffedit_defaults.json, else 7.5")
    var guidance: Float?
    @Option(StageNumbers.seed, "Seed of the torch CPU generator (posterior sample, then the regulariser's rolls).")
    var seed: UInt64 = 0
    @Option(Numbers.regSteps, "Regularisation steps per inversion step (num_reg_steps; 0 = off).")
    var regSteps = 0
    @Option(Numbers.lambdaAutoCorr, "Weight of the auto-correlation loss.")
    var lambdaAutoCorr: Float = 20
    @Option(Numbers.lambdaKl, "Weight of the KL divergence loss.")
    var lambdaKl: Float = 20
    @Option(Numbers.autoCorrRolls, "Auto-correlation gradient steps per regularisation step.")
    var autoCorrRolls = 5
    @OptionGroup var schedulerOption: SchedulerOption
    @OptionGroup var common: StageOptions
    @Argument(help: "Posterior from vae-encode (default or '-': stdin).")
    var input: String?

    func run() throws {
        try CLI.run(Self.toolName) {
            let run = try StageRun(Self.toolName, common, input: input, expecting: "the image posterior from vae-encode")
            let (meanRec, stdRec) = try DiffEditIO.posterior(run.records, label: run.inputLabel)
            try run.checkModel(meanRec, "the posterior")
            let n = meanRec.shape[0]
            let p = try run.embeddings(prompt, option: "--prompt", images: n)
            let neg = try run.negative(negative, option: "--negative", images: n)
            var options = DiffEditInversion.Options()
            options.steps = run.pick(steps, \.steps, "steps", builtIn: 50)
            options.strength = run.pick(strength, \.strength, "strength", builtIn: 0.8)
            options.guidance = run.pick(guidance, \.guidance, "guidance", builtIn: 7.5)
            options.regularizer = InversionRegularizer(steps: regSteps, lambdaAutoCorr: lambdaAutoCorr,
                                                       lambdaKL: lambdaKl, rolls: autoCorrRolls)

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
            let clean = [MetadataKey.seed: "\(seed)",
                         "note": "the posterior sample the inversion started from (x0), for denoise --blend paper"]
            try run.write(TensorRecord(name: RecordName.inverted, tensor: r.inverted, metadata: run.metadata(meta, carryingImageSizeOf: meanRec)),
                          TensorRecord(name: RecordName.invertedClean, tensor: latents, metadata: DiffEditIO.provenance(run.folder).merging(clean) { $1 }))
        }
    }
}
