import Foundation

/// One textual-inversion embedding (`--embedding FILE[:TOKEN]`): a token and the vectors it
/// stands for, read from a safetensors file in either layout users bring —
/// * diffusers' `learned_embeds.safetensors`: one tensor named by its token, [D] or [n, D];
/// * A1111's safetensors: one tensor `emb_params` [n, D], named after the file (its stem), as
///   A1111 names an embedding.
/// `:TOKEN` names it otherwise. Pickles (A1111's `.pt`, diffusers' `learned_embeds.bin`) are
/// refused as pickled checkpoints are (PickleFile).
public struct TextualInversionEmbedding {
    public enum Layout: String { case diffusers, a1111 }

    public let path: String
    public let token: String
    public let layout: Layout
    /// n vectors of `width` floats, row after row.
    public let vectors: [Float]
    public let vectorCount: Int
    public let width: Int
    /// FNV-1a of the file's bytes (DiffEditSupport.fingerprint): what tokenize records and
    /// encode-text compares.
    public let fingerprint: String

    /// The largest file read as an embedding (a few kilobytes in practice; a checkpoint given by
    /// mistake is refused by its size).
    public static let maxFileBytes = 64 << 20

    /// diffusers' `_extend_tokens_and_embeddings`: TOKEN, TOKEN_1, …, TOKEN_{n−1}, one per vector.
    public var tokens: [String] { [token] + (1..<max(vectorCount, 1)).map { "\(token)_\($0)" } }

    /// `FILE[:TOKEN]`. A FILE that exists is taken whole even when its name holds a colon;
    /// otherwise the text after the last colon is the token.
    public init(argument: String) throws {
        guard !argument.isEmpty else { throw ToolError("--embedding '' names no file — give FILE or FILE:TOKEN") }
        if InputFile.exists(argument) || !argument.contains(":") {
            try self.init(path: argument, token: nil)
            return
        }
        let colon = argument.lastIndex(of: ":")!
        let path = String(argument[..<colon]), token = String(argument[argument.index(after: colon)...])
        guard !path.isEmpty, !token.isEmpty else {
            throw ToolError("--embedding '\(JSONValue.shown(argument))' has an empty \(path.isEmpty ? "file" : "token") around ':' — give FILE or FILE:TOKEN")
        }
        try self.init(path: path, token: token)
    }

    public init(path: String, token override: String?) throws {
        let label = "--embedding \(path)"
        if PickleFile.isPickle(path) {
            let converted = URL(fileURLWithPath: path).deletingPathExtension().path + ".safetensors"
            throw ToolError("\(label) is a PyTorch pickle, which diffedit does not load: unpickling can run arbitrary code — convert it once to safetensors, e.g. python3 -c \"import torch, safetensors.torch as st; d = torch.load('\(path)', map_location='cpu', weights_only=True); d = {'emb_params': d['string_to_param']['*']} if 'string_to_param' in d else d; st.save_file({k: v.contiguous() for k, v in d.items()}, '\(converted)')\" (weights_only=True reads tensors without running code), then use --embedding \(converted)")
        }
        let bytes = try InputFile.read(path, what: "embedding", limit: Self.maxFileBytes)
        let file = try SafeTensorsFile(path: path)
        let names = file.names
        guard !names.isEmpty else { throw ToolError("\(label) holds no tensor — it is not a textual-inversion embedding") }
        if names.contains("clip_l") || names.contains("clip_g") {
            throw ToolError("\(label) is an SDXL embedding (clip_l, clip_g) — diffedit runs Stable Diffusion 1.x and 2.x, whose embeddings hold one tensor")
        }
        guard names.count == 1 else {
            let shown = names.prefix(3).map { "'\(JSONValue.shown($0))'" }.joined(separator: ", ")
            throw ToolError("\(label) holds \(names.count) tensors (\(shown)\(names.count > 3 ? ", …" : "")), but a textual-inversion embedding holds one: diffusers' learned_embeds (the token → its vectors) or A1111's emb_params — is it a LoRA or a checkpoint?")
        }
        let entry = file.entries[names[0]]!
        guard [.F32, .F16, .BF16, .F64].contains(entry.dtype) else {
            throw ToolError("\(label): tensor '\(JSONValue.shown(entry.name))' is \(entry.dtype.rawValue), but embedding vectors are floating point — is it an embedding?")
        }
        guard (entry.shape.count == 1 || entry.shape.count == 2), entry.count > 0 else {
            throw ToolError("\(label): tensor '\(JSONValue.shown(entry.name))' has shape \(entry.shape), but an embedding is [D] or [vectors, D] — is it an embedding?")
        }
        let vectors = try file.floats(entry)
        guard vectors.allSatisfy(\.isFinite) else {
            throw ToolError("\(label): its vectors hold NaN or infinite values — the file is damaged; make or fetch it again")
        }
        layout = entry.name == "emb_params" ? .a1111 : .diffusers
        let stem = URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
        let token = override ?? (layout == .a1111 ? stem : entry.name)
        guard !token.isEmpty, token.trimmingCharacters(in: .whitespacesAndNewlines) == token,
              !token.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw ToolError("\(label): its token '\(JSONValue.shown(token))' is empty, has control characters or begins or ends with white space — name it with --embedding \(path):TOKEN")
        }
        self.path = path
        self.token = token
        self.vectors = vectors
        width = entry.shape.last!
        vectorCount = entry.shape.count == 1 ? 1 : entry.shape[0]
        fingerprint = DiffEditSupport.fingerprint(bytes)
    }
}

