/// Reading and writing the tensor stream format, `man 5 diffedit-tensor`.
///
///     DIFFEDIT-TENSOR 1
///     name=latents
///     dtype=f32
///     shape=1 4 64 64
///     model=sd15            <- metadata, keys sorted
///     # comments anywhere after the magic line
///                           <- an empty line ends the header
///     "\n" padding so the data starts at a multiple of 64 bytes from the record start
///     data, little-endian C order, then zero padding to a multiple of 64 bytes
public enum TensorStream {
    public static let magic = "DIFFEDIT-TENSOR"
    public static let version = 1
    public static let alignment = 64

    /// Hard limits, checked before anything is allocated.
    public static let maxHeaderBytes = 1 << 20
    public static let maxRank = 8
    public static let maxDataBytes = 1 << 40

    /// Reads every record of the stream at `path` ("-" is stdin).
    public static func readAll(path: String) throws -> [TensorRecord] {
        let reader = try TensorStreamReader(path: path)
        return try reader.readAll()
    }

    /// The bytes of one record.
    public static func encode(_ record: TensorRecord) -> [UInt8] {
        var header = "\(magic) \(version)\n"
        header += "name=\(escape(record.name))\n"
        header += "dtype=\(record.dtype.rawValue)\n"
        header += "shape=\(record.shape.map(String.init).joined(separator: " "))\n"
        for key in record.metadata.keys.sorted(by: { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }) {
            header += "\(key)=\(escape(record.metadata[key]!))\n"
        }
        header += "\n"
        var out = Array(header.utf8)
        out.append(contentsOf: repeatElement(0x0A, count: padding(out.count)))
        out.append(contentsOf: record.bytes)
        out.append(contentsOf: repeatElement(0, count: padding(record.bytes.count)))
        return out
    }

    static func padding(_ n: Int) -> Int { (alignment - n % alignment) % alignment }

    /// Backslash and newline are escaped in names and values.
    public static func escape(_ s: String) -> String {
        guard s.contains(where: { $0 == "\\" || $0 == "\n" || $0 == "\r" }) else { return s }
        var out = ""
        for ch in s {
            switch ch {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            default: out.append(ch)
            }
        }
        return out
    }

    public static func unescape(_ s: Substring) throws -> String {
        guard s.contains("\\") else { return String(s) }
        var out = ""
        var it = s.makeIterator()
        while let ch = it.next() {
            if ch != "\\" { out.append(ch); continue }
            switch it.next() {
            case "\\": out += "\\"
            case "n": out += "\n"
            case "r": out += "\r"
            default: throw ToolError("bad escape in header value '\(s.prefix(40))' — only \\\\, \\n and \\r are escapes")
            }
        }
        return out
    }

    /// Metadata keys: [A-Za-z0-9_.-]+
    public static func isValidKey<S: StringProtocol>(_ key: S) -> Bool {
        !key.isEmpty && key.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
                || c == 0x5F || c == 0x2E || c == 0x2D
        }
    }
}

/// Reads records one by one from a stream; `TensorStreamReader.next()` returns nil at a clean
/// end of stream (EOF exactly at a record boundary).
public final class TensorStreamReader {
    public let input: ByteReader
    private var recordIndex = 0

    public init(_ input: ByteReader) { self.input = input }

    public convenience init(path: String) throws {
        self.init(try ByteReader(path: path))
    }

    public var label: String { input.label }

    public func readAll() throws -> [TensorRecord] {
        var out: [TensorRecord] = []
        while let r = try next() { out.append(r) }
        return out
    }

    /// Like `readAll` but an empty stream is an error naming what was expected.
    public func readAllNonEmpty(expecting what: String) throws -> [TensorRecord] {
        let all = try readAll()
        if all.isEmpty { throw ToolError("\(label): empty input, expected \(what) — did the stage before this one fail?") }
        return all
    }

