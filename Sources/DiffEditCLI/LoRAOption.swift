import ArgumentParser
import DiffEditCore

/// `--lora FILE[:SCALE]` (repeatable) and `--lora-mode`, defined once for the tools that run the
/// text encoder or the UNet (encode-text, noise-diff-mask, invert, denoise), which must all be
/// given the same adapters: `@OptionGroup var loraOption: LoRAOption`.
public struct LoRAOption: ParsableArguments {
    @Option(name: .customLong("lora"), help: ArgumentHelp(
        "A LoRA adapter (repeatable), a .safetensors file in kohya/A1111 (lora_unet_…, lora_te_…) or diffusers/PEFT (unet.….lora_A) layout, at SCALE (default 1, in -16…16). Its UNet part applies in noise-diff-mask, invert and denoise, its text-encoder part in encode-text; give every stage the same ones.",
        valueName: "FILE[:SCALE]"))
    public var loras: [String] = []

    @Option(name: .customLong("lora-mode"), help: ArgumentHelp(
        "low-rank: add x·Aᵀ·Bᵀ next to each base product, the model's weights stay shared (default); merged: W + B·A into a private copy of each layer a LoRA touches.",
        valueName: "low-rank|merged"))
    public var mode: String = LoRASet.Mode.lowRank.rawValue

    public init() {}

    /// The adapters, read and checked (an empty set when none is given).
    public func load() throws -> LoRASet {
        guard let m = LoRASet.Mode(rawValue: mode) else {
            throw ToolError("--lora-mode '\(mode)' is not one of \(LoRASet.Mode.allCases.map(\.rawValue).joined(separator: ", ")) — use low-rank (default) or merged")
        }
        return LoRASet(try loras.map { try LoRASet.adapter(argument: $0) }, mode: m)
    }
}
