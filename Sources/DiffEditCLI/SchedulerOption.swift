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
}
