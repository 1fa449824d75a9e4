import ArgumentParser
import DiffEditCore
import DiffEditCLI

/// encode-text: CLIP token ids → text embeddings, as diffusers' encode_prompt computes them.
@main
struct EncodeText: DiffEditTool {
    static let configuration = CommandConfiguration(
        commandName: "encode-text",
        abstract: "Encode CLIP token ids (from tokenize) into text embeddings [N, 77, D].",
        discussion: "See encode-text(1).",
        version: CLI.version)

    @Argument(help: "Tensor stream of token ids (default or '-': stdin).")
    var input: String?

    @Option(name: .long, help: ArgumentHelp(CLI.modelHelp))
    var model: String?

    @OptionGroup var embeddingOption: EmbeddingOption

    @OptionGroup var loraOption: LoRAOption

    @Option(EncodeText.clipSkipOption, "Skip the last N layers, as diffusers' clip_skip (at most the text encoder's layers)")
    var clipSkip: Int = 0
    /// At most the text encoder's layer count, which the model checks.
    static let clipSkipOption = NumberOption<Int>("--clip-skip", .atLeast(0))

    @Flag(name: .long, help: "Average the embeddings of all prompts into one [1, L, D].")
    var mean = false

    @Flag(name: .shortAndLong, help: "Write binary output even to a terminal.")
    var force = false

    func run() throws {
        try CLI.run(Self.toolName) {
            let reader = try CLI.tensorInput(input)
            let records = try reader.readAllNonEmpty(expecting: "token ids from tokenize")
            // Check every record's shape and ids before loading the model.
            var batches: [(ids: [Int32], n: Int, length: Int, metadata: [String: String])] = []
            for r in records {
                guard r.rank == 2 || r.rank == 1 else {
                    throw ToolError("record '\(r.name)' has shape \(r.shapeDescription), expected token ids [N, length] — pass the output of tokenize")
                }
                let ids = try r.int32s()
                let n = r.rank == 2 ? r.shape[0] : 1
                let length = r.shape.last!
                guard n > 0, length > 0 else { throw ToolError("record '\(r.name)' is empty (\(r.shapeDescription))") }
                batches.append((ids, n, length, r.metadata))
            }
            if mean, Set(batches.map(\.length)).count > 1 {
                throw ToolError("--mean needs prompts of one length, got \(Set(batches.map(\.length)).sorted()) — tokenize with padding (without --no-pad)")
            }
            let inversion = try embeddingOption.load()
            var folder = try ModelFolder.resolve(model)
            folder.lora = try loraOption.load()
            let encoder = try CLIPTextModel(folder: folder)
            let d = encoder.config.hiddenSize
            // Textual-inversion vectors join the token table, once the ids are known to be theirs.
            for note in try inversion.prepare(encoder, model: folder.root, records: batches.map { ($0.ids, $0.length, $0.metadata) }) {
                CLI.note(Self.toolName, "note: " + note)
            }

            let writer = try CLI.tensorOutput(force: force)
            var sum: [Double] = []
            var total = 0
            for b in batches {
                let e = try encoder.encode(ids: b.ids, batch: b.n, length: b.length, clipSkip: clipSkip)
                var metadata = b.metadata.merging(DiffEditIO.provenance(folder)) { $1 }
                metadata["clip_skip"] = String(clipSkip)
                if mean {
                    if sum.isEmpty { sum = [Double](repeating: 0, count: b.length * d) }
                    e.data.withUnsafeBufferPointer { p in
                        for r in 0..<b.n {
                            for i in 0..<(b.length * d) { sum[i] += Double(p[r * b.length * d + i]) }
                        }
                    }
                    total += b.n
                } else {
                    try writer.write(TensorRecord(name: RecordName.embeddings, tensor: e, metadata: metadata))
                }
            }
            if mean {
                var metadata = (batches.count == 1 ? batches[0].metadata : [:]).merging(DiffEditIO.provenance(folder)) { $1 }
                metadata["clip_skip"] = String(clipSkip)
                metadata["mean_of"] = String(total)
                let m = sum.map { Float($0 / Double(total)) }
                try writer.write(TensorRecord(name: RecordName.embeddings, shape: [1, batches[0].length, d], floats: m, metadata: metadata))
            }
            try writer.flush()
        }
    }
}
