#if canImport(Glibc)
import Glibc
#endif

/// A JSON document as a value tree, read by a small byte-level parser. Tokenizer files are large
/// (vocab.json has 49408 entries, tokenizer.json 3.6 MB): Foundation's JSONSerialization takes
/// ~150 ms on them and boxes every value; this reader takes a few milliseconds and rejects
/// malformed or hostile input (bad UTF-8, absurd nesting) with a message naming the byte offset.
public indirect enum JSONValue: Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    /// Members in file order: no hashing while parsing a 49408-member vocabulary.
    case object([(String, JSONValue)])

    /// Nesting deeper than this is refused instead of recursing without bound.
    public static let maxDepth = 256

    /// Why a document was refused, and where: `duplicateKey` is set when an object names one
    /// member twice (valid JSON, RFC 8259 §4, but readers then disagree on which value counts).
    public struct SyntaxError: Error {
        public let what: String
        public let offset: Int
        public let duplicateKey: String?
    }

    /// Parses a whole document; `label` names the file in errors, `remedy` says what to do.
    /// `refusingDuplicateKeys`: an object that names a member twice is refused (Python's json and
    /// Foundation silently keep the last one, so two readers of one file could see two values).
    public static func parse(_ bytes: [UInt8], label: String, refusingDuplicateKeys: Bool = false,
                             remedy: String = "the file is corrupt or truncated") throws -> JSONValue {
        do {
            return try parseDocument(bytes, refusingDuplicateKeys: refusingDuplicateKeys)
        } catch let e as SyntaxError {
            if let key = e.duplicateKey {
                throw ToolError("\(label): key '\(shown(key))' appears twice in one object (byte \(e.offset)) — \(remedy)")
            }
            throw ToolError("\(label) is not valid JSON: \(e.what) at byte \(e.offset) — \(remedy)")
        }
    }

    /// `parse` throwing a `SyntaxError`, for callers that word the message themselves.
    public static func parseDocument(_ bytes: [UInt8], refusingDuplicateKeys: Bool = false) throws -> JSONValue {
        try bytes.withUnsafeBufferPointer { buf in
            var p = JSONParser(bytes: buf, refusingDuplicateKeys: refusingDuplicateKeys)
            p.skipSpace()
            let v = try p.value(depth: 0)
            p.skipSpace()
            guard p.i == buf.count else { throw p.error("unexpected data after the JSON value") }
            return v
        }
    }

    /// A key or string as a message shows it: one line (control characters as '?'), at most 80
    /// characters.
    public static func shown(_ s: String) -> String {
        let scalars = s.unicodeScalars.prefix(80).map { $0.value < 0x20 || $0.value == 0x7F ? "?" : $0 }
        return String(String.UnicodeScalarView(scalars)) + (s.unicodeScalars.count > 80 ? "…" : "")
    }

    /// A JSON array of strings, on one line (control characters escaped): how tools keep a list
    /// of prompts or file names in a record's metadata.
    public static func stringArray(_ strings: [String]) -> String {
        var out = "["
        for (k, s) in strings.enumerated() {
            if k > 0 { out += "," }
            out += "\""
            for u in s.unicodeScalars {
                switch u {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                default:
                    if u.value < 0x20 || u.value == 0x7F {
                        let h = String(u.value, radix: 16)
                        out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
                    } else {
                        out.unicodeScalars.append(u)
                    }
                }
            }
            out += "\""
        }
        return out + "]"
    }

    /// The strings of a JSON array of strings (`stringArray`'s output), nil for anything else.
    public static func strings(ofArray text: String) -> [String]? {
        guard let v = try? parseDocument(Array(text.utf8)), let items = v.arrayValue else { return nil }
        let strings = items.compactMap(\.stringValue)
        return strings.count == items.count ? strings : nil
    }

    /// The member named `key` (the last one, if the name repeats).
    public subscript(key: String) -> JSONValue? {
        if case .object(let o) = self { return o.last(where: { $0.0 == key })?.1 }
        return nil
    }

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case (.bool(let x), .bool(let y)): return x == y
        case (.number(let x), .number(let y)): return x == y
        case (.string(let x), .string(let y)): return x == y
        case (.array(let x), .array(let y)): return x == y
        case (.object(let x), .object(let y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    public var stringValue: String? { if case .string(let s) = self { return s }; return nil }
    public var objectValue: [(String, JSONValue)]? { if case .object(let o) = self { return o }; return nil }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a }; return nil }
    public var boolValue: Bool? { if case .bool(let b) = self { return b }; return nil }
    /// The number as an Int when it is integral and in range.
    public var intValue: Int? {
        if case .number(let d) = self, d == d.rounded(), abs(d) < 9.0e15 { return Int(d) }
        return nil
    }
    public var doubleValue: Double? { if case .number(let d) = self { return d }; return nil }
}

private struct JSONParser {
    let bytes: UnsafeBufferPointer<UInt8>
    let refusingDuplicateKeys: Bool
    var i = 0

    init(bytes: UnsafeBufferPointer<UInt8>, refusingDuplicateKeys: Bool) {
        self.bytes = bytes
        self.refusingDuplicateKeys = refusingDuplicateKeys
    }

    func error(_ what: String) -> JSONValue.SyntaxError {
        JSONValue.SyntaxError(what: what, offset: i, duplicateKey: nil)
    }

    mutating func skipSpace() {
        while i < bytes.count {
            switch bytes[i] {
            case 0x20, 0x09, 0x0A, 0x0D: i += 1
            default: return
            }
        }
    }

    mutating func expect(_ literal: StaticString, _ result: JSONValue) throws -> JSONValue {
        let n = literal.utf8CodeUnitCount
        guard i + n <= bytes.count else { throw error("truncated literal") }
        for k in 0..<n where bytes[i + k] != literal.utf8Start[k] { throw error("unknown literal") }
        i += n
        return result
    }

