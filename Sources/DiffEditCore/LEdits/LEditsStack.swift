/// What `invert --method ledits` hands `denoise --method ledits`: the records `ledits.start` (x_T,
/// [N, 4, h, w]) and `ledits.noise` (the noise maps [N, T, 4, h, w], the first denoising step's
/// first), and on both the schedule they belong to — method=ledits, the scheduler, steps (N),
/// skip, total_steps = int(N·(1 + skip)), the timesteps (denoising order), the scheduler config's
/// fingerprint and the prediction type. denoise reads it back and checks it here, in one place.
///
/// The two methods' stacks refuse each other: DiffEdit's stack (record `inverted`) says
/// method=diffedit (StackInfo), this one method=ledits, and each denoising names the method a
/// stack was made for.
public struct LEditsStack: Equatable, Sendable {
    /// The `method` metadata values.
    public static let method = "ledits"
    public static let diffEditMethod = "diffedit"
    public static let methodKey = "method"
    public static let skipKey = "skip"
    public static let totalStepsKey = "total_steps"

    public var scheduler: SchedulerKind
    public var steps: Int
    public var skip: Double
    public var totalSteps: Int
    /// High to low, the denoising order.
    public var timesteps: [Int]
    public var schedulerFingerprint: String
    public var predictionType: PredictionType

    public init(scheduler: SchedulerKind, steps: Int, skip: Double, totalSteps: Int, timesteps: [Int],
                folder: ModelFolder, predictionType: PredictionType) {
        (self.scheduler, self.steps, self.skip, self.totalSteps, self.timesteps) = (scheduler, steps, skip, totalSteps, timesteps)
        schedulerFingerprint = DiffEditSupport.schedulerFingerprint(folder)
        self.predictionType = predictionType
    }

    /// The metadata both records carry (with the model's provenance added by the writer).
    public var metadata: [String: String] {
        [Self.methodKey: Self.method,
         MetadataKey.scheduler: scheduler.rawValue,
         MetadataKey.steps: "\(steps)",
         Self.skipKey: "\(skip)",
         Self.totalStepsKey: "\(totalSteps)",
         MetadataKey.timesteps: StackSchedule.format(timesteps),
         "order": "first denoising step first",
         MetadataKey.schedulerFingerprint: schedulerFingerprint,
         MetadataKey.predictionType: predictionType.rawValue]
    }

    /// --skip's domain: a fraction of the schedule in [0, 1) (diffusers: "skip has to be between
    /// 0 and 1").
    public static let skipOption = NumberOption<Double>("--skip", .from(0, below: 1))

    /// A stream holding DiffEdit's stack (record `inverted`) given to `denoise --method ledits`, or
    /// LEDITS++'s given to DiffEdit: one line naming the method to use. `method` is the method
    /// the caller runs; `label` names the input.
    public static func refuseOtherMethod(_ records: [TensorRecord], running method: String, label: String) throws {
        let names = Set(records.map(\.name))
        let recorded = records.compactMap { $0.metadata[methodKey] }.first
        if method == Self.method {
            if recorded == diffEditMethod || (!names.contains(RecordName.leditsStart) && names.contains(RecordName.inverted)) {
                throw ToolError("\(label) holds DiffEdit's inverted stack (invert --method diffedit) — denoise it with --method diffedit, or invert with --method ledits for a LEDITS++ edit")
            }
        } else if recorded == Self.method || (!names.contains(RecordName.inverted) && names.contains(RecordName.leditsStart)) {
            throw ToolError("\(label) holds a LEDITS++ stack (invert --method ledits) — denoise it with --method ledits, or invert with --method diffedit for a DiffEdit edit")
        }
    }

