import Foundation

/// What the model's output means (scheduler_config.json `prediction_type`).
public enum PredictionType: String, Sendable {
    case epsilon
    case sample
    case vPrediction = "v_prediction"
}

/// How inference timesteps are spread over the training steps (`timestep_spacing`).
public enum TimestepSpacing: String, Sendable {
    case leading, trailing, linspace
}

/// The scheduler_config.json keys DDIMScheduler and DDIMInverseScheduler both read, with the
/// defaults both classes give them in diffusers; each scheduler holds one (as the DPM-Solver
/// pair holds its DPMSolverConfig). The inverse scheduler also honours the deprecated
/// set_alpha_to_zero, which overrides set_alpha_to_one.
public struct DDIMConfig: Sendable {
    public let schedule: NoiseSchedule
    public let clipSample: Bool
    public let clipSampleRange: Float
    public let stepsOffset: Int
    public let predictionType: PredictionType
    public let timestepSpacing: TimestepSpacing
    /// ᾱ past the schedule's end is 1 (else ᾱ₀): the DDIM step's final ᾱ, the inverse step's initial one.
    public let setAlphaToOne: Bool

    public init(_ config: JSONConfig, honoursSetAlphaToZero: Bool = false) throws {
        schedule = try NoiseSchedule(config: config)
        clipSample = try config.bool("clip_sample", default: true)
        clipSampleRange = Float(try config.double("clip_sample_range", default: 1.0))
        guard clipSampleRange > 0, clipSampleRange.isFinite else {
            throw ToolError("\(config.label): clip_sample_range \(clipSampleRange) must be a positive number — fix the config (diffusers' default is 1.0)")
        }
        stepsOffset = try config.int("steps_offset", default: 0)
        guard stepsOffset < schedule.numTrainTimesteps else {
            throw ToolError("\(config.label): steps_offset \(stepsOffset) is not below num_train_timesteps \(schedule.numTrainTimesteps) — fix the config (Stable Diffusion's is 1)")
        }
        let p = try config.string("prediction_type", default: "epsilon")
        guard let pt = PredictionType(rawValue: p) else {
            throw ToolError("\(config.label): prediction_type '\(p)' is not supported — use epsilon, v_prediction or sample")
        }
        predictionType = pt
        let s = try config.string("timestep_spacing", default: "leading")
        guard let sp = TimestepSpacing(rawValue: s) else {
            throw ToolError("\(config.label): timestep_spacing '\(s)' is not supported — use leading, trailing or linspace")
        }
        timestepSpacing = sp
        if honoursSetAlphaToZero && config.has("set_alpha_to_zero") {
            setAlphaToOne = try config.bool("set_alpha_to_zero")
        } else {
            setAlphaToOne = try config.bool("set_alpha_to_one", default: true)
        }
    }
}
