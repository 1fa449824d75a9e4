import ArgumentParser
import DiffEditCore

extension SchedulerKind: ExpressibleByArgument {}

/// `--scheduler ddim|dpm`, defined once for noise-diff-mask, invert and denoise:
/// `@OptionGroup var schedulerOption: SchedulerOption`.
public struct SchedulerOption: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "ddim (DDIM; invert: DDIM inversion) or dpm (DPM-Solver++ 2M; invert: its inverse) — default: ddim; denoise: the scheduler the stack was inverted with.",
        valueName: "ddim|dpm"))
    public var scheduler: SchedulerKind?

    public init() {}

    /// The metadata key under which invert records the scheduler of a stack (and the other
    /// stages the one they ran).
    public static let metadataKey = StackSchedule.schedulerKey

    /// denoise's scheduler: the stack's; an explicit --scheduler must be the same one. A stack
    /// without the key (inverted before the option existed, or whose metadata was lost) takes
    /// --scheduler, else DDIM; either way denoise then checks the stack's recorded timesteps
    /// against that schedule (StackSchedule.check), which tells a DPM stack from a DDIM one.
    public func resolved(forStack metadata: [String: String]) throws -> SchedulerKind {
        guard let recorded = metadata[Self.metadataKey] else { return scheduler ?? .ddim }
        guard let stackKind = SchedulerKind(rawValue: recorded) else {
            throw ToolError("the inverted stack names scheduler '\(recorded)', which this denoise does not know — invert again with --scheduler ddim or dpm")
        }
        if let scheduler, scheduler != stackKind {
            throw ToolError("--scheduler \(scheduler.rawValue) differs from the scheduler the stack was inverted with (\(stackKind.rawValue)) — the denoising must retrace the inversion; drop --scheduler or invert again with --scheduler \(scheduler.rawValue)")
        }
        return stackKind
    }
}