/// The textual-inversion embeddings of a run, in the order given: diffusers'
/// `load_textual_inversion` (loaders/textual_inversion.py) on the tokenizer side and the text
/// encoder side, which tokenize and encode-text each do half of.
///
/// * tokenize adds TOKEN, TOKEN_1, … of every embedding to the tokenizer, ids from its size on
///   (`tokenizer.add_tokens`), expands each prompt as `maybe_convert_prompt` does, and records the
///   embeddings in its output (`metadata`);
/// * encode-text appends the vectors to the text encoder's token table at the same ids
///   (`resize_token_embeddings`), after checking that the ids were made with these embeddings
///   (`prepare`).
public struct TextualInversion {
    public let embeddings: [TextualInversionEmbedding]

    public init(_ embeddings: [TextualInversionEmbedding]) throws {
        // diffusers' _check_text_inv_inputs: no token twice.
        var seen: [String: String] = [:]
        for e in embeddings {
            if let other = seen[e.token] {
                throw ToolError("--embedding \(e.path) and --embedding \(other) both name the token '\(JSONValue.shown(e.token))' — name one of them otherwise with FILE:TOKEN")
            }
            seen[e.token] = e.path
        }
        self.embeddings = embeddings
    }

    /// The `--embedding FILE[:TOKEN]` arguments, read.
    public init(arguments: [String]) throws {
        try self.init(arguments.map(TextualInversionEmbedding.init(argument:)))
    }

    public var isEmpty: Bool { embeddings.isEmpty }
    /// Every added token, in id order.
    public var addedTokens: [String] { embeddings.flatMap(\.tokens) }
    /// Every vector, in id order: the rows appended to the token table.
    public var rows: [Float] { embeddings.flatMap(\.vectors) }

    /// diffusers' step 6: every vector as wide as the text encoder's token embeddings.
    public func checkWidth(_ hiddenSize: Int, model: String) throws {
        for e in embeddings where e.width != hiddenSize {
            func family(_ d: Int) -> String {
                switch d {
                case 768: return " (SD 1.x)"
                case 1024: return " (SD 2.x)"
                case 1280: return " (SDXL's second text encoder)"
                default: return ""
                }
            }
            throw ToolError("--embedding \(e.path) has vectors of \(e.width)\(family(e.width)), but the text encoder of \(model) takes \(hiddenSize)\(family(hiddenSize)) — use an embedding made for this model's family (SD 1.x: 768, SD 2.x: 1024)")
        }
    }

    /// Adds every token to `tokenizer` (diffusers' step 7.4); returns the first added id.
    /// A token already known is refused, as diffusers refuses it ("already in tokenizer vocabulary").
    @discardableResult
    public func add(to tokenizer: CLIPTokenizer) throws -> Int {
        let first = tokenizer.count
        var owner: [String: String] = [:]
        for e in embeddings {
            for (k, t) in e.tokens.enumerated() where tokenizer.contains(t) {
                let whose = owner[t].map { "a token of --embedding \($0)" } ?? "in the tokenizer's vocabulary"
                let what = k == 0 ? "its token '\(JSONValue.shown(t))'" : "its vector \(k + 1)'s token '\(JSONValue.shown(t))'"
                throw ToolError("--embedding \(e.path): \(what) is already \(whose) — name it otherwise with --embedding \(e.path):TOKEN")
            }
            for t in e.tokens {
                tokenizer.addToken(t)
                owner[t] = e.path
            }
        }
        return first
    }

    /// Notes for tokenize's stderr: a multi-vector token whose name normalisation changes (capital
    /// letters) matches in any case, but diffusers' maybe_convert_prompt looks the normalised
    /// name up and never expands it, so a prompt gets its first vector only — as here.
    public var notes: [String] {
        embeddings.compactMap { e in
            guard e.vectorCount > 1 else { return nil }
            var normalized = ""
            normalized.unicodeScalars.append(contentsOf: CLIPTokenizer.normalize(e.token))
            guard normalized != e.token else { return nil }
            return "--embedding \(e.path): '\(JSONValue.shown(e.token))' has \(e.vectorCount) vectors, but prompts get its first only (as in diffusers, which expands lower-case names only) — name it --embedding \(e.path):\(JSONValue.shown(normalized)) for all \(e.vectorCount)"
        }
    }

