import Foundation
import ArgumentParser
import DiffEditCore

/// The options the three DiffEdit stages (noise-diff-mask, invert, denoise) share, defined once so
/// their names, defaults and help read the same in every tool: `@OptionGroup var common: StageOptions`.
public struct StageOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(CLI.modelHelp))
    public var model: String?
    @Flag(name: .long, help: "Show progress on stderr even when it is not a terminal.")
    public var progress = false
    @Flag(name: .shortAndLong, help: "No progress or notes on stderr.")
    public var quiet = false
    @Flag(name: .shortAndLong, help: "Say on stderr what the tool computes with (model, threads, BLAS kernel).")
    public var verbose = false
    @Flag(name: .long, help: "Process inputs holding NaN or infinite values instead of refusing them.")
    public var allowNonfinite = false
    @Flag(name: [.customShort("f"), .long], help: "Write binary data even to a terminal.")
    public var force = false
    @OptionGroup public var loraOption: LoRAOption
    @OptionGroup public var precisionOption: PrecisionOption

    public init() {}
}

extension StageOptions {
    /// The UNet a stage tool runs, loaded from `folder`; with --verbose, one line on how it runs.
    /// An SD 2.x single file whose sidecar does not say its prediction type gets a note (unless
    /// --quiet): the weights cannot tell a v-prediction model from an epsilon one.
    public func loadUNet(_ folder: ModelFolder, tool: String) throws -> UNet2DCondition {
        if !quiet, let note = folder.singleFile?.predictionTypeNote { CLI.note(tool, "note: " + note) }
        let start = DispatchTime.now().uptimeNanoseconds
        let unet = try UNet2DCondition(folder: folder)
        if verbose && !quiet {
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            CLI.note(tool, "model \(folder.root); UNet on \(unet.context.threads) threads, loaded in \(String(format: "%.2f", seconds)) s; \(BLASKernel.description)")
        }
        return unet
    }
}