    /// The stack of `start` and `noise` (the records of invert --method ledits) checked against
    /// each other and the model `folder`; `scheduler`, when given, must be the stack's.
    public static func read(start: TensorRecord, noise: TensorRecord, folder: ModelFolder,
                            scheduler given: SchedulerKind?, label: String) throws -> LEditsStack {
        let meta = noise.metadata
        let damaged = "the stack is damaged or was not written by invert --method ledits; invert again"
        guard meta[methodKey] == method else {
            throw ToolError("\(label): record \(noise.name) says method=\(meta[methodKey] ?? "(none)"), not \(method) — \(damaged)")
        }
        guard start.rank == 4, noise.rank == 5, noise.shape[0] == start.shape[0],
              Array(noise.shape[2...]) == Array(start.shape[1...]) else {
            throw ToolError("\(label): \(RecordName.leditsStart) \(start.shapeDescription) and \(RecordName.leditsNoise) \(noise.shapeDescription) do not fit [N, 4, h, w] and [N, T, 4, h, w] — \(damaged)")
        }
        let fingerprint = DiffEditSupport.schedulerFingerprint(folder)
        if let fp = meta[MetadataKey.schedulerFingerprint], fp != fingerprint {
            throw ToolError("\(label): the LEDITS++ stack was made with another scheduler config (\(meta[MetadataKey.model] ?? "?")) — invert again with --model \(folder.root)")
        }
        guard let recorded = meta[MetadataKey.scheduler], let kind = SchedulerKind(rawValue: recorded) else {
            throw ToolError("\(label): the LEDITS++ stack names no scheduler this denoise knows (scheduler=\(meta[MetadataKey.scheduler] ?? "none")) — \(damaged)")
        }
        if let given, given != kind {
            throw ToolError("--scheduler \(given.rawValue) differs from the scheduler the LEDITS++ stack was inverted with (\(kind.rawValue)) — the edit retraces the inversion's steps; drop --scheduler")
        }
        let steps = try StageNumbers.steps.parse(meta[MetadataKey.steps] ?? "", subject: "the stack's metadata steps=", remedy: damaged)
        let skip = try skipOption.parse(meta[skipKey] ?? "", subject: "the stack's metadata skip=", remedy: damaged)
        let (total, timesteps) = try LEditsScheduler.schedule(kind, folder: folder, steps: steps, skip: skip)
        guard meta[totalStepsKey] == "\(total)", meta[MetadataKey.timesteps] == StackSchedule.format(timesteps) else {
            throw ToolError("\(label): the LEDITS++ stack's schedule (total_steps=\(meta[totalStepsKey] ?? "none"), timesteps=\(meta[MetadataKey.timesteps]?.prefix(40) ?? "none")) is not that of --scheduler \(kind.rawValue) at \(steps) steps, skip \(skip) (\(total) steps: \(StackSchedule.abbreviated(timesteps))) — \(damaged)")
        }
        guard noise.shape[1] == steps else {
            throw ToolError("\(label): \(RecordName.leditsNoise) holds \(noise.shape[1]) noise maps for \(steps) steps — \(damaged)")
        }
        var stack = LEditsStack(scheduler: kind, steps: steps, skip: skip, totalSteps: total, timesteps: timesteps,
                                folder: folder, predictionType: try LEditsScheduler(kind, folder: folder).predictionType)
        stack.schedulerFingerprint = fingerprint
        return stack
    }
}

/// The LEDITS++ options' domains, for the command line and the `ledits` section of
/// diffedit_defaults.json alike (one definition for both).
public enum LEditsNumbers {
    /// invert --method ledits --skip: the fraction of int(N·(1 + skip)) steps left out, [0, 1).
    public static let skip = LEditsStack.skipOption
    /// denoise --method ledits: per concept.
    public static let editGuidance = NumberOption<Float>("--edit-guidance", .guidance)
    public static let editThreshold = NumberOption<Float>("--edit-threshold", .from(0, to: 1))
    public static let editWarmup = NumberOption<Int>("--edit-warmup", .from(0, to: 1000))
    public static let editCooldown = NumberOption<Int>("--edit-cooldown", .from(0, to: 1000))
    /// A side of --attention-grid (cells of the UNet's query grid).
    public static let gridSide = NumberOption<Int>("--attention-grid", .from(1, to: 4096))

    /// diffusers' defaults: invert(num_inversion_steps=30, skip=0.15, source_guidance_scale=3.5),
    /// __call__(edit_guidance_scale=5, edit_threshold=0.9, edit_warmup_steps=0).
    public static let defaultSteps = 30
    public static let defaultSkip = 0.15
    public static let defaultSourceGuidance: Float = 3.5
    public static let defaultEditGuidance: Float = 5
    public static let defaultEditThreshold: Float = 0.9
    public static let defaultEditWarmup = 0

    /// "8x8" (height x width) → (8, 8); nil unless two integers of `gridSide`'s domain.
    public static func grid(_ text: String) -> (height: Int, width: Int)? {
        let parts = text.lowercased().split(separator: "x", omittingEmptySubsequences: false)
        guard parts.count == 2, let h = try? gridSide.parse(String(parts[0])), let w = try? gridSide.parse(String(parts[1])) else { return nil }
        return (h, w)
    }
}
