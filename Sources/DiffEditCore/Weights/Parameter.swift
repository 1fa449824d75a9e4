#if canImport(Glibc)
import Glibc
#endif
import CKernels
import Foundation

/// A weight as a layer keeps it. Large matrices (linear and convolution weights) are the
/// checkpoint's own bytes in its memory map, in the bits it stored (f32, f16 or bf16), read by
/// the kernels through `WeightMatrix`: no process holds a private copy, so concurrent tools on
/// one model share its pages in the page cache. Everything else (biases, norms, embeddings) is
/// f32, converted once at load.
public struct Parameter: @unchecked Sendable {
    final class Storage {
        let raw: UnsafeMutableRawPointer
        let count: Int
        let bits: WeightMatrix.Bits
        /// The object whose memory `raw` points into (a SafeTensorsFile's mapping), kept alive
        /// with the parameter; nil when the storage is this object's own.
        let owner: AnyObject?
        let mapped: Bool
        /// The stored tensors a stacked matrix's rows come from, when read in place.
        let segments: WeightMatrix.Segments?
        /// The matrix packed for the bf16 products, made at its first one (empty until then).
        let packs: PackedBF16

        var byteCount: Int { max(count, 1) * (bits == .f32 ? 4 : 2) }

        /// Large weights get their own anonymous mapping with transparent huge pages requested:
        /// the SD 1.5 UNet's 3.4 GB of f32 weights then fault in 2 MiB at a time rather than
        /// 4 KiB (an 850 000-fault load otherwise spends seconds in the kernel).
        init(count: Int, bits: WeightMatrix.Bits) {
            self.count = count
            self.bits = bits
            owner = nil
            segments = nil
            packs = PackedBF16(sourcePages: [])
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

        /// Storage that is `owner`'s memory (read only), in one piece or as `segments`.
        init(borrowing pointer: UnsafeRawPointer, count: Int, bits: WeightMatrix.Bits, owner: AnyObject,
             segments: WeightMatrix.Segments? = nil) {
            raw = UnsafeMutableRawPointer(mutating: pointer)
            self.count = count
            self.bits = bits
            self.owner = owner
            self.segments = segments
            mapped = false
            // The checkpoint's bytes of this matrix (read-only file pages), which a bf16 packing
            // lets go of once made.
            let size = bits == .f32 ? 4 : 2
            if let segments {
                let columns = count / max(1, segments.firstRows.last!)
                packs = PackedBF16(sourcePages: segments.bases.indices.map {
                    (segments.bases[$0], (segments.firstRows[$0 + 1] - segments.firstRows[$0]) * columns * size)
                })
            } else {
                packs = PackedBF16(sourcePages: [(pointer, count * size)])
            }
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
        precondition(storage.bits == .f32 && storage.segments == nil, "a matrix in place is read through `matrix`")
        return storage.raw.assumingMemoryBound(to: Float.self)
    }

    /// The weight as its kernels read it.
    var matrix: WeightMatrix { WeightMatrix(raw: storage.raw, bits: storage.bits, segments: storage.segments, packs: storage.packs) }

    /// The values as f32 (tests, small per-channel vectors), widened when stored in 16 bits.
    public var values: [Float] {
        let rows = shape.first ?? 1, ld = rows > 0 ? count / rows : 0
        var out = [Float](repeating: 0, count: count)
        out.withUnsafeMutableBufferPointer { o in
            for r in 0..<rows { matrix.widenRow(r, ld: ld, columns: 0..<ld, into: o.baseAddress! + r * ld) }
        }
        return out
    }

    /// A parameter holding `values`.
    init(shape: [Int], values: [Float]) {
        precondition(values.count == shape.reduce(1, *))
        self.init(shape: shape)
        values.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: values.count) }
    }

    /// Matrices with fewer elements are converted to f32 at load (not worth a widening pass).
    static let inPlaceMinimum = 1 << 14
}

