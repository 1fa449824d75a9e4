/// What an inversion promises the denoising: invert writes it as the stack's metadata, denoise
/// reads it back and checks it here, in one place — the scheduler to retrace, the schedule's
/// steps and strength (diffusers raises when they disagree, #5465), the timesteps the stack
/// passed through, and the scheduler config it was made with.
public struct StackInfo: Equatable, Sendable {
    public var scheduler: SchedulerKind
    public var steps: Int
    public var strength: Double
    /// Noisiest first, as the stack holds its latents.
    public var timesteps: [Int]
    /// DiffEditSupport.schedulerFingerprint of the model's scheduler config.
    public var schedulerFingerprint: String
    public var predictionType: PredictionType

    public init(scheduler: SchedulerKind, steps: Int, strength: Double, timestepsNoisiestFirst timesteps: [Int],
                folder: ModelFolder, predictionType: PredictionType) {
        self.scheduler = scheduler
        self.steps = steps
        self.strength = strength
        self.timesteps = timesteps
        schedulerFingerprint = DiffEditSupport.schedulerFingerprint(folder)
        self.predictionType = predictionType
    }

    /// The stack's metadata (with the model's provenance added by the writer).
    public var metadata: [String: String] {
        [LEditsStack.methodKey: LEditsStack.diffEditMethod,
         MetadataKey.scheduler: scheduler.rawValue,
         MetadataKey.steps: "\(steps)",
         MetadataKey.strength: "\(strength)",
         MetadataKey.timesteps: StackSchedule.format(timesteps),
         "order": "noisiest first",
         MetadataKey.schedulerFingerprint: schedulerFingerprint,
         MetadataKey.predictionType: predictionType.rawValue]
    }
}

extension StackInfo {
    /// What denoise runs for the stack `record` (invert's [N, T, 4, h, w]): its recorded
    /// schedule, checked against the model `folder` and against the options given (nil: not
    /// given; each given one must agree with the stack's). A stack without a scheduler key was
    /// inverted before the option existed, or lost its metadata: it takes the given scheduler,
    /// else DDIM — and its recorded timesteps then tell a DPM stack from a DDIM one
    /// (StackSchedule.check).
    public static func read(_ record: TensorRecord, folder: ModelFolder, scheduler given: SchedulerKind?,
                            steps givenSteps: Int?, strength givenStrength: Double?) throws -> StackInfo {
        let meta = record.metadata
        if let method = meta[LEditsStack.methodKey], method != LEditsStack.diffEditMethod {
            throw ToolError(method == LEditsStack.method
                ? "the stack was inverted for LEDITS++ (invert --method ledits) — denoise it with --method ledits"
                : "the stack says method=\(method.prefix(40)), not diffedit — it was not written by invert; invert again")
        }
        let fingerprint = DiffEditSupport.schedulerFingerprint(folder)
        if let fp = meta[MetadataKey.schedulerFingerprint], fp != fingerprint {
            throw ToolError("the inverted stack was made with another scheduler config (\(meta[MetadataKey.model] ?? "?")) — invert again with --model \(folder.root)")
        }
        var kind = given ?? .ddim
        if let recorded = meta[MetadataKey.scheduler] {
            guard let stackKind = SchedulerKind(rawValue: recorded) else {
                throw ToolError("the inverted stack names scheduler '\(recorded)', which this denoise does not know — invert again with --scheduler ddim or dpm")
            }
            if let given, given != stackKind {
                throw ToolError("--scheduler \(given.rawValue) differs from the scheduler the stack was inverted with (\(stackKind.rawValue)) — the denoising must retrace the inversion; drop --scheduler or invert again with --scheduler \(given.rawValue)")
            }
            kind = stackKind
        }
        // Steps and strength come from invert; explicit options must agree (diffusers #5465).
        let damaged = "the stack is damaged or was not written by invert; invert again"
        let stackSteps = try meta[MetadataKey.steps].map { try StageNumbers.steps.parse($0, subject: "the stack's metadata steps=", remedy: damaged) }
        let stackStrength = try meta[MetadataKey.strength].map { try StageNumbers.strength.parse($0, subject: "the stack's metadata strength=", remedy: damaged) }
        if let givenSteps, let stackSteps, givenSteps != stackSteps {
            throw ToolError("--steps \(givenSteps) differs from the \(stackSteps) steps the stack was inverted with — the denoising schedule must retrace the inversion; drop --steps or invert again with --steps \(givenSteps)")
        }
        if let givenStrength, let stackStrength, givenStrength != stackStrength {
            throw ToolError("--strength \(givenStrength) differs from the strength \(stackStrength) the stack was inverted with — drop --strength or invert again with --strength \(givenStrength)")
        }
        guard let steps = givenSteps ?? stackSteps, let strength = givenStrength ?? stackStrength else {
            throw ToolError("the stack has no steps/strength metadata (not written by invert) — give --steps and --strength as used for the inversion")
        }
        try StackSchedule.check(metadata: meta, count: record.shape[1], kind: kind, schedulerGiven: given != nil,
                                steps: steps, strength: strength, folder: folder)
        let timesteps = try StackSchedule.timesteps(kind, folder: folder, steps: steps, strength: strength)
        let predictionType = try kind.inversion(folder: folder).predictionType
        var info = StackInfo(scheduler: kind, steps: steps, strength: strength, timestepsNoisiestFirst: timesteps,
                             folder: folder, predictionType: predictionType)
        info.schedulerFingerprint = fingerprint
        return info
    }
}
