#if canImport(Glibc)
import Glibc
#endif
import CKernels
import Foundation

/// A weight as a layer keeps it, in the layout its kernel wants. Large matrices stored as f16 or
/// bf16 stay in those 16 bits (pointing straight into the checkpoint's memory map when the
/// layout is the file's, else repacked once) and are widened per use by the kernels
/// (`WeightMatrix`); everything else is f32, converted once at load.
public struct Parameter: @unchecked Sendable {
    final class Storage {
        let raw: UnsafeMutableRawPointer
        let count: Int
        let bits: WeightMatrix.Bits
        /// The object whose memory `raw` points into (a SafeTensorsFile's mapping), kept alive
        /// with the parameter; nil when the storage is this object's own.
        let owner: AnyObject?
        let mapped: Bool

        var byteCount: Int { max(count, 1) * (bits == .f32 ? 4 : 2) }

        /// Large weights get their own anonymous mapping with transparent huge pages requested:
        /// the SD 1.5 UNet's 3.4 GB of f32 weights then fault in 2 MiB at a time rather than
        /// 4 KiB (an 850 000-fault load otherwise spends seconds in the kernel).
        init(count: Int, bits: WeightMatrix.Bits) {
            self.count = count
            self.bits = bits
            owner = nil
            let bytes = max(count, 1) * (bits == .f32 ? 4 : 2)
            #if os(Linux)
            if bytes >= Storage.hugeThreshold,
               let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED {
                _ = madvise(p, bytes, 14)  // MADV_HUGEPAGE
                raw = p
                mapped = true
                return
            }
            #endif
            raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
            mapped = false
        }

        /// Storage that is `owner`'s memory (read only).
        init(borrowing pointer: UnsafeRawPointer, count: Int, bits: WeightMatrix.Bits, owner: AnyObject) {
            raw = UnsafeMutableRawPointer(mutating: pointer)
            self.count = count
            self.bits = bits
            self.owner = owner
            mapped = false
        }

        deinit {
            if owner != nil { return }
            #if os(Linux)
            if mapped { munmap(raw, byteCount); return }
            #endif
            raw.deallocate()
        }

        static let hugeThreshold = 1 << 21
    }

    public let shape: [Int]
    let storage: Storage

    init(shape: [Int], bits: WeightMatrix.Bits = .f32) {
        self.shape = shape
        storage = Storage(count: shape.reduce(1, *), bits: bits)
    }

    init(shape: [Int], storage: Storage) {
        self.shape = shape
        self.storage = storage
    }

    public var count: Int { storage.count }
    public var bits: WeightMatrix.Bits { storage.bits }

    /// The f32 values (every parameter that is not a 16-bit matrix).
    @inline(__always) var pointer: UnsafeMutablePointer<Float> {
        precondition(storage.bits == .f32, "a 16-bit weight is read through `matrix`")
        return storage.raw.assumingMemoryBound(to: Float.self)
    }

    /// The weight as its kernels read it.
    var matrix: WeightMatrix { WeightMatrix(raw: storage.raw, bits: storage.bits) }

    /// The values (tests, small per-channel vectors), widened when stored in 16 bits.
    public var values: [Float] {
        switch storage.bits {
        case .f32: return [Float](UnsafeBufferPointer(start: pointer, count: count))
        case .f16, .bf16:
            var out = [Float](repeating: 0, count: count)
            let bits = storage.raw.assumingMemoryBound(to: UInt16.self)
            out.withUnsafeMutableBufferPointer { o in
                if storage.bits == .f16 { diffedit_f16_to_f32(bits, o.baseAddress!, count) } else { diffedit_bf16_to_f32(bits, o.baseAddress!, count) }
            }
            return out
        }
    }

    /// A parameter holding `values`.
    init(shape: [Int], values: [Float]) {
        precondition(values.count == shape.reduce(1, *))
        self.init(shape: shape)
        values.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: values.count) }
    }

    /// Whether large f16/bf16 matrices stay 16-bit in memory (default); false converts every
    /// weight to f32 at load (`unet-bench --f32-weights`, to compare). Same numbers either way.
    nonisolated(unsafe) public static var keepsSixteenBit = true

    /// Matrices with fewer elements are converted to f32 at load (not worth a widening pass).
    static let sixteenBitMinimum = 1 << 14
}

