import Foundation

/// Loading a CLIPTokenizer from a model folder's tokenizer/ directory, as transformers'
/// `CLIPTokenizer.from_pretrained` reads it: tokenizer.json when present (what
/// `save_pretrained` writes in transformers 5), else vocab.json + merges.txt (the Hub's SD
/// checkpoints); special tokens from special_tokens_map.json, else tokenizer_config.json, else
/// CLIP's defaults; `model_max_length` from tokenizer_config.json.
extension CLIPTokenizer {
    public static let maxFileBytes = 64 << 20

    /// The model's tokenizer: a folder's tokenizer/, or for a single-file checkpoint (which has
    /// none) the bundled CLIP BPE with the pad token of the checkpoint's family.
    public convenience init(folder: ModelFolder) throws {
        if let singleFile = folder.singleFile {
            try self.init(directory: singleFile.tokenizerDirectory(), padToken: singleFile.padToken)
        } else {
            try self.init(directory: folder.root + "/tokenizer")
        }
    }

    /// `padToken` replaces the pad token the files name.
    public convenience init(directory dir: String, padToken padOverride: String? = nil) throws {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw ToolError("\(dir) does not exist — the model folder needs a tokenizer/ with vocab.json and merges.txt (or tokenizer.json)")
        }
        let label = "tokenizer"
        func read(_ name: String) throws -> [UInt8]? {
            let path = dir + "/" + name
            // A FIFO or device in place of a tokenizer file is refused, never waited on.
            return try InputFile.readIfPresent(path, what: "tokenizer file", limit: CLIPTokenizer.maxFileBytes)
        }
        func json(_ name: String) throws -> JSONValue? {
            guard let bytes = try read(name) else { return nil }
            return try JSONValue.parse(bytes, label: "\(label)/\(name)")
        }

        var vocab: [String: Int32] = [:]
        var merges: [(String, String)] = []
        var added: [AddedToken] = []

        if let tj = try json("tokenizer.json") {
            guard let model = tj["model"], model.objectValue != nil else {
                throw ToolError("\(label)/tokenizer.json has no \"model\" object — not a tokenizers file")
            }
            if let type = model["type"]?.stringValue, type != "BPE" {
                throw ToolError("\(label)/tokenizer.json holds a \(type) model, but CLIP's tokenizer is BPE — is this a Stable Diffusion folder?")
            }
            if let suffix = model["end_of_word_suffix"]?.stringValue, suffix != CLIPTokenizer.endOfWord {
                throw ToolError("\(label)/tokenizer.json: end_of_word_suffix '\(suffix)' is not CLIP's '</w>'")
            }
            guard let v = model["vocab"] else { throw ToolError("\(label)/tokenizer.json has no model.vocab") }
            vocab = try CLIPTokenizer.parseVocab(v, label: "\(label)/tokenizer.json model.vocab")
            guard let m = model["merges"]?.arrayValue else { throw ToolError("\(label)/tokenizer.json has no model.merges list") }
            merges = try m.enumerated().map { k, item in
                if let s = item.stringValue { return try CLIPTokenizer.splitMerge(s, line: k + 1, label: "\(label)/tokenizer.json") }
                if let pair = item.arrayValue, pair.count == 2, let a = pair[0].stringValue, let b = pair[1].stringValue {
                    return (a, b)
                }
                throw ToolError("\(label)/tokenizer.json: merge #\(k + 1) is neither \"a b\" nor [\"a\", \"b\"]")
            }
            for (k, item) in (tj["added_tokens"]?.arrayValue ?? []).enumerated() {
                guard let content = item["content"]?.stringValue, let id = item["id"]?.intValue, id >= 0, id < Int(Int32.max) else {
                    throw ToolError("\(label)/tokenizer.json: added token #\(k + 1) lacks a content string or an id")
                }
                let special = item["special"]?.boolValue ?? false
                added.append(AddedToken(content: content, id: Int32(id), normalized: item["normalized"]?.boolValue ?? !special))
            }
        } else {
            guard let vj = try json("vocab.json") else {
                throw ToolError("\(dir) has neither tokenizer.json nor vocab.json — the model folder's tokenizer is incomplete")
            }
            vocab = try CLIPTokenizer.parseVocab(vj, label: "\(label)/vocab.json")
            guard let mt = try read("merges.txt") else {
                throw ToolError("\(dir) has vocab.json but no merges.txt — the model folder's tokenizer is incomplete")
            }
            merges = try CLIPTokenizer.parseMerges(mt, label: "\(label)/merges.txt")
        }