    public func next() throws -> TensorRecord? {
        let where_ = "\(label): record \(recordIndex)"
        let recordStart = input.offset
        guard let first = try input.readLine(limit: 64) else { return nil }
        let magicLine = String(decoding: first, as: UTF8.self)
        guard magicLine.hasPrefix(TensorStream.magic) else {
            if recordIndex == 0 {
                throw ToolError("\(label): not a tensor stream (no \(TensorStream.magic) magic) — feed the output of a diffedit tool, or convert with 'tensor from-npy'")
            }
            throw ToolError("\(where_): trailing garbage after the last record (no \(TensorStream.magic) magic) — remove the bytes after the last record; was something else appended to the stream?")
        }
        guard magicLine == "\(TensorStream.magic) \(TensorStream.version)" else {
            throw ToolError("\(where_): unsupported format version '\(magicLine)' — this tool reads '\(TensorStream.magic) \(TensorStream.version)'")
        }
        var name: String?
        var dtype: DType?
        var shape: [Int]?
        var metadata: [String: String] = [:]
        while true {
            let used = input.offset - recordStart
            guard let raw = try input.readLine(limit: TensorStream.maxHeaderBytes) else {
                throw ToolError.truncated(label, "in the header of record \(recordIndex) (no empty line ends it)")
            }
            if input.offset - recordStart > TensorStream.maxHeaderBytes || used > TensorStream.maxHeaderBytes {
                throw ToolError("\(where_): header longer than \(TensorStream.maxHeaderBytes) bytes — corrupt stream")
            }
            if raw.isEmpty { break }
            if raw.first == UInt8(ascii: "#") { continue }
            guard let line = String(validatingUTF8: raw.map { CChar(bitPattern: $0) } + [0]) else {
                throw corrupt(where_, "header line is not valid UTF-8")
            }
            guard let eq = line.firstIndex(of: "=") else {
                throw corrupt(where_, "header line '\(line.prefix(40))' is not key=value")
            }
            let key = line[..<eq]
            let value = line[line.index(after: eq)...]
            guard TensorStream.isValidKey(key) else {
                throw corrupt(where_, "bad header key '\(key.prefix(40))'")
            }
            // Every key appears at most once (man 5): a repeated name, dtype or shape would
            // otherwise let the last one win silently.
            if (key == "name" && name != nil) || (key == "dtype" && dtype != nil) || (key == "shape" && shape != nil) {
                throw corrupt(where_, "header key '\(key)' appears twice")
            }
            switch key {
            case "name": name = try unescape(value, where_)
            case "dtype":
                guard let d = DType(rawValue: String(value)) else {
                    throw corrupt(where_, "unknown dtype '\(value.prefix(20))' (known: \(DType.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                dtype = d
            case "shape": shape = try parseShape(value, where_)
            default:
                if metadata[String(key)] != nil {
                    throw corrupt(where_, "metadata key '\(key)' appears twice")
                }
                metadata[String(key)] = try unescape(value, where_)
            }
        }
        guard let name else { throw corrupt(where_, "header has no name= line") }
        guard let dtype else { throw corrupt(where_, "header has no dtype= line") }
        guard let shape else { throw corrupt(where_, "header has no shape= line") }

        // Element count and byte length, with overflow checks before any allocation.
        var count = 1
        for d in shape {
            let (c, o) = count.multipliedReportingOverflow(by: d)
            guard !o else { throw corrupt(where_, "shape \(shape) overflows the element count") }
            count = c
        }
        let (nbytes, o) = count.multipliedReportingOverflow(by: dtype.size)
        guard !o, nbytes <= TensorStream.maxDataBytes else {
            throw corrupt(where_, "shape \(shape.map(String.init).joined(separator: "x")) declares \(o ? "more than 2^63" : String(nbytes)) bytes, past the format's limit of 2^40")
        }

        // Padding up to the 64-byte data alignment: newlines only.
        let pad = TensorStream.padding(input.offset - recordStart)
        if pad > 0 {
            var padBytes = [UInt8](repeating: 0, count: pad)
            try padBytes.withUnsafeMutableBytes { try input.readExactly(into: $0, what: "in the header padding of record \(recordIndex)") }
            guard padBytes.allSatisfy({ $0 == 0x0A }) else {
                throw ToolError("\(where_): header padding holds bytes other than newlines — corrupt stream")
            }
        }
        let bytes = try input.readBytes(nbytes, what: "in the data of record \(recordIndex) '\(name)'")
        let tail = TensorStream.padding(nbytes)
        if tail > 0 {
            var padBytes = [UInt8](repeating: 0, count: tail)
            try padBytes.withUnsafeMutableBytes { try input.readExactly(into: $0, what: "in the padding after record \(recordIndex) '\(name)'") }
        }
        recordIndex += 1
        return TensorRecord(name: name, dtype: dtype, shape: shape, metadata: metadata, bytes: bytes)
    }

    /// A malformed record: "stdin: record 2: problem — what to do", as every stream error reads.
    private func corrupt(_ where_: String, _ problem: String) -> ToolError {
        ToolError("\(where_): \(problem) — the stream is corrupt or not written by a diffedit tool; remake it with the stage that produced it")
    }

    private func unescape(_ value: Substring, _ where_: String) throws -> String {
        do { return try TensorStream.unescape(value) } catch let e as ToolError {
            throw corrupt(where_, e.message.components(separatedBy: " — ")[0])
        }
    }

    private func parseShape(_ value: Substring, _ where_: String) throws -> [Int] {
        let parts = value.split(separator: " ", omittingEmptySubsequences: true)
        guard parts.count <= TensorStream.maxRank else {
            throw corrupt(where_, "rank \(parts.count) is past the limit of \(TensorStream.maxRank)")
        }
        return try parts.map { p in
            guard p.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), p.count <= 19, let d = Int(p) else {
                throw corrupt(where_, "bad dimension '\(p.prefix(24))' in shape (need non-negative integers)")
            }
            return d
        }
    }
}

/// Writes records to a descriptor.
public final class TensorStreamWriter {
    public let output: ByteWriter
    /// Refuse records holding NaN or ±Inf the tool produced itself (see NonfiniteOutput).
    public var refusesProducedNonfinite = false

    public init(_ output: ByteWriter) { self.output = output }

    public func write(_ record: TensorRecord) throws {
        if refusesProducedNonfinite && record.dtype.isFloatingPoint {
            try NonfiniteOutput.check(record.floats(), what: "record '\(record.name)'")
        }
        try output.write(TensorStream.encode(record))
    }

    public func flush() throws { try output.flush() }
}