    /// diffusers' `_maybe_convert_prompt`: each distinct added token the prompt holds (as
    /// `tokenizer.tokenize` names it) that has TOKEN_1, TOKEN_2, … is replaced in the raw prompt by
    /// "TOKEN TOKEN_1 …" with Python's `str.replace` (every non-overlapping occurrence, left to
    /// right, by code points). diffusers walks a Python set, whose order varies between runs; the
    /// order of first appearance is taken here (the two differ only for one multi-vector token
    /// inside another's name, e.g. "cat" and "cathat").
    public static func expand(_ prompt: String, tokenizer: CLIPTokenizer) -> String {
        let added = Set(tokenizer.addedTokens.map(\.content))
        var seen = Set<String>()
        var scalars = Array(prompt.unicodeScalars)
        for piece in tokenizer.addedTokenPieces(prompt) where seen.insert(piece).inserted && added.contains(piece) {
            var replacement = piece
            var i = 1
            while added.contains("\(piece)_\(i)") {
                replacement += " \(piece)_\(i)"
                i += 1
            }
            if i > 1 { scalars = replacingAll(scalars, Array(piece.unicodeScalars), with: Array(replacement.unicodeScalars)) }
        }
        var out = ""
        out.unicodeScalars.append(contentsOf: scalars)
        return out
    }

    /// Python's `str.replace(old, new)` on code points (`old` not empty).
    static func replacingAll(_ text: [Unicode.Scalar], _ old: [Unicode.Scalar], with new: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(text.count)
        var i = 0
        while i < text.count {
            if i + old.count <= text.count && text[i..<(i + old.count)].elementsEqual(old) {
                out.append(contentsOf: new)
                i += old.count
            } else {
                out.append(text[i])
                i += 1
            }
        }
        return out
    }

    /// The prompt as the tokenizer is to read it: expanded when there are embeddings.
    public func prompt(_ text: String, tokenizer: CLIPTokenizer) -> String {
        isEmpty ? text : Self.expand(text, tokenizer: tokenizer)
    }

    /// What tokenize records (MetadataKey.textualInversion…); empty without embeddings.
    public func metadata(firstID: Int) -> [String: String] {
        guard !isEmpty else { return [:] }
        return [
            MetadataKey.textualInversionFirstID: String(firstID),
            MetadataKey.textualInversionFiles: JSONValue.stringArray(embeddings.map(\.path)),
            MetadataKey.textualInversionTokens: JSONValue.stringArray(embeddings.map(\.token)),
            MetadataKey.textualInversionVectors: embeddings.map { String($0.vectorCount) }.joined(separator: ","),
            MetadataKey.textualInversionFingerprints: embeddings.map(\.fingerprint).joined(separator: ","),
        ]
    }

    /// encode-text's half: checks each record of token ids (its ids, row length and metadata)
    /// against these embeddings, then appends their vectors to `encoder`'s token table. Refused:
    /// embeddings other than the ones tokenize recorded (fingerprints, in order), and ids past the
    /// vocabulary without embeddings. Returns notes for stderr (embeddings given for ids that
    /// record none).
    public func prepare(_ encoder: CLIPTextModel, model: String,
                        records: [(ids: [Int32], length: Int, metadata: [String: String])]) throws -> [String] {
        try checkWidth(encoder.config.hiddenSize, model: model)
        let vocab = encoder.config.vocabSize
        let mine = embeddings.map(\.fingerprint).joined(separator: ",")
        var notes: [String] = []
        for (k, r) in records.enumerated() {
            let label = records.count > 1 ? "record \(k + 1): " : ""
            let past = r.ids.firstIndex { Int($0) >= vocab }
            guard let recorded = r.metadata[MetadataKey.textualInversionFingerprints] else {
                if let p = past, isEmpty {
                    throw ToolError("\(label)token id \(r.ids[p]) at prompt \(p / r.length + 1), position \(p % r.length) is past the vocabulary of \(vocab) — a textual-inversion token? give encode-text the --embedding options tokenize was given")
                }
                if past == nil && !isEmpty {
                    notes.append("\(label)the ids hold no textual-inversion token and name no embeddings (made without tokenize --embedding?): the --embedding vectors are unused")
                }
                continue
            }
            let files = r.metadata[MetadataKey.textualInversionFiles].flatMap(JSONValue.strings(ofArray:))?.joined(separator: " ") ?? "?"
            if recorded != mine && !(isEmpty && past == nil) {
                let given = isEmpty ? "none" : embeddings.map(\.path).joined(separator: " ")
                throw ToolError("\(label)the ids were made with tokenize --embedding \(files), encode-text was given \(given)\(isEmpty ? "" : " (other files or another order: the fingerprints differ)") — give encode-text the same --embedding files as tokenize, in the same order")
            }
            if let first = r.metadata[MetadataKey.textualInversionFirstID], first != String(vocab), !isEmpty {
                throw ToolError("\(label)the ids' textual-inversion tokens begin at id \(first), but the text encoder of \(model) has \(vocab) tokens — tokenize and encode-text with the same --model")
            }
        }
        if !isEmpty { encoder.appendTokenRows(rows) }
        return notes
    }
}
