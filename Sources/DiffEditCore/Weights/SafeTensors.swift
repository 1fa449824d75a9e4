#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A memory-mapped `.safetensors` file: an 8-byte little-endian header length, a JSON header
/// naming each tensor's dtype, shape and [begin, end) byte range, then the data. Every field is
/// checked before it is trusted: a hostile header can only produce an error.
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

    public static let maxHeaderBytes = 100 << 20

    public let path: String
    public let entries: [String: Entry]
    /// The `__metadata__` object, if any.
    public let metadata: [String: String]
    private let base: UnsafeRawPointer
    private let mappedLength: Int
    private let dataStart: Int

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw ToolError("cannot open '\(path)': \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw ToolError("'\(path)' is not a regular file — point --model at a folder holding the weight files")
        }
        let size = Int(st.st_size)
        guard size >= 8 else {
            throw ToolError("'\(path)': \(size) bytes is too short for a safetensors file — the file is truncated or not safetensors")
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw ToolError("cannot map '\(path)': \(String(cString: strerror(errno)))")
        }
        let raw = UnsafeRawPointer(p)
        let headerLength = raw.loadUnaligned(as: UInt64.self).littleEndian
        func fail(_ why: String) -> ToolError {
            munmap(p, size)
            return ToolError("'\(path)': corrupt safetensors header: \(why) — re-export or re-download the weights")
        }
        guard headerLength <= UInt64(size - 8) else {
            throw fail("header length \(headerLength) runs past the end of the \(size)-byte file")
        }
        guard headerLength <= UInt64(SafeTensorsFile.maxHeaderBytes) else {
            throw fail("header length \(headerLength) is past the limit of \(SafeTensorsFile.maxHeaderBytes) bytes")
        }
        let headerData = Data(bytes: raw + 8, count: Int(headerLength))
        guard String(data: headerData, encoding: .utf8) != nil else { throw fail("header is not UTF-8") }
        let json: Any
        do {
            json = try JSONSerialization.jsonObject(with: headerData, options: [])
        } catch {
            throw fail("header is not valid JSON")
        }
        guard let object = json as? [String: Any] else { throw fail("header is not a JSON object") }
        let dataStart = 8 + Int(headerLength)
        let dataSize = size - dataStart
        var entries: [String: Entry] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in object {
            if name == "__metadata__" {
                if let m = value as? [String: Any] {
                    for (k, v) in m { metadata[k] = (v as? String) ?? "\(v)" }
                }
                continue
            }
            guard let info = value as? [String: Any] else { throw fail("entry '\(name)' is not an object") }
            guard let dt = info["dtype"] as? String else { throw fail("entry '\(name)' has no dtype") }
            guard let dtype = DataType(rawValue: dt) else { throw fail("entry '\(name)' has unknown dtype '\(dt)'") }
            guard let shapeAny = info["shape"] as? [Any] else { throw fail("entry '\(name)' has no shape") }
            var shape: [Int] = []
            var count = 1
            for d in shapeAny {
                guard let n = d as? NSNumber, n.doubleValue == Double(n.int64Value), n.int64Value >= 0,
                      n.int64Value < (1 << 40) else {
                    throw fail("entry '\(name)' has a bad dimension \(d)")
                }
                shape.append(n.intValue)
                let (c, o) = count.multipliedReportingOverflow(by: n.intValue)
                guard !o, c < (1 << 50) else { throw fail("entry '\(name)' has an absurd shape \(shape)") }
                count = c
            }
            guard let offs = info["data_offsets"] as? [Any], offs.count == 2,
                  let b = (offs[0] as? NSNumber)?.int64Value, let e = (offs[1] as? NSNumber)?.int64Value,
                  b >= 0, e >= b else {
                throw fail("entry '\(name)' has bad data_offsets")
            }
            guard e <= Int64(dataSize) else {
                throw fail("entry '\(name)' data [\(b), \(e)) runs past the \(dataSize) data bytes")
            }
            guard Int(e - b) == count * dtype.size else {
                throw fail("entry '\(name)' holds \(e - b) bytes but shape \(shape) of \(dt) needs \(count * dtype.size)")
            }
            entries[name] = Entry(name: name, dtype: dtype, shape: shape, begin: Int(b), end: Int(e))
        }
        // Ranges must not overlap.
        let sorted = entries.values.sorted { ($0.begin, $0.end) < ($1.begin, $1.end) }
        for i in sorted.indices.dropFirst() where sorted[i].begin < sorted[i - 1].end {
            throw fail("entries '\(sorted[i - 1].name)' and '\(sorted[i].name)' overlap")
        }
        self.entries = entries
        self.metadata = metadata
        self.base = raw
        self.mappedLength = size
        self.dataStart = dataStart
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), mappedLength) }

    public var names: [String] { entries.keys.sorted() }

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
