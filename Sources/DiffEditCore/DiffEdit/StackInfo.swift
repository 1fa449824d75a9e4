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
        [MetadataKey.scheduler: scheduler.rawValue,
         MetadataKey.steps: "\(steps)",
         MetadataKey.strength: "\(strength)",
         MetadataKey.timesteps: StackSchedule.format(timesteps),
         "order": "noisiest first",
         MetadataKey.schedulerFingerprint: schedulerFingerprint,
         MetadataKey.predictionType: predictionType.rawValue]
    }
}