        let config = try json("tokenizer_config.json")
        let specialMap = try json("special_tokens_map.json")
        if let c = config, c.objectValue == nil { throw ToolError("\(label)/tokenizer_config.json is not a JSON object") }
        // transformers 4's added_tokens_decoder: {"49406": {"content": ..., "special": true, ...}}
        for (key, item) in config?["added_tokens_decoder"]?.objectValue ?? [] {
            guard let id = Int32(key), id >= 0, let content = item["content"]?.stringValue else {
                throw ToolError("\(label)/tokenizer_config.json: bad added_tokens_decoder entry '\(key)'")
            }
            if added.contains(where: { $0.content == content }) { continue }
            let special = item["special"]?.boolValue ?? false
            added.append(AddedToken(content: content, id: id, normalized: item["normalized"]?.boolValue ?? !special))
        }
        // Each special token comes from special_tokens_map.json, which overrides
        // tokenizer_config.json (SD 2.x's config says pad "<|endoftext|>", its map "!", and the
        // reference pads with "!"). A token given as {"content", "normalized": true} is matched
        // in the normalised text; a plain string is not. When several roles name one token, the
        // last declaration in the order bos, eos, unk, pad sets the flag, as in transformers.
        var normalizedSpecials = Set<String>()
        func special(_ key: String, _ fallback: String) throws -> String {
            for (file, source) in [("special_tokens_map.json", specialMap), ("tokenizer_config.json", config)] {
                guard let v = source?[key], v != .null else { continue }
                if let s = v.stringValue {
                    normalizedSpecials.remove(s)
                    return s
                }
                if let s = v["content"]?.stringValue {
                    if v["normalized"]?.boolValue == true { normalizedSpecials.insert(s) } else { normalizedSpecials.remove(s) }
                    return s
                }
                throw ToolError("\(label)/\(file): '\(key)' should be a token string")
            }
            normalizedSpecials.remove(fallback)
            return fallback
        }
        let bos = try special("bos_token", "<|startoftext|>")
        let eos = try special("eos_token", "<|endoftext|>")
        let unk = try special("unk_token", "<|endoftext|>")
        let pad = try padOverride ?? special("pad_token", "<|endoftext|>")
        var maxLength = CLIPTokenizer.defaultMaxLength
        if let m = config?["model_max_length"]?.intValue, m >= 2, m <= 1_000_000 { maxLength = m }
        try self.init(vocab: vocab, merges: merges, bosToken: bos, eosToken: eos, unkToken: unk, padToken: pad,
                      extraAdded: added, normalizedSpecials: normalizedSpecials, modelMaxLength: maxLength,
                      label: label)
    }

    private static func parseVocab(_ v: JSONValue, label: String) throws -> [String: Int32] {
        guard let object = v.objectValue else { throw ToolError("\(label) is not a JSON object of token → id") }
        var vocab: [String: Int32] = [:]
        vocab.reserveCapacity(object.count)
        for (token, idValue) in object {
            guard let id = idValue.intValue, id >= 0, id < 10_000_000 else {
                throw ToolError("\(label): token '\(token.prefix(40))' has a bad id \(idValue)")
            }
            vocab[token] = Int32(id)
        }
        return vocab
    }

    /// merges.txt: an optional "#version" first line, then "left right" per line. Split as
    /// bytes: String.split over Characters is slow for 48894 lines.
    static func parseMerges(_ bytes: [UInt8], label: String) throws -> [(String, String)] {
        var merges: [(String, String)] = []
        merges.reserveCapacity(bytes.count / 10)
        try bytes.withUnsafeBufferPointer { b in
            try TextLines.forEach(in: b) { lineNumber, line in
                if line.isEmpty { return }
                if lineNumber == 1 && line.starts(with: Array("#version".utf8)) { return }
                var space = -1, spaces = 0
                for k in 0..<line.count where line[k] == 0x20 { spaces += 1; if space < 0 { space = k } }
                guard spaces == 1, space > 0, space < line.count - 1,
                      let left = String(validating: UnsafeBufferPointer(rebasing: line[..<space]), as: UTF8.self),
                      let right = String(validating: UnsafeBufferPointer(rebasing: line[(space + 1)...]), as: UTF8.self) else {
                    let shown = String(decoding: line.prefix(40), as: UTF8.self)
                    throw ToolError("\(label): merge on line \(lineNumber) is '\(shown)', expected two tokens separated by one space")
                }
                merges.append((left, right))
            }
        }
        return merges
    }

    private static func splitMerge(_ s: String, line: Int, label: String) throws -> (String, String) {
        let parts = s.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw ToolError("\(label): merge on line \(line) is '\(s.prefix(40))', expected two tokens separated by one space")
        }
        return (String(parts[0]), String(parts[1]))
    }
}
