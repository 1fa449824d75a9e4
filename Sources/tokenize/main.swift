import ArgumentParser
import DiffEditCore
import DiffEditCLI

/// tokenize: prompts → CLIP token ids, as transformers' CLIPTokenizer gives them to diffusers'
/// encode_prompt (padding="max_length", truncation=True).
@main
struct Tokenize: DiffEditTool {
    static let configuration = CommandConfiguration(
        commandName: "tokenize",
        abstract: "Turn prompts into CLIP token ids (an i32 tensor [N, 77]).",
        discussion: """
            Prompts come from the arguments, or one per line on standard input when there are \
            none (an empty line is the empty prompt, the unconditional one). See tokenize(1).
            """,
        version: CLI.version)

    @Argument(help: "Prompts; none (or a single '-') reads one prompt per line from stdin.")
    var prompts: [String] = []

    @Option(name: .long, help: ArgumentHelp(CLI.modelHelp))
    var model: String?

    @OptionGroup var embeddingOption: EmbeddingOption

    @Option(Tokenize.maxLengthOption, "Tokens per prompt including bos and eos", defaultText: "the tokenizer's model_max_length, 77")
    var maxLength: Int?
    /// Room for the start and end tokens, and a bound on the [N, length] ids a run writes.
    static let maxLengthOption = NumberOption<Int>("--max-length", .from(2, to: 4096))

    @Flag(name: .long, help: "Do not pad: write one record [1, n] per prompt.")
    var noPad = false

    @Flag(name: .long, help: "Print the tokens as text instead of writing a tensor.")
    var show = false

    @Flag(name: .shortAndLong, help: "Write binary output even to a terminal.")
    var force = false

    @Flag(name: .shortAndLong, help: "Do not warn about truncated prompts.")
    var quiet = false

    func run() throws {
        try CLI.run(Self.toolName) {
            // Refuse a terminal on stdout before waiting for prompts typed on one.
            let writer = show ? nil : try CLI.tensorOutput(force: force)
            let folder = try ModelFolder.resolve(model)
            let tokenizer = try CLIPTokenizer(folder: folder)
            // Textual-inversion tokens join the vocabulary (checked against the text encoder's width).
            let inversion = try embeddingOption.load()
            if !inversion.isEmpty {
                try inversion.checkWidth(CLIPTextConfig(folder.config("text_encoder")).hiddenSize, model: folder.root)
            }
            let firstAddedID = try inversion.add(to: tokenizer)
            if !quiet { for note in inversion.notes { CLI.note(Self.toolName, "note: " + note) } }
            let length = try maxLength ?? Self.maxLengthOption.check(
                tokenizer.modelMaxLength, subject: "the tokenizer's model_max_length ", remedy: "give --max-length")
            let texts = try readPrompts()
            guard !texts.isEmpty else {
                throw ToolError("no prompts — give them as arguments or one per line on stdin")
            }
            // Encode first, so that a problem shows before any output.
            var rows: [[Int32]] = []
            for (k, text) in texts.enumerated() {
                let content = tokenizer.encode(inversion.prompt(text, tokenizer: tokenizer))
                if content.count > length - 2 && !quiet {
                    let dropped = content[(length - 2)...].compactMap { tokenizer.token($0) }.joined(separator: " ")
                    CLI.note(Self.toolName, "prompt \(k + 1) has \(content.count + 2) tokens, truncated to \(length); dropped: \(dropped.prefix(200))")
                }
                var ids = [tokenizer.bosID]
                ids.append(contentsOf: content.prefix(length - 2))
                ids.append(tokenizer.eosID)
                if !noPad && ids.count < length {
                    ids.append(contentsOf: repeatElement(tokenizer.padID, count: length - ids.count))
                }
                rows.append(ids)
            }

            if show {
                let out = ByteWriter(fd: 1, label: "stdout")
                for ids in rows { try out.write(Self.describe(ids, tokenizer) + "\n") }
                try out.flush()
                return
            }

            var metadata: [String: String] = [
                "model": folder.root,
                "max_length": String(length),
                "bos_id": String(tokenizer.bosID),
                "eos_id": String(tokenizer.eosID),
                "pad_id": String(tokenizer.padID),
            ].merging(inversion.metadata(firstID: firstAddedID)) { a, _ in a }
            guard let writer else { return }
            if noPad {
                metadata["padding"] = "none"
                for (ids, text) in zip(rows, texts) {
                    metadata["prompts"] = Self.promptsMetadata([text])
                    try writer.write(TensorRecord(name: RecordName.ids, shape: [1, ids.count], int32s: ids, metadata: metadata))
                }
            } else {
                metadata["padding"] = "max_length"
                metadata["prompts"] = Self.promptsMetadata(texts)
                try writer.write(TensorRecord(name: RecordName.ids, shape: [rows.count, length], int32s: rows.flatMap { $0 },
                                              metadata: metadata))
            }
            try writer.flush()
        }
    }

    func readPrompts() throws -> [String] {
        if !(prompts.isEmpty || prompts == ["-"]) { return prompts }
        let reader = try ByteReader(path: "-")
        if reader.isTerminal && !quiet {
            CLI.note(Self.toolName, "reading prompts from the terminal, one per line; end with Ctrl-D")
        }
        let bytes = try reader.readToEnd(limit: 64 << 20)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ToolError("stdin is not UTF-8 text — prompts must be UTF-8, one per line")
        }
        if text.isEmpty { return [] }
        // A NUL byte means binary data piped in by mistake (text never holds one).
        if let nul = bytes.firstIndex(of: 0) {
            let line = bytes[..<nul].filter { $0 == 0x0A }.count + 1
            throw ToolError("stdin: line \(line) holds a NUL byte — prompts must be text, one per line; is a binary file piped in?")
        }
        // One prompt a line, LF or CRLF (a file saved on Windows).
        return TextLines.strings(bytes) ?? []
    }

    /// `49406:<|startoftext|> 320:a</w> … 49407:<|endoftext|> 49407:<|endoftext|>×73` — the
    /// padding after the end token is shown once with its count.
    static func describe(_ ids: [Int32], _ tokenizer: CLIPTokenizer) -> String {
        func show(_ id: Int32) -> String { "\(id):\(tokenizer.token(id) ?? "?")" }
        let end = ids.count > 1 ? (ids.dropFirst().firstIndex(of: tokenizer.eosID) ?? ids.count - 1) : ids.count - 1
        var parts = ids[...end].map(show)
        var i = end + 1
        while i < ids.count {
            var j = i + 1
            while j < ids.count && ids[j] == ids[i] { j += 1 }
            parts.append(show(ids[i]) + (j - i > 1 ? "×\(j - i)" : ""))
            i = j
        }
        return parts.joined(separator: " ")
    }

    /// The prompts as kept in the record's metadata: a JSON array, each prompt cut to
    /// `maxStoredPromptBytes` (marked by a final "…"), the whole omitted (nil) past
    /// `maxStoredPromptsBytes` — the stream format's headers are limited to 1 MiB.
    static let maxStoredPromptBytes = 2048
    static let maxStoredPromptsBytes = 256 << 10

    static func promptsMetadata(_ texts: [String]) -> String? {
        let cut = texts.map { t -> String in
            guard t.utf8.count > maxStoredPromptBytes else { return t }
            var s = ""
            for ch in t {
                if s.utf8.count + ch.utf8.count > maxStoredPromptBytes { break }
                s.append(ch)
            }
            return s + "…"
        }
        let json = JSONValue.stringArray(cut)
        return json.utf8.count <= maxStoredPromptsBytes ? json : nil
    }
}