/// Where weights come from: a checkpoint's WeightStore, or generated values. Writes the f32
/// values of `name`, which must have `shape`, to `into`.
protocol WeightSource {
    func contains(_ name: String) -> Bool
    func storedShape(_ name: String) -> [Int]?
    func read(_ name: String, shape: [Int], into: UnsafeMutablePointer<Float>) throws
    /// `name` (which must have `shape`) as the f32, f16 or bf16 values the source keeps in
    /// memory, with the object that owns that memory; nil when it cannot be read in place.
    func inPlace(_ name: String, shape: [Int]) throws -> (raw: UnsafeRawPointer, bits: WeightMatrix.Bits, owner: AnyObject)?
}

extension WeightSource {
    func inPlace(_ name: String, shape: [Int]) throws -> (raw: UnsafeRawPointer, bits: WeightMatrix.Bits, owner: AnyObject)? { nil }
}

extension WeightStore: WeightSource {
    func storedShape(_ name: String) -> [Int]? { lookup(name)?.shape }

    func read(_ name: String, shape: [Int], into out: UnsafeMutablePointer<Float>) throws {
        let e = try entry(name, shape: shape)
        try file.convert(e, into: out)
    }

    func inPlace(_ name: String, shape: [Int]) throws -> (raw: UnsafeRawPointer, bits: WeightMatrix.Bits, owner: AnyObject)? {
        let e = try entry(name, shape: shape)
        let bits: WeightMatrix.Bits
        switch e.dtype {
        case .F32: bits = .f32
        case .F16: bits = .f16
        case .BF16: bits = .bf16
        default: return nil
        }
        // safetensors does not promise alignment; a misaligned entry is converted instead.
        guard let base = file.rawBytes(e).baseAddress, Int(bitPattern: base) % (bits == .f32 ? 4 : 2) == 0 else { return nil }
        file.keepsPages = true
        return (base, bits, file)
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

/// A checkpoint's weights with LoRA updates merged in (LoRASet.Mode.merged): a weight some
/// adapter touches is converted to a private f32 copy plus B·A; every other weight is the base's,
/// read in place as before.
struct LoRAMergedWeights: WeightSource {
    let base: any WeightSource
    let lora: LoRASet
    let part: LoRAFile.Part

    func contains(_ name: String) -> Bool { base.contains(name) }
    func storedShape(_ name: String) -> [Int]? { base.storedShape(name) }

    private func update(_ name: String, shape: [Int]) throws -> LowRankUpdate? {
        guard name.hasSuffix(".weight"), shape.count >= 2 else { return nil }
        return try lora.update(part, module: String(name.dropLast(".weight".count)), out: shape[0],
                               inFlat: shape.dropFirst().reduce(1, *))
    }

    func read(_ name: String, shape: [Int], into out: UnsafeMutablePointer<Float>) throws {
        try base.read(name, shape: shape, into: out)
        try update(name, shape: shape)?.merge(into: out)
    }

    func inPlace(_ name: String, shape: [Int]) throws -> (raw: UnsafeRawPointer, bits: WeightMatrix.Bits, owner: AnyObject)? {
        try update(name, shape: shape) == nil ? try base.inPlace(name, shape: shape) : nil
    }
}

/// Reads a model's parameters by checkpoint key, checking every shape, into the layout each
/// kernel wants: the one place weights enter the layers.
struct ParameterLoader {
    let source: any WeightSource
    /// Whether large matrices are read in place from the source's memory (default); false
    /// converts every weight to a private f32 copy (models pass their context's
    /// `policy.readsWeightsInPlace`). Same numbers either way.
    let readsInPlace: Bool
    /// LoRA adapters for the model being loaded (`part` of each file), applied as low-rank
    /// terms of the layers (`lowRank`) or merged into private copies of their weights.
    let lora: LoRASet?
    let part: LoRAFile.Part

    init(source: any WeightSource, readsInPlace: Bool = true, lora: LoRASet? = nil, part: LoRAFile.Part = .unet) {
        let adapters = lora.flatMap { $0.isEmpty ? nil : $0 }
        self.source = adapters.map { $0.mode == .merged ? LoRAMergedWeights(base: source, lora: $0, part: part) : source } ?? source
        self.readsInPlace = readsInPlace
        self.lora = adapters
        self.part = part
    }

    /// The LoRA term of the layer `module` (its weight [out, inFlat]), applied next to the base
    /// product; nil without adapters for it, or when they are merged into the weight.
    func lowRank(_ module: String, out: Int, inFlat: Int) throws -> LowRankUpdate? {
        guard let lora, lora.mode == .lowRank else { return nil }
        return try lora.update(part, module: module, out: out, inFlat: inFlat)
    }

    /// The LoRA term of linears stacked into one product (fused q/k/v): each module's A stacked
    /// by rows, its B placed in its own rows and columns of one [Σout, Σrank] matrix.
    func lowRank(stacking modules: [String], outs: [Int], inFlat: Int) throws -> LowRankUpdate? {
        let parts = try zip(modules, outs).map { try lowRank($0, out: $1, inFlat: inFlat) }
        guard parts.contains(where: { $0 != nil }) else { return nil }
        let rank = parts.reduce(0) { $0 + ($1?.rank ?? 0) }, total = outs.reduce(0, +)
        var down: [Float] = [], up = [Float](repeating: 0, count: total * rank)
        var row = 0, column = 0
        for (update, out) in zip(parts, outs) {
            if let u = update {
                down += u.down.values
                let b = u.up.values
                for o in 0..<out { for j in 0..<u.rank { up[(row + o) * rank + column + j] = b[o * u.rank + j] } }
                column += u.rank
            }
            row += out
        }
        return LowRankUpdate(rank: rank, inFlat: inFlat, out: total, down: down, up: up)
    }

    /// Refuses LoRA modules of this part that no layer took (after the model is built).
    func checkLoRAUsed(model: String) throws { try lora?.checkAllUsed(part, model: model) }

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

    /// A weight matrix a kernel multiplies by (`Parameter.matrix`): read in place from the
    /// source's memory as it is stored (a conv weight [O, C, kh, kw] is the matrix
    /// [O][C·kh·kw] every Conv2D method reads), else converted to f32.
    func matrix(_ name: String, _ shape: [Int]) throws -> Parameter {
        if let s = try inPlace(name, shape) {
            return Parameter(shape: shape, storage: .init(borrowing: s.raw, count: shape.reduce(1, *), bits: s.bits, owner: s.owner))
        }
        return try load(name, shape)
    }

    /// Several [rows_i, cols] matrices (or [rows_i] vectors) stacked into one (fused QKV);
    /// matrices all stored in the same bits are read in place, as segments of one matrix.
    func stacked(_ names: [String], rows: [Int], columns: Int?) throws -> Parameter {
        let total = rows.reduce(0, +)
        let shape = columns.map { [total, $0] } ?? [total]
        if let columns {
            let views = try zip(names, rows).map { try inPlace($0, [$1, columns]) }
            if let first = views.first??.bits, views.allSatisfy({ $0?.bits == first }) {
                let parts = views.map { $0! }
                return Parameter(shape: shape, storage: .init(
                    borrowing: parts[0].raw, count: total * columns, bits: first, owner: parts[0].owner,
                    segments: WeightMatrix.Segments(bases: parts.map(\.raw), rows: rows)))
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

    /// A large enough matrix in the source's memory, when weights are read in place.
    private func inPlace(_ name: String, _ shape: [Int]) throws -> (raw: UnsafeRawPointer, bits: WeightMatrix.Bits, owner: AnyObject)? {
        guard readsInPlace, shape.reduce(1, *) >= Parameter.inPlaceMinimum else { return nil }
        return try source.inPlace(name, shape: shape)
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
}