/// Where weights come from: a checkpoint's WeightStore, or generated values. Writes the f32
/// values of `name`, which must have `shape`, to `into`.
protocol WeightSource {
    func contains(_ name: String) -> Bool
    func storedShape(_ name: String) -> [Int]?
    func read(_ name: String, shape: [Int], into: UnsafeMutablePointer<Float>) throws
    /// A conv weight [O, C, kh, kw] written as [O][kh·kw][C] (Conv2D's tap-major layout).
    func readTapMajor(_ name: String, out o: Int, in c: Int, kernel k: Int, into: UnsafeMutablePointer<Float>,
                      scratch: ScratchBuffer) throws
    /// `name` (which must have `shape`) as the 16-bit values the source keeps in memory, with the
    /// object that owns that memory; nil when it is not stored in 16 bits.
    func sixteenBit(_ name: String, shape: [Int]) throws -> (bits: UnsafePointer<UInt16>, format: WeightMatrix.Bits, owner: AnyObject)?
    /// `name`'s stored bytes have been copied and will not be read again (its pages may go).
    func copied(_ name: String)
}

extension WeightSource {
    func sixteenBit(_ name: String, shape: [Int]) throws -> (bits: UnsafePointer<UInt16>, format: WeightMatrix.Bits, owner: AnyObject)? { nil }
    func copied(_ name: String) {}

    func readTapMajor(_ name: String, out o: Int, in c: Int, kernel k: Int, into out: UnsafeMutablePointer<Float>,
                      scratch: ScratchBuffer) throws {
        let stored = scratch.floats(o * c * k * k)
        try read(name, shape: [o, c, k, k], into: stored)
        Conv2D.packShifted(stored, outChannels: o, inChannels: c, taps: k * k, into: out)
    }
}

/// A buffer reused across the weights of one model load (conversion and repacking scratch), so
/// that only the final parameters are fresh memory.
final class ScratchBuffer {
    private var raw: UnsafeMutableRawPointer?
    private var capacity = 0

    deinit { raw?.deallocate() }

    func bytes(_ n: Int) -> UnsafeMutableRawPointer {
        if n > capacity || raw == nil {
            raw?.deallocate()
            capacity = max(n, capacity * 5 / 4)
            raw = UnsafeMutableRawPointer.allocate(byteCount: max(capacity, 1), alignment: 64)
        }
        return raw!
    }

    func floats(_ n: Int) -> UnsafeMutablePointer<Float> { bytes(n * 4).bindMemory(to: Float.self, capacity: n) }
}

extension WeightStore: WeightSource {
    func storedShape(_ name: String) -> [Int]? { lookup(name)?.shape }

    func read(_ name: String, shape: [Int], into out: UnsafeMutablePointer<Float>) throws {
        let e = try entry(name, shape: shape)
        try file.convert(e, into: out)
    }

    func readTapMajor(_ name: String, out o: Int, in c: Int, kernel k: Int, into out: UnsafeMutablePointer<Float>,
                      scratch: ScratchBuffer) throws {
        let e = try entry(name, shape: [o, c, k, k])
        try file.convertTapMajor(e, out: o, in: c, taps: k * k, into: out, scratch: scratch)
    }

    func sixteenBit(_ name: String, shape: [Int]) throws -> (bits: UnsafePointer<UInt16>, format: WeightMatrix.Bits, owner: AnyObject)? {
        let e = try entry(name, shape: shape)
        let format: WeightMatrix.Bits
        switch e.dtype {
        case .F16: format = .f16
        case .BF16: format = .bf16
        default: return nil
        }
        guard let base = file.rawBytes(e).baseAddress, Int(bitPattern: base) % 2 == 0 else { return nil }
        file.keepsPages = true
        return (base.assumingMemoryBound(to: UInt16.self), format, file)
    }

    func copied(_ name: String) {
        if let e = lookup(name) { file.releasePages(e) }
    }
}

/// Deterministic pseudo-random weights for benchmarks and tests without a checkpoint:
/// uniform in ±1/√fan_in for matrices and kernels, 1 for norm scales, small values for biases.
struct RandomWeights: WeightSource {
    let seed: UInt64

    func contains(_ name: String) -> Bool { true }
    func storedShape(_ name: String) -> [Int]? { nil }

