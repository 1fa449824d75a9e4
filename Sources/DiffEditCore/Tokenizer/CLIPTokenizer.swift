import Foundation

/// CLIP's byte-level BPE tokenizer, giving the ids transformers' `CLIPTokenizer` gives.
///
/// transformers 5 implements CLIPTokenizer on the HF `tokenizers` backend (tokenization_clip.py),
/// whichever files the folder holds; its pipeline is, in order:
/// 1. special tokens (bos, eos, unk, pad and any added tokens) are cut out of the raw text first,
///    longest match leftmost (so SD 2.x's pad token `!` always becomes id 0, even inside a word);
/// 2. each remaining segment is normalised: NFC, runs of `\s` to one space, lower case
///    (per character, Unicode's unconditional mapping: no final-sigma rule);
/// 3. pre-tokenised by the regex
///    `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`,
///    keeping the matches (whitespace only separates), then by the ByteLevel step's GPT-2 regex,
///    which leaves every piece whole except the two literals (split into `<|`, word, `|>`);
/// 4. each piece's UTF-8 bytes map to GPT-2's printable byte alphabet, the last one carrying
///    `</w>`, and merge by BPE, lowest merge rank first;
/// 5. truncated to `maxLength − 2`, wrapped in bos … eos, padded with the pad id.
///
/// The `\p{L}`/`\p{N}`/`\s` classes are those of the Oniguruma regex engine inside `tokenizers`,
/// whose tables stop at Unicode 16; Swift's runtime knows Unicode 17, so characters first
/// assigned in 17 or later are treated as unassigned (neither letter nor number), as the
/// reference does. Checked over all 1,112,064 scalars, lower-casing and NFC included.
///
/// Not thread-safe: the BPE cache is shared mutable state.
public final class CLIPTokenizer {
    public struct AddedToken: Equatable {
        public var content: String
        public var id: Int32
        /// Matched against the normalised text (else the raw text, as special tokens are).
        public var normalized: Bool
    }

    /// Token string → id (the BPE vocabulary), and id → token string (added tokens too).
    public let vocab: [String: Int32]
    public private(set) var tokens: [String]
    public let bosID: Int32, eosID: Int32, padID: Int32, unkID: Int32
    public let bosToken: String, eosToken: String, padToken: String
    /// `model_max_length` from tokenizer_config.json (77 when absent or absurd).
    public let modelMaxLength: Int
    public private(set) var addedTokens: [AddedToken]

    /// (left id, right id) → rank << 32 | merged id.
    private let merges: [UInt64: UInt64]
    /// Ids of the 256 byte characters, alone and with `</w>`; -1 when not in the vocabulary.
    private var byteIDs = [Int32](repeating: -1, count: 256)
    private var byteEndIDs = [Int32](repeating: -1, count: 256)
    /// The added tokens as the splitter matches them: raw UTF-8, or normalised scalars (a
    /// normalised token's content is normalised too, as `tokenizers`' AddedVocabulary does: the
    /// added token "<My-Cat>" matches "<my-cat>" and "<MY-CAT>").
    private var rawAdded: [([UInt8], Int32)] = []
    private var normalizedAdded: [([Unicode.Scalar], Int32)] = []
    private var cache: [[UInt8]: [Int32]] = [:]

    public static let endOfWord = "</w>"
    public static let defaultMaxLength = 77

