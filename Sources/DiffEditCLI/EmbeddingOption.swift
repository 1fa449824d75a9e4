import ArgumentParser
import DiffEditCore

/// `--embedding FILE[:TOKEN]` (repeatable), defined once for tokenize and encode-text, which must
/// be given the same ones: `@OptionGroup var embeddingOption: EmbeddingOption`.
public struct EmbeddingOption: ParsableArguments {
    @Option(name: .customLong("embedding"), help: ArgumentHelp(
        "A textual-inversion embedding (repeatable): a .safetensors file, diffusers' learned_embeds (token → [D] or [n, D]) or A1111's (emb_params [n, D]); TOKEN names it, else the file's key (diffusers) or its name (A1111). encode-text needs the ones tokenize was given, in the same order.",
        valueName: "FILE[:TOKEN]"))
    public var embeddings: [String] = []

    public init() {}

    /// The embeddings, read and checked (none when the option is not given).
    public func load() throws -> TextualInversion { try TextualInversion(arguments: embeddings) }
}
