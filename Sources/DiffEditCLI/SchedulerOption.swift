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

    /// denoise's scheduler: the stack's (a stack without the key was inverted with DDIM, before the
    /// option existed); an explicit --scheduler must be the same one.
    public func resolved(forStack metadata: [String: String]) throws -> SchedulerKind {
        let recorded = metadata[MetadataKey.scheduler] ?? SchedulerKind.ddim.rawValue
        guard let stackKind = SchedulerKind(rawValue: recorded) else {
            throw ToolError("the inverted stack names scheduler '\(recorded)', which this denoise does not know — invert again with --scheduler ddim or dpm")
        }
        if let scheduler, scheduler != stackKind {
            throw ToolError("--scheduler \(scheduler.rawValue) differs from the scheduler the stack was inverted with (\(stackKind.rawValue)) — the denoising must retrace the inversion; drop --scheduler or invert again with --scheduler \(scheduler.rawValue)")
        }
        return stackKind
    }
}