    /// GPT-2's reversible byte → printable character table: printable Latin-1 bytes map to
    /// themselves, the other 68 bytes to U+0100… in byte order.
    public static let byteCharacters: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            if printable {
                table[b] = Unicode.Scalar(UInt32(b))!
            } else {
                table[b] = Unicode.Scalar(next)!
                next += 1
            }
        }
        return table
    }()

    /// Builds a tokenizer from a vocabulary, ordered merges and the special tokens.
    public init(vocab: [String: Int32], merges: [(String, String)], bosToken: String = "<|startoftext|>",
                eosToken: String = "<|endoftext|>", unkToken: String = "<|endoftext|>",
                padToken: String = "<|endoftext|>", extraAdded: [AddedToken] = [],
                normalizedSpecials: Set<String> = [], modelMaxLength: Int = CLIPTokenizer.defaultMaxLength,
                label: String = "tokenizer") throws {
        self.vocab = vocab
        var maxID: Int32 = -1
        for (_, id) in vocab { maxID = max(maxID, id) }
        for a in extraAdded { maxID = max(maxID, a.id) }
        guard maxID < 10_000_000 else { throw ToolError("\(label): token id \(maxID) is absurdly large — corrupt vocabulary") }
        var tokens = [String](repeating: "", count: Int(maxID) + 1)
        for (t, id) in vocab {
            guard id >= 0 else { throw ToolError("\(label): token '\(t)' has negative id \(id)") }
            tokens[Int(id)] = t
        }
        for a in extraAdded where tokens[Int(a.id)].isEmpty { tokens[Int(a.id)] = a.content }

        var mergeTable: [UInt64: UInt64] = [:]
        mergeTable.reserveCapacity(merges.count)
        for (rank, (a, b)) in merges.enumerated() {
            guard let ia = vocab[a], let ib = vocab[b] else {
                throw ToolError("\(label): merge #\(rank + 1) '\(a) \(b)' uses a token missing from the vocabulary — vocab and merges are from different tokenizers")
            }
            guard let ic = vocab[a + b] else {
                throw ToolError("\(label): merge #\(rank + 1) '\(a) \(b)' makes '\(a + b)', which is not in the vocabulary — vocab and merges are from different tokenizers")
            }
            let key = UInt64(UInt32(ia)) << 32 | UInt64(UInt32(ib))
            if mergeTable[key] == nil { mergeTable[key] = UInt64(rank) << 32 | UInt64(UInt32(ic)) }
        }
        self.merges = mergeTable

        // Special tokens resolve through the added tokens first, then the vocabulary.
        var added = extraAdded
        func resolve(_ token: String, _ role: String) throws -> Int32 {
            let normalized = normalizedSpecials.contains(token)
            if let k = added.firstIndex(where: { $0.content == token }) {
                added[k].normalized = normalized
                return added[k].id
            }
            guard let id = vocab[token] else {
                throw ToolError("\(label): the \(role) token '\(token)' is not in the vocabulary — fix tokenizer_config.json or special_tokens_map.json")
            }
            added.append(AddedToken(content: token, id: id, normalized: normalized))
            return id
        }
        bosID = try resolve(bosToken, "bos")
        eosID = try resolve(eosToken, "eos")
        unkID = try resolve(unkToken, "unk")
        padID = try resolve(padToken, "pad")
        self.bosToken = bosToken
        self.eosToken = eosToken
        self.padToken = padToken
        self.tokens = tokens
        self.addedTokens = added
        self.modelMaxLength = modelMaxLength
        refreshAddedMatchers()

        for b in 0..<256 {
            let ch = String(Character(CLIPTokenizer.byteCharacters[b]))
            byteIDs[b] = vocab[ch] ?? -1
            byteEndIDs[b] = vocab[ch + CLIPTokenizer.endOfWord] ?? -1
        }
    }

    private func refreshAddedMatchers() {
        rawAdded = addedTokens.filter { !$0.normalized && !$0.content.isEmpty }.map { (Array($0.content.utf8), $0.id) }
        normalizedAdded = addedTokens.filter { $0.normalized && !$0.content.isEmpty }
            .map { (CLIPTokenizer.normalize($0.content), $0.id) }
    }

    // MARK: Added tokens

    /// The tokenizer's size, transformers' `len(tokenizer)`: the id the next added token gets.
    public var count: Int { tokens.count }

    /// Whether `token` is in the vocabulary or among the added tokens (transformers' `get_vocab()`).
    public func contains(_ token: String) -> Bool {
        vocab[token] != nil || addedTokens.contains { $0.content == token }
    }

    /// transformers' `tokenizer.add_tokens(content)` for a token not yet known: a normalised,
    /// non-special added token with the next id (`count`), matched anywhere in the text before BPE.
    @discardableResult
    public func addToken(_ content: String) -> Int32 {
        precondition(!content.isEmpty && !contains(content), "addToken needs a new, non-empty token")
        let id = Int32(tokens.count)
        tokens.append(content)
        addedTokens.append(AddedToken(content: content, id: id, normalized: true))
        refreshAddedMatchers()
        return id
    }

    /// The text of each added token found in `text`, in order, as `tokenizer.tokenize` names the
    /// piece: the raw text for a raw token, the normalised text for a normalised one ("<my-cat>"
    /// for the added token "<My-Cat>"). What diffusers' maybe_convert_prompt looks up.
    public func addedTokenPieces(_ text: String) -> [String] {
        var pieces: [String] = []
        splitAdded(Array(text.utf8), matches: rawAdded) { segment, id in
            if id != nil { pieces.append(String(decoding: segment, as: UTF8.self)); return }
            let normalized = CLIPTokenizer.normalize(String(decoding: segment, as: UTF8.self))
            splitAdded(normalized, matches: normalizedAdded) { part, id in
                guard id != nil else { return }
                var s = ""
                s.unicodeScalars.append(contentsOf: part)
                pieces.append(s)
            }
        }
        return pieces
    }

    // MARK: Encoding

    /// The content ids of `text`, without bos/eos, untruncated.
    public func encode(_ text: String) -> [Int32] {
        var out: [Int32] = []
        splitAdded(Array(text.utf8), matches: rawAdded) { segment, id in
            if let id { out.append(id); return }
            let normalized = CLIPTokenizer.normalize(String(decoding: segment, as: UTF8.self))
            splitAdded(normalized, matches: normalizedAdded) { part, id in
                if let id { out.append(id); return }
                CLIPTokenizer.preTokenize(part) { piece in
                    var bytes: [UInt8] = []
                    for s in piece { bytes.append(contentsOf: UTF8.encode(s)!) }
                    out.append(contentsOf: bpe(bytes))
                }
            }
        }
        return out
    }

    /// The model input for one prompt, as diffusers' encode_prompt asks for it
    /// (`padding="max_length", truncation=True`): bos, at most maxLength − 2 ids, eos, then
    /// pad ids up to maxLength unless `pad` is false.
    public func inputIDs(_ text: String, maxLength: Int? = nil, pad: Bool = true) -> [Int32] {
        let length = maxLength ?? modelMaxLength
        precondition(length >= 2, "maxLength must leave room for bos and eos")
        let content = encode(text)
        var ids = [bosID]
        ids.append(contentsOf: content.prefix(length - 2))
        ids.append(eosID)
        if pad && ids.count < length { ids.append(contentsOf: repeatElement(padID, count: length - ids.count)) }
        return ids
    }

    /// The token string of an id, or nil when the id is outside the vocabulary.
    public func token(_ id: Int32) -> String? {
        guard id >= 0, Int(id) < tokens.count, !tokens[Int(id)].isEmpty else { return nil }
        return tokens[Int(id)]
    }

    /// Cuts `text` at the leftmost-longest occurrences of the added tokens, calling `body` with
    /// each plain segment (id nil) and each added token (its text and id), in order. Matching on UTF-8
    /// bytes is safe: a valid pattern can only match at character boundaries.
    private func splitAdded<T: Equatable>(_ text: [T], matches: [([T], Int32)], _ body: ([T], Int32?) -> Void) {
        if matches.isEmpty { if !text.isEmpty { body(text, nil) }; return }
        var start = 0, i = 0
        while i < text.count {
            var best = -1, bestLen = 0
            for (k, m) in matches.enumerated() where m.0.count > bestLen && i + m.0.count <= text.count {
                var same = true
                for j in 0..<m.0.count where text[i + j] != m.0[j] { same = false; break }
                if same { best = k; bestLen = m.0.count }
            }
            if best >= 0 {
                if start < i { body(Array(text[start..<i]), nil) }
                body(Array(text[i..<(i + bestLen)]), matches[best].1)
                i += bestLen
                start = i
            } else {
                i += 1
            }
        }
        if start < text.count { body(Array(text[start...]), nil) }
    }

    /// NFC, whitespace runs to one space, per-character lower case.
    public static func normalize(_ text: String) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(text.utf8.count)
        let isASCII = text.utf8.allSatisfy { $0 < 0x80 }
        // NFC leaves pure ASCII unchanged; skip Foundation's pass for it.
        let composed = isASCII ? text : text.precomposedStringWithCanonicalMapping
        var lastWasSpace = false
        for u in composed.unicodeScalars {
            if classify(u) == .space {
                if !lastWasSpace { out.append(" ") }
                lastWasSpace = true
                continue
            }
            lastWasSpace = false
            if u.value < 0x80 {
                out.append(u.value >= 0x41 && u.value <= 0x5A ? Unicode.Scalar(u.value + 32)! : u)
            } else if u.properties.changesWhenLowercased {
                out.append(contentsOf: u.properties.lowercaseMapping.unicodeScalars)
            } else {
                out.append(u)
            }
        }
        return out
    }

    public enum CharacterClass { case space, letter, number, other }

    /// `\s`, `\p{L}`, `\p{N}` as the reference's regex engine sees them (see the type's notes).
    @inline(__always)
    public static func classify(_ u: Unicode.Scalar) -> CharacterClass {
        let v = u.value
        if v < 0x80 {
            if (v >= 0x61 && v <= 0x7A) || (v >= 0x41 && v <= 0x5A) { return .letter }
            if v >= 0x30 && v <= 0x39 { return .number }
            if v == 0x20 || (v >= 0x09 && v <= 0x0D) { return .space }
            return .other
        }
        let p = u.properties
        if p.isWhitespace { return .space }
        let cls: CharacterClass
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: cls = .letter
        case .decimalNumber, .letterNumber, .otherNumber: cls = .number
        default: return .other
        }
        if let age = p.age, age.major > 16 { return .other }
        return cls
    }

    private static let specialLiterals: [[Unicode.Scalar]] = [
        Array("<|startoftext|>".unicodeScalars), Array("<|endoftext|>".unicodeScalars),
    ]
    private static let contractionTails: [[Unicode.Scalar]] = ["s", "t", "re", "ve", "m", "ll", "d"].map { Array($0.unicodeScalars) }

    /// The pre-tokeniser regex, leftmost-first alternation, matches kept.
    public static func preTokenize(_ s: [Unicode.Scalar], _ body: (ArraySlice<Unicode.Scalar>) -> Void) {
        var i = 0
        let n = s.count
        func hasPrefix(_ p: [Unicode.Scalar], at i: Int) -> Bool {
            guard i + p.count <= n else { return false }
            for j in 0..<p.count where s[i + j] != p[j] { return false }
            return true
        }
        outer: while i < n {
            let c = s[i]
            let cls = classify(c)
            if cls == .space { i += 1; continue }
            if c == "<" {
                // The literal bounds a piece, which the ByteLevel step's own GPT-2 regex then
                // splits into "<|", the word and "|>".
                for lit in specialLiterals where hasPrefix(lit, at: i) {
                    body(s[i..<(i + 2)])
                    body(s[(i + 2)..<(i + lit.count - 2)])
                    body(s[(i + lit.count - 2)..<(i + lit.count)])
                    i += lit.count
                    continue outer
                }
            }
            if c == "'" {
                for tail in contractionTails where hasPrefix(tail, at: i + 1) {
                    body(s[i..<(i + 1 + tail.count)])
                    i += 1 + tail.count
                    continue outer
                }
            }
            var j = i + 1
            switch cls {
            case .letter:
                while j < n && classify(s[j]) == .letter { j += 1 }
            case .number:
                break
            default:
                while j < n && classify(s[j]) == .other { j += 1 }
            }
            body(s[i..<j])
            i = j
        }
    }

    /// BPE over one pre-token's bytes: start from byte characters (the last with `</w>`) and
    /// merge the adjacent pair of lowest rank, leftmost first, until none is in the merge table
    /// (the order `tokenizers`' Word::merge_all applies them in). A heap of candidate pairs
    /// keyed by (rank, position) over a linked list of symbols keeps a hostile 1 MB "word"
    /// at O(n log n).
    public func bpe(_ bytes: [UInt8]) -> [Int32] {
        if bytes.isEmpty { return [] }
        if let hit = cache[bytes] { return hit }
        let n = bytes.count
        var symbols = [Int32](repeating: 0, count: n)
        for (k, b) in bytes.enumerated() {
            let id = k == n - 1 ? byteEndIDs[Int(b)] : byteIDs[Int(b)]
            symbols[k] = id >= 0 ? id : unkID
        }
        var result: [Int32]
        if n == 1 {
            result = symbols
        } else {
            var next = (0..<n).map { $0 + 1 }      // n: none
            var prev = (0..<n).map { $0 - 1 }      // -1: none
            var alive = [Bool](repeating: true, count: n)
            var heap = PairHeap()
            func push(_ at: Int) {
                let b = next[at]
                guard b < n else { return }
                let key = UInt64(UInt32(bitPattern: symbols[at])) << 32 | UInt64(UInt32(bitPattern: symbols[b]))
                if let m = merges[key] {
                    heap.push(.init(order: (m >> 32) << 32 | UInt64(at), left: symbols[at], right: symbols[b],
                                    merged: Int32(truncatingIfNeeded: m & 0xFFFF_FFFF)))
                }
            }
            for k in 0..<(n - 1) { push(k) }
            while let top = heap.pop() {
                let at = Int(top.order & 0xFFFF_FFFF)
                // Skip candidates made stale by an earlier merge.
                guard alive[at], symbols[at] == top.left, next[at] < n, symbols[next[at]] == top.right else { continue }
                let gone = next[at]
                symbols[at] = top.merged
                alive[gone] = false
                next[at] = next[gone]
                if next[at] < n { prev[next[at]] = at }
                if prev[at] >= 0 { push(prev[at]) }
                push(at)
            }
            result = []
            var k = 0
            while k < n { result.append(symbols[k]); k = next[k] }
        }
        if cache.count > 100_000 { cache.removeAll(keepingCapacity: true) }
        cache[bytes] = result
        return result
    }
}

/// A binary min-heap of BPE merge candidates ordered by (rank, position).
struct PairHeap {
    struct Candidate {
        var order: UInt64
        var left: Int32, right: Int32, merged: Int32
    }
    private var items: [Candidate] = []

    mutating func push(_ c: Candidate) {
        items.append(c)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if items[parent].order <= items[i].order { break }
            items.swapAt(parent, i)
            i = parent
        }
    }

    mutating func pop() -> Candidate? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < items.count && items[l].order < items[m].order { m = l }
                if r < items.count && items[r].order < items[m].order { m = r }
                if m == i { break }
                items.swapAt(i, m)
                i = m
            }
        }
        return top
    }
}