    func read(_ name: String, shape: [Int], into out: UnsafeMutablePointer<Float>) throws {
        let count = shape.reduce(1, *)
        if shape.count == 1 && name.hasSuffix(".weight") && name.contains("norm") {
            out.update(repeating: 1, count: count)
            return
        }
        let fanIn = shape.count > 1 ? shape.dropFirst().reduce(1, *) : 100
        let bound = 1 / Float(fanIn).squareRoot()
        // FNV-1a of the name (String.hashValue is seeded per process).
        var state: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in name.utf8 { state = (state ^ UInt64(byte)) &* 0x100_0000_01b3 }
        state = (state ^ seed) | 1
        for i in 0..<count {
            // xorshift64*: plenty for weights nobody looks at.
            state ^= state >> 12; state ^= state << 25; state ^= state >> 27
            let r = (state &* 2_685_821_657_736_338_717) >> 40
            out[i] = (Float(r) * (1.0 / 16_777_216.0) * 2 - 1) * bound
        }
    }
}

/// Reads a model's parameters by checkpoint key, checking every shape, into the layout each
/// kernel wants: the one place weights enter the layers.
struct ParameterLoader {
    let source: any WeightSource
    let scratch = ScratchBuffer()

    func contains(_ name: String) -> Bool { source.contains(name) }
    func storedShape(_ name: String) -> [Int]? { source.storedShape(name) }

    /// `name` as stored (torch layout).
    func load(_ name: String, _ shape: [Int]) throws -> Parameter {
        let p = Parameter(shape: shape)
        try source.read(name, shape: shape, into: p.pointer)
        return p
    }

    func loadIfPresent(_ name: String, _ shape: [Int]) throws -> Parameter? {
        contains(name) ? try load(name, shape) : nil
    }

    /// A weight matrix a kernel multiplies by (`Parameter.matrix`): 16-bit weights stay in the
    /// source's memory as they are stored, others are converted to f32.
    func matrix(_ name: String, _ shape: [Int]) throws -> Parameter {
        if let s = try sixteenBit(name, shape) {
            return Parameter(shape: shape, storage: .init(borrowing: s.bits, count: shape.reduce(1, *), bits: s.format, owner: s.owner))
        }
        return try load(name, shape)
    }

    /// Several [rows_i, cols] matrices (or [rows_i] vectors) stacked into one (fused QKV);
    /// matrices all stored in the same 16 bits stay 16-bit.
    func stacked(_ names: [String], rows: [Int], columns: Int?) throws -> Parameter {
        let total = rows.reduce(0, +)
        let shape = columns.map { [total, $0] } ?? [total]
        if let columns {
            let views = try zip(names, rows).map { try sixteenBit($0, [$1, columns]) }
            if let first = views.first??.format, views.allSatisfy({ $0?.format == first }) {
                let p = Parameter(shape: shape, bits: first)
                let dst = p.storage.raw.assumingMemoryBound(to: UInt16.self)
                var offset = 0
                for ((name, view), r) in zip(zip(names, views), rows) {
                    (dst + offset * columns).update(from: view!.bits, count: r * columns)
                    source.copied(name)
                    offset += r
                }
                return p
            }
        }
        let p = Parameter(shape: shape)
        var offset = 0
        for (name, r) in zip(names, rows) {
            try source.read(name, shape: columns.map { [r, $0] } ?? [r], into: p.pointer + offset * (columns ?? 1))
            offset += r
        }
        return p
    }

    /// A conv weight [O, C, kh, kw] rearranged to [O][kh·kw][C] for Conv2D's stride-1 methods
    /// (16-bit weights permuted as bits, staying 16-bit).
    func shiftedConv(_ name: String, out o: Int, in c: Int, kernel k: Int) throws -> Parameter {
        if let s = try sixteenBit(name, [o, c, k, k]) {
            let p = Parameter(shape: [o, k * k, c], bits: s.format)
            Conv2D.packShifted(s.bits, outChannels: o, inChannels: c, taps: k * k,
                               into: p.storage.raw.assumingMemoryBound(to: UInt16.self))
            source.copied(name)
            return p
        }
        let p = Parameter(shape: [o, k * k, c])
        try source.readTapMajor(name, out: o, in: c, kernel: k, into: p.pointer, scratch: scratch)
        return p
    }

