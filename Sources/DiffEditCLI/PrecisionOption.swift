import ArgumentParser
import DiffEditCore

extension Precision: ExpressibleByArgument {}

/// `--precision f32|bf16`, defined once for the tools that run a model's products
/// (noise-diff-mask, invert and denoise through StageOptions; vae-encode, vae-decode, unet-bench):
/// `@OptionGroup var precisionOption: PrecisionOption`. `DIFFEDIT_PRECISION` says the same for
/// every tool at once.
public struct PrecisionOption: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Arithmetic of the large products: f32 (diffusers' numbers) or bf16 (opt-in: operands rounded to bfloat16, f32 sums, on AVX512-BF16 only — elsewhere f32, with a note) — default: $DIFFEDIT_PRECISION, else f32.",
        valueName: "f32|bf16"))
    public var precision: Precision?

    public init() {}

    /// Call before loading a model: the precision it computes with (a malformed
    /// `DIFFEDIT_PRECISION` was refused by `CLI.run`). bf16 asked of a CPU without AVX512-BF16
    /// runs in f32 and says so (unless `quiet`).
    public func apply(tool: String, quiet: Bool) throws {
        let asked = precision ?? Precision.requested
        Precision.requested = asked
        if asked == .bf16 && !Precision.bf16Available && !quiet {
            CLI.note(tool, "note: bf16 needs AVX512-BF16 (vdpbf16ps), which this CPU lacks — computing in f32")
        }
    }

    /// What the output records when the products were not f32.
    public var metadata: [String: String] { Precision.requested.effective == .bf16 ? ["precision": "bf16"] : [:] }
}
