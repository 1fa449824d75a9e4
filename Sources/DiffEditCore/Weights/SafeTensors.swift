#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A memory-mapped `.safetensors` file: an 8-byte little-endian header length, a JSON header
/// naming each tensor's dtype, shape and [begin, end) byte range, then the data. Every field is
/// checked before it is trusted: a hostile header can only produce an error.
///
/// The header is read exactly as the reference reads it — huggingface/safetensors'
/// `SafeTensors::deserialize` (safetensors/src/tensor.rs), which `safetensors.safe_open` and
/// diffusers use — so that no file means one set of weights to a scanner or to Python and another
/// here: a key given twice, data ranges that do not tile the data section from its first byte to
/// its last, bytes before the opening '{' (a byte-order mark), metadata that is not string →
/// string, a byte count that is not shape × dtype size: each is refused.
public final class SafeTensorsFile {
    public enum DataType: String, Sendable {
        case F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL

        public var size: Int {
            switch self {
            case .F64, .I64: return 8
            case .F32, .I32: return 4
            case .F16, .BF16, .I16: return 2
            case .I8, .U8, .BOOL: return 1
            }
        }
    }

    public struct Entry: Sendable {
        public let name: String
        public let dtype: DataType
        public let shape: [Int]
        /// Byte range relative to the start of the data section.
        public let begin: Int
        public let end: Int
        public var count: Int { shape.reduce(1, *) }
    }

    /// The reference's MAX_HEADER_SIZE (HeaderTooLarge past it).
    public static let maxHeaderBytes = 100_000_000

    public let path: String
    public let entries: [String: Entry]
    /// The `__metadata__` object, if any.
    public let metadata: [String: String]
    private let base: UnsafeRawPointer
    private let mappedLength: Int
    private let dataStart: Int