    /// The 16-bit view of a large enough matrix, when 16-bit weights are kept.
    private func sixteenBit(_ name: String, _ shape: [Int]) throws -> (bits: UnsafePointer<UInt16>, format: WeightMatrix.Bits, owner: AnyObject)? {
        guard Parameter.keepsSixteenBit, shape.reduce(1, *) >= Parameter.sixteenBitMinimum else { return nil }
        return try source.sixteenBit(name, shape: shape)
    }
}

extension SafeTensorsFile {
    /// Writes an entry as f32 to `out`: f32 copied, f16/bf16 converted by CKernels (in parallel
    /// slices for large entries), f64 and integers converted element by element.
    func convert(_ entry: Entry, into out: UnsafeMutablePointer<Float>) throws {
        let raw = rawBytes(entry)
        let n = entry.count
        guard n > 0 else { return }
        let src = raw.baseAddress!
        func sliced(_ body: @escaping (Range<Int>) -> Void) {
            let parts = n >= 1 << 18 ? ComputeContext.defaultThreads : 1
            if parts <= 1 { body(0..<n); return }
            let size = (n + parts - 1) / parts
            DispatchQueue.concurrentPerform(iterations: parts) { k in
                let lo = k * size, hi = min(n, lo + size)
                if lo < hi { body(lo..<hi) }
            }
        }
        switch entry.dtype {
        case .F32:
            sliced { r in _ = memcpy(out + r.lowerBound, src + r.lowerBound * 4, r.count * 4) }
        case .F16:
            let h = src.assumingMemoryBound(to: UInt16.self)
            sliced { r in diffedit_f16_to_f32(h + r.lowerBound, out + r.lowerBound, r.count) }
        case .BF16:
            let h = src.assumingMemoryBound(to: UInt16.self)
            sliced { r in diffedit_bf16_to_f32(h + r.lowerBound, out + r.lowerBound, r.count) }
        case .F64:
            for i in 0..<n { out[i] = Float(raw.loadUnaligned(fromByteOffset: i * 8, as: Double.self)) }
        case .I64:
            for i in 0..<n { out[i] = Float(raw.loadUnaligned(fromByteOffset: i * 8, as: Int64.self)) }
        case .I32:
            for i in 0..<n { out[i] = Float(raw.loadUnaligned(fromByteOffset: i * 4, as: Int32.self)) }
        default:
            throw ToolError("'\(path)': weight '\(entry.name)' has dtype \(entry.dtype.rawValue), which diffedit does not load as floats — export the weights as F32, F16 or BF16")
        }
        releasePages(entry)
    }

    /// A conv weight entry [O, C, taps] written as [O][taps][C]: 16-bit values are permuted as
    /// raw bits into `scratch` and then converted in one contiguous pass (the conversion
    /// instructions want contiguous input); f32 is permuted straight into `out`.
    func convertTapMajor(_ entry: Entry, out o: Int, in c: Int, taps: Int, into out: UnsafeMutablePointer<Float>,
                         scratch: ScratchBuffer) throws {
        let n = entry.count
        guard n > 0 else { return }
        let src = rawBytes(entry).baseAddress!
        func permute<T>(_ s: UnsafePointer<T>, _ d: UnsafeMutablePointer<T>) {
            Conv2D.packShifted(s, outChannels: o, inChannels: c, taps: taps, into: d)
        }
        switch entry.dtype {
        case .F32:
            permute(src.assumingMemoryBound(to: Float.self), out)
            releasePages(entry)
        case .F16, .BF16:
            let bits = scratch.bytes(n * 2).bindMemory(to: UInt16.self, capacity: n)
            permute(src.assumingMemoryBound(to: UInt16.self), bits)
            releasePages(entry)
            let parts = n >= 1 << 18 ? ComputeContext.defaultThreads : 1
            let size = (n + parts - 1) / parts
            let isHalf = entry.dtype == .F16
            DispatchQueue.concurrentPerform(iterations: parts) { k in
                let lo = k * size, hi = min(n, lo + size)
                guard lo < hi else { return }
                if isHalf { diffedit_f16_to_f32(bits + lo, out + lo, hi - lo) } else { diffedit_bf16_to_f32(bits + lo, out + lo, hi - lo) }
            }
        default:
            let stored = scratch.floats(n)
            try convert(entry, into: stored)
            Conv2D.packShifted(stored, outChannels: o, inChannels: c, taps: taps, into: out)
        }
    }
}