    mutating func value(depth: Int) throws -> JSONValue {
        guard depth < JSONValue.maxDepth else { throw error("nesting deeper than \(JSONValue.maxDepth)") }
        guard i < bytes.count else { throw error("unexpected end of file") }
        switch bytes[i] {
        case UInt8(ascii: "{"):
            i += 1
            var obj: [(String, JSONValue)] = []
            var seen = Set<String>()
            skipSpace()
            if i < bytes.count && bytes[i] == UInt8(ascii: "}") { i += 1; return .object(obj) }
            while true {
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw error("expected a string key") }
                let keyStart = i
                let key = try string()
                if refusingDuplicateKeys && !seen.insert(key).inserted {
                    throw JSONValue.SyntaxError(what: "duplicate key", offset: keyStart, duplicateKey: key)
                }
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw error("expected ':'") }
                i += 1
                skipSpace()
                obj.append((key, try value(depth: depth + 1)))
                skipSpace()
                guard i < bytes.count else { throw error("unexpected end of file in an object") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(obj) }
                throw error("expected ',' or '}'")
            }
        case UInt8(ascii: "["):
            i += 1
            var arr: [JSONValue] = []
            skipSpace()
            if i < bytes.count && bytes[i] == UInt8(ascii: "]") { i += 1; return .array(arr) }
            while true {
                skipSpace()
                arr.append(try value(depth: depth + 1))
                skipSpace()
                guard i < bytes.count else { throw error("unexpected end of file in an array") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(arr) }
                throw error("expected ',' or ']'")
            }
        case UInt8(ascii: "\""):
            return .string(try string())
        case UInt8(ascii: "t"): return try expect("true", .bool(true))
        case UInt8(ascii: "f"): return try expect("false", .bool(false))
        case UInt8(ascii: "n"): return try expect("null", .null)
        default:
            return .number(try number())
        }
    }

    mutating func number() throws -> Double {
        let start = i
        func digits() -> Int {
            var n = 0
            while i < bytes.count, bytes[i] >= 0x30, bytes[i] <= 0x39 { i += 1; n += 1 }
            return n
        }
        // JSON's number grammar (RFC 8259 §6), as Python's json and serde_json read it: an
        // optional '-', no leading zeros, digits after '.', digits after the exponent's sign.
        var neg = false
        if i < bytes.count && bytes[i] == UInt8(ascii: "-") { neg = true; i += 1 }
        let intStart = i
        let intDigits = digits()
        guard intDigits > 0 else { i = start; throw error("expected a value") }
        guard intDigits == 1 || bytes[intStart] != UInt8(ascii: "0") else { i = start; throw error("bad number (leading zero)") }
        var integral = true
        if i < bytes.count && bytes[i] == UInt8(ascii: ".") {
            i += 1
            integral = false
            guard digits() > 0 else { i = start; throw error("bad number") }
        }
        if i < bytes.count && (bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E")) {
            i += 1
            integral = false
            if i < bytes.count && (bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-")) { i += 1 }
            guard digits() > 0 else { i = start; throw error("bad number") }
        }
        // Integer fast path (token ids).
        if integral && intDigits <= 15 {
            var v: Int64 = 0
            for k in intStart..<i { v = v * 10 + Int64(bytes[k] - 0x30) }
            return Double(neg ? -v : v)
        }
        guard i - start < 64 else { i = start; throw error("bad number (too long)") }
        var text = [CChar](repeating: 0, count: i - start + 1)
        for k in start..<i { text[k - start] = CChar(bitPattern: bytes[k]) }
        let d = strtod(text, nil)
        guard d.isFinite else { i = start; throw error("bad number (out of range)") }
        return d
    }

    mutating func hex4() throws -> UInt32 {
        guard i + 4 <= bytes.count else { throw error("truncated \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[i]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: throw error("bad \\u escape")
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }

    /// A string starting at the opening quote.
    mutating func string() throws -> String {
        i += 1
        let start = i
        // Fast path: no escapes.
        while i < bytes.count {
            let c = bytes[i]
            if c == UInt8(ascii: "\"") {
                guard let s = String(validating: UnsafeBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self) else {
                    throw error("string is not valid UTF-8")
                }
                i += 1
                return s
            }
            if c == UInt8(ascii: "\\") { break }
            if c < 0x20 { throw error("control character in a string") }
            i += 1
        }
        var out = [UInt8](bytes[start..<i])
        while i < bytes.count {
            let c = bytes[i]
            if c == UInt8(ascii: "\"") {
                i += 1
                guard let s = String(validating: out, as: UTF8.self) else { throw error("string is not valid UTF-8") }
                return s
            }
            if c < 0x20 { throw error("control character in a string") }
            if c != UInt8(ascii: "\\") { out.append(c); i += 1; continue }
            i += 1
            guard i < bytes.count else { break }
            let e = bytes[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var cp = try hex4()
                if cp >= 0xD800 && cp < 0xDC00 {
                    // A high surrogate must be followed by an escaped low surrogate.
                    guard i + 2 <= bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                        throw error("unpaired surrogate in \\u escape")
                    }
                    i += 2
                    let lo = try hex4()
                    guard lo >= 0xDC00 && lo < 0xE000 else { throw error("unpaired surrogate in \\u escape") }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                } else if cp >= 0xDC00 && cp < 0xE000 {
                    throw error("unpaired surrogate in \\u escape")
                }
                out.append(contentsOf: Array(String(Character(Unicode.Scalar(cp)!)).utf8))
            default:
                throw error("bad escape '\\\(Character(Unicode.Scalar(e)))'")
            }
        }
        throw error("unterminated string")
    }
}