    public init(path: String) throws {
        self.path = path
        // Opened without blocking and refused unless a regular file: open(2) on a FIFO in place of
        // the weights would wait for ever for a writer.
        let fd = try InputFile.open(path, what: "weights")
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw ToolError("cannot read weights '\(path)': \(String(cString: strerror(errno))) — check the path")
        }
        let size = Int(st.st_size)
        guard size >= 8 else {  // HeaderTooSmall
            throw ToolError("'\(path)': \(size) bytes is too short for a safetensors file — the file is truncated or not safetensors")
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw ToolError("cannot map '\(path)': \(String(cString: strerror(errno))) — check the file and the memory limit (ulimit -v)")
        }
        let raw = UnsafeRawPointer(p)
        let headerLength = raw.loadUnaligned(as: UInt64.self).littleEndian
        func fail(_ why: String) -> ToolError {
            munmap(p, size)
            return ToolError("'\(path)': corrupt safetensors header: \(why) — re-export or re-download the weights")
        }
        guard headerLength <= UInt64(size - 8) else {  // InvalidHeaderLength
            throw fail("header length \(headerLength) runs past the end of the \(size)-byte file")
        }
        guard headerLength <= UInt64(SafeTensorsFile.maxHeaderBytes) else {  // HeaderTooLarge
            throw fail("header length \(headerLength) is past the limit of \(SafeTensorsFile.maxHeaderBytes) bytes")
        }
        let header = [UInt8](UnsafeRawBufferPointer(start: raw + 8, count: Int(headerLength)))
        guard String(validating: header, as: UTF8.self) != nil else { throw fail("header is not UTF-8") }  // InvalidHeader
        // InvalidHeaderStart: the header is a JSON object from its first byte (no byte-order mark,
        // no leading space); only spaces may pad its end, as the reference writes them.
        guard header.first == UInt8(ascii: "{") else {
            let start = header.starts(with: [0xEF, 0xBB, 0xBF]) ? "a UTF-8 byte-order mark"
                : header.first.map { (0x21...0x7E).contains($0) ? "'\(Character(Unicode.Scalar($0)))'" : "byte 0x" + String($0, radix: 16, uppercase: true) } ?? "nothing"
            throw fail("header is not a JSON object: it starts with \(start), not '{'")
        }
        let json: JSONValue
        do {
            // serde refuses a repeated field inside an entry; a repeated tensor name would be kept
            // once by the reference's map and once by a scanner's: refused at any depth.
            json = try JSONValue.parseDocument(header, refusingDuplicateKeys: true)
        } catch let e as JSONValue.SyntaxError {
            if let key = e.duplicateKey {
                throw fail("key '\(JSONValue.shown(key))' appears twice (byte \(e.offset)), so readers disagree on which tensor it is")
            }
            throw fail("header is not valid JSON: \(e.what) at byte \(e.offset)")  // InvalidHeaderDeserialization
        }
        guard case .object(let members) = json else { throw fail("header is not a JSON object") }
        let dataStart = 8 + Int(headerLength)
        let dataSize = size - dataStart
        /// A non-negative integer as serde reads a usize (doubles are exact below 2^53).
        func count(_ v: JSONValue?) -> Int? {
            guard case .number(let d)? = v, d == d.rounded(), d >= 0, d < 9.0e15 else { return nil }
            return Int(d)
        }
        var entries: [String: Entry] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in members {
            let shownName = JSONValue.shown(name)
            if name == "__metadata__" {
                // Option<HashMap<String, String>>: null (none) or an object of strings.
                switch value {
                case .null: continue
                case .object(let m):
                    for (k, v) in m {
                        guard case .string(let s) = v else {
                            throw fail("__metadata__ value '\(JSONValue.shown(k))' is not a string (metadata maps strings to strings)")
                        }
                        metadata[k] = s
                    }
                default:
                    throw fail("__metadata__ is not an object of strings")
                }
                continue
            }
            guard case .object = value else { throw fail("entry '\(shownName)' is not an object") }
            // Unknown fields are ignored, as serde does.
            guard let dt = value["dtype"] else { throw fail("entry '\(shownName)' has no dtype") }
            guard let dts = dt.stringValue, let dtype = DataType(rawValue: dts) else {
                throw fail("entry '\(shownName)' has unknown dtype '\(JSONValue.shown(dt.stringValue ?? "\(dt)"))'")
            }
            guard let shapeValues = value["shape"]?.arrayValue else { throw fail("entry '\(shownName)' has no shape") }
            var shape: [Int] = []
            var elements = 1
            for d in shapeValues {
                guard let n = count(d) else { throw fail("entry '\(shownName)' has a bad dimension \(d)") }
                shape.append(n)
                let (c, o) = elements.multipliedReportingOverflow(by: n)
                guard !o else { throw fail("entry '\(shownName)' has an absurd shape \(shape): its size overflows") }  // ValidationOverflow
                elements = c
            }
            let (bytes, o) = elements.multipliedReportingOverflow(by: dtype.size)
            guard !o else { throw fail("entry '\(shownName)' has an absurd shape \(shape): its size overflows") }
            guard let offs = value["data_offsets"]?.arrayValue, offs.count == 2, let b = count(offs[0]), let e = count(offs[1]), e >= b else {
                throw fail("entry '\(shownName)' has bad data_offsets")
            }
            guard e <= dataSize else {
                throw fail("entry '\(shownName)' data [\(b), \(e)) runs past the \(dataSize) data bytes")
            }
            guard e - b == bytes else {  // TensorInvalidInfo
                throw fail("entry '\(shownName)' holds \(e - b) bytes but shape \(shape) of \(dts) needs \(bytes)")
            }
            entries[name] = Entry(name: name, dtype: dtype, shape: shape, begin: b, end: e)
        }
        // Metadata::validate: sorted by offsets, each range begins where the one before it ends,
        // from byte 0; and the last ends at the end of the file (MetadataIncompleteBuffer). No
        // overlap, no gap, no trailing bytes: every data byte belongs to exactly one tensor.
        let sorted = entries.values.sorted { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }
        var end = 0, previous: String? = nil
        for e in sorted {
            let shown = JSONValue.shown(e.name)
            if e.begin < end {
                throw fail("entries '\(JSONValue.shown(previous ?? ""))' and '\(shown)' overlap")
            }
            if e.begin > end {  // InvalidOffset
                throw fail("entry '\(shown)' begins at data byte \(e.begin), but \(previous.map { "'\(JSONValue.shown($0))' ends at \(end)" } ?? "the data begins at 0"): \(e.begin - end) bytes belong to no tensor")
            }
            end = e.end
            previous = e.name
        }
        guard end == dataSize else {
            throw fail("the tensors' data ends at byte \(end) of the \(dataSize)-byte data section: \(dataSize - end) trailing bytes belong to no tensor")
        }
        self.entries = entries
        self.metadata = metadata
        self.base = raw
        self.mappedLength = size
        self.dataStart = dataStart
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), mappedLength) }

    public var names: [String] { entries.keys.sorted() }

    /// FNV-1a of the whole file (DiffEditSupport.fingerprint of its bytes), read from the mapping;
    /// the pages it touched are let go again.
    public var contentFingerprint: String {
        let f = DiffEditSupport.fingerprint(UnsafeRawBufferPointer(start: base, count: mappedLength))
        releasePages()
        return f
    }

    /// The raw bytes of an entry, straight from the mapping.
    public func rawBytes(_ entry: Entry) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + dataStart + entry.begin, count: entry.end - entry.begin)
    }

    /// An entry converted to Float (f32 copied, f16/bf16/f64/ints converted): `convert` into a
    /// fresh array.
    public func floats(_ entry: Entry) throws -> [Float] {
        try [Float](unsafeUninitializedCapacity: entry.count) { out, c in
            if entry.count > 0 { try convert(entry, into: out.baseAddress!) }
            c = entry.count
        }
    }

    /// Drops the mapping's pages from this process's memory (the file stays mapped; a later
    /// read faults them in again from the page cache). Called once a model has converted its
    /// weights, so that the f16 file does not count twice in the resident set.
    public func releasePages() {
        #if os(Linux)
        if keepsPages { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: base), mappedLength, MADV_DONTNEED)
        #endif
    }

    /// Set once a 16-bit weight is used in place (Parameter points into the mapping): its pages
    /// are then the weights themselves and stay.
    var keepsPages = false

    /// Drops the pages that lie wholly inside one entry's bytes (after converting it), so that
    /// the resident set during a load is the converted weights plus one entry of the file.
    func releasePages(_ entry: Entry) {
        #if os(Linux)
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = Int(bitPattern: base) + dataStart + entry.begin
        let end = Int(bitPattern: base) + dataStart + entry.end
        let lo = (start + page - 1) / page * page, hi = end / page * page
        if hi > lo { _ = madvise(UnsafeMutableRawPointer(bitPattern: lo), hi - lo, MADV_DONTNEED) }
        #endif
    }
}

/// The weights of one model component (text_encoder, unet, vae): looks tensors up by name and
/// checks their shapes against what the config implies, naming any missing or mis-shaped one.
/// Names are diffusers'; in a single-file checkpoint (`ldmNames`) they are rewritten to the file's
/// LDM keys, a fused q/k/v tensor read as the rows of one part, all from the one mapping.
public final class WeightStore {
    public let component: String
    public let file: SafeTensorsFile
    let ldmNames: LDMNames?

    public init(component: String, file: SafeTensorsFile) {
        self.component = component
        self.file = file
        ldmNames = nil
    }

    init(component: String, file: SafeTensorsFile, ldmNames: LDMNames) {
        self.component = component
        self.file = file
        self.ldmNames = ldmNames
    }

    /// The file key that holds `name` (nil: the layout has no such weight).
    func fileKey(_ name: String) -> String? { ldmNames.map { $0.key(name)?.name } ?? name }

    /// The entry holding `name`: for a part of a fused tensor, that part's rows (when the rows do not
    /// split evenly, the whole entry, whose shape the caller's check then reports).
    func lookup(_ name: String) -> SafeTensorsFile.Entry? {
        guard let names = ldmNames else { return file.entries[name] }
        guard let key = names.key(name), let e = file.entries[key.name] else { return nil }
        guard let part = key.part, let rows = e.shape.first, rows % key.parts == 0 else { return e }
        let bytes = (e.end - e.begin) / key.parts
        return SafeTensorsFile.Entry(name: e.name, dtype: e.dtype, shape: [rows / key.parts] + e.shape.dropFirst(),
                                     begin: e.begin + part * bytes, end: e.begin + (part + 1) * bytes)
    }

    public func contains(_ name: String) -> Bool { lookup(name) != nil }

    /// Loads `name`, which must have exactly `shape`.
    public func load(_ name: String, shape: [Int]) throws -> [Float] {
        try file.floats(try entry(name, shape: shape))
    }

    /// The entry `name`, checked to have exactly `shape`.
    func entry(_ name: String, shape: [Int]) throws -> SafeTensorsFile.Entry {
        guard let e = lookup(name) else {
            if ldmNames != nil {
                throw ToolError("\(component): missing weight '\(fileKey(name) ?? name)' in \(file.path) — the file is incomplete, or not a Stable Diffusion 1.x/2.x checkpoint in the original (LDM) layout")
            }
            throw ToolError("\(component): missing weight '\(name)' in \(file.path) — the weights do not match \(component)/config.json, or the file is not a \(component) checkpoint")
        }
        guard e.shape == shape else {
            if ldmNames != nil {
                throw ToolError("\(component): weight '\(e.name)' has shape \(e.shape) but the other weights of \(file.path) imply \(shape) — the file mixes weights of different models or is damaged; use a complete checkpoint")
            }
            throw ToolError("\(component): weight '\(name)' has shape \(e.shape) but \(component)/config.json implies \(shape) — config and weights are from different models")
        }
        return e
    }

    /// Loads `name` if present (optional biases).
    public func loadIfPresent(_ name: String, shape: [Int]) throws -> [Float]? {
        contains(name) ? try load(name, shape: shape) : nil
    }
}
