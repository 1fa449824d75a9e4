#if canImport(Glibc)
import Glibc
#endif
import CKernels
import Dispatch
import Foundation

/// The arithmetic of the products (`KernelPolicy.precision`). f32, the default, is OpenBLAS's
/// sgemm and gives diffusers' numbers within the parity tolerances. bf16 is opt-in: both operands
/// of every large product rounded to bfloat16 (8 bits of mantissa) and multiplied on AVX512-BF16
/// with f32 accumulation, about twice the multiply-adds per instruction; the numbers move (their
/// error against f32 is measured per stage in bench/README.md), so it is never a default.
public enum Precision: String, Sendable, CaseIterable {
    case f32, bf16

    /// Whether this CPU runs bf16 products (AVX512-BF16's vdpbf16ps).
    public static var bf16Available: Bool { diffedit_has_avx512bf16() != 0 }

    /// `DIFFEDIT_PRECISION` (f32 or bf16; unset or empty: f32), read once: the precision every
    /// `KernelPolicy` starts with, so that one variable reaches every tool and model. nil when it
    /// holds anything else (`environmentError` says so, and tools refuse to start).
    public static let fromEnvironment: Precision? = {
        guard let v = getenv("DIFFEDIT_PRECISION").map({ String(cString: $0) }), !v.isEmpty else { return .f32 }
        return Precision(rawValue: v)
    }()

    /// The refusal of a malformed `DIFFEDIT_PRECISION`, nil when it is fine.
    public static var environmentError: ToolError? {
        guard fromEnvironment == nil else { return nil }
        let v = getenv("DIFFEDIT_PRECISION").map { String(cString: $0) } ?? ""
        return ToolError("DIFFEDIT_PRECISION=\(v) is not a precision — set it to f32 (the default) or bf16, or unset it")
    }

    /// The precision models load with from now on (`--precision` sets it before a tool loads its
    /// models); starts as `DIFFEDIT_PRECISION` says.
    nonisolated(unsafe) public static var requested: Precision = fromEnvironment ?? .f32

    /// The precision that runs when `self` is asked for: bf16 only where the CPU has it.
    public var effective: Precision { self == .bf16 && !Precision.bf16Available ? .f32 : self }
}

/// C = alpha·op(A)·op(B) + beta·C in bf16 (gemm_bf16.c), split between `threads` workers by rows
/// of C, or by columns when it has more of those. Row-major, as `BLAS.gemm`.
enum GEMMBF16 {
    /// Products this small (m·n·k), or with K below 16, stay on the f32 BLAS: packing costs more
    /// than bf16 saves, and Winograd's 3×3 → 6×6 weight transform (K = 9) is better kept exact.
    static let minimumWork = 1 << 15
    static let minimumK = 16

    static func applies(m: Int, n: Int, k: Int) -> Bool { k >= minimumK && m * n * k >= minimumWork }

    /// false when the packing buffers could not be allocated (the caller then runs the f32 BLAS).
    /// A weight packed once (`PackedBF16`) may stand for A (`packedA`) or B (`packedB`); the
    /// matching `a` or `b` is then not read. `bias` is added in the kernel's epilogue (`Bias`).
    static func gemm(threads: Int, transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                     a: UnsafePointer<Float>?, lda: Int, packedA: UnsafePointer<UInt32>? = nil,
                     b: UnsafePointer<Float>?, ldb: Int, packedB: UnsafePointer<UInt32>? = nil, beta: Float,
                     c: UnsafeMutablePointer<Float>, ldc: Int, bias: Bias? = nil) -> Bool {
        // A(i, l) and B(l, j) as strides: a transpose swaps them.
        let (ars, acs) = transA ? (1, lda) : (lda, 1)
        let (brs, bcs) = transB ? (1, ldb) : (ldb, 1)
        let units = (k + 1) / 2   // pair units per row of a packed weight
        func run(_ rows: Range<Int>, _ cols: Range<Int>) -> Int32 {
            diffedit_gemm_bf16_packed(rows.count, cols.count, k, alpha, a.map { $0 + rows.lowerBound * ars }, ars, acs,
                                      packedA.map { $0 + rows.lowerBound * units },
                                      b.map { $0 + cols.lowerBound * bcs }, brs, bcs,
                                      packedB.map { $0 + cols.lowerBound * units }, beta,
                                      c + rows.lowerBound * ldc + cols.lowerBound, ldc,
                                      bias.map { $0.values + ($0.perColumn ? cols.lowerBound : rows.lowerBound) },
                                      bias?.perColumn == true ? 1 : 0, 0)
        }
        return split(threads: threads, m: m, n: n, byRows: m >= n, run)
    }

    /// Runs `run(rows, columns)` on parts of an m × n product, split between `threads` workers by
    /// rows or by columns in multiples of the kernel's register tile (12 rows × 32 columns), which
    /// are the panels of packed weights too. false when a part failed.
    private static func split(threads: Int, m: Int, n: Int, byRows: Bool,
                              _ run: (Range<Int>, Range<Int>) -> Int32) -> Bool {
        let extent = byRows ? m : n, unit = byRows ? 12 : 32
        let parts = max(1, min(threads, extent / (2 * unit)))
        if parts == 1 { return run(0..<m, 0..<n) == 0 }
        let size = ((extent + parts - 1) / parts + unit - 1) / unit * unit
        // One status per worker, on the stack: no heap allocation per product.
        return withUnsafeTemporaryAllocation(of: Int32.self, capacity: parts) { statuses in
            DispatchQueue.concurrentPerform(iterations: parts) { p in
                let lo = min(extent, p * size), hi = min(extent, lo + size)
                statuses[p] = lo < hi ? (byRows ? run(lo..<hi, 0..<n) : run(0..<m, lo..<hi)) : 0
            }
            return statuses.allSatisfy { $0 == 0 }
        }
    }
}

extension GEMMBF16 {
    /// out = GEGLU(X·Wᵀ + bias) (`diffedit_gemm_bf16_geglu`): X is m × k (row stride lda), the
    /// weight (2d × k, value rows then gate rows) packed with `WeightMatrix.packedBF16GEGLU`, out
    /// m × d (row stride ldc); bias the layer's 2d-long one, or nil. Split between threads by
    /// rows (12 at a time) or by panels of 16 outputs. false when the packing buffers could not
    /// be allocated.
    static func gemmGEGLU(threads: Int, m: Int, d: Int, k: Int, a: UnsafePointer<Float>, lda: Int,
                          packed: UnsafePointer<UInt32>, bias: UnsafePointer<Float>?,
                          c: UnsafeMutablePointer<Float>, ldc: Int) -> Bool {
        let n = 2 * d, units = (k + 1) / 2
        func run(_ rows: Range<Int>, _ cols: Range<Int>) -> Int32 {   // cols: of the 2d-wide product
            diffedit_gemm_bf16_geglu(rows.count, cols.count, k, a + rows.lowerBound * lda, lda, 1,
                                     packed + cols.lowerBound * units, c + rows.lowerBound * ldc + cols.lowerBound / 2, ldc,
                                     bias.map { $0 + cols.lowerBound / 2 }, bias.map { $0 + d + cols.lowerBound / 2 }, 0)
        }
        return split(threads: threads, m: m, n: n, byRows: m >= d, run)
    }
}

/// A bias the bf16 kernel adds as it writes C (one addition per element, where writing it into C
/// first and multiplying with beta 1 would make the same one, and a pass over C): `values[i]` on
/// row i of C, or with `perColumn` `values[j]` on column j.
struct Bias {
    let values: UnsafePointer<Float>
    let perColumn: Bool
}

/// Which operand of its products a weight is: `left`, A = W (rows: output channels; convolutions,
/// products written back to channels), or `right`, B = Wᵀ (linear layers over tokens).
enum WeightRole: Int32 { case left = 0, right = 1 }

/// A model weight packed once in the bf16 kernel's layout (gemm_bf16.c, `diffedit_bf16_pack_weight`)
/// for the role its layer uses — or, for a Winograd layer, its 36 transformed planes — made at the
/// first bf16 product and freed with the weight: no widening and no packing per product after that.
/// One per stored matrix, shared by every `WeightMatrix` view of it; building is locked, reading is
/// not (a pack never changes once made).
final class PackedBF16: @unchecked Sendable {
    /// What is packed: the matrix as A or B, F(4×4, 3×3)'s planes U_ξ, each as A, or a GEGLU
    /// projection as B with its value and gate rows interleaved by 16 (`packedBF16GEGLU`).
    enum Form: Hashable { case matrix(WeightRole), winograd4, geglu }

    private let lock = NSLock()
    private var made: [Form: (units: UnsafeMutablePointer<UInt32>, count: Int, rows: Int, columns: Int)] = [:]
    /// The weight's bytes in a checkpoint's read-only memory map, if it is read in place: once
    /// packed, their pages are given back (MADV_DONTNEED; a later read — an f32 product, another
    /// form — faults them in again from the file), so that peak memory holds the packing, not
    /// the packing and the checkpoint.
    private let sourcePages: [(UnsafeRawPointer, Int)]

    init(sourcePages: [(UnsafeRawPointer, Int)]) { self.sourcePages = sourcePages }

    deinit { for p in made.values { p.units.deallocate() } }

    /// The forms packed so far.
    var forms: Set<Form> { lock.lock(); defer { lock.unlock() }; return Set(made.keys) }

    /// The packing `form` of a rows × columns weight, made now by `make` (which fills `count`
    /// units) if it is not yet. (Called at every product: nothing here allocates once it is made.)
    func units(_ form: Form, rows: Int, columns: Int, count: Int,
               make: (UnsafeMutablePointer<UInt32>) -> Void) -> UnsafePointer<UInt32> {
        lock.lock()
        defer { lock.unlock() }
        if let p = made[form] {
            precondition(p.rows == rows && p.columns == columns && p.count == count,
                         "a weight packed as \(p.rows)×\(p.columns) is used as \(rows)×\(columns)")
            return UnsafePointer(p.units)
        }
        let units = UnsafeMutablePointer<UInt32>.allocate(capacity: count)
        make(units)
        made[form] = (units, count, rows, columns)
        #if os(Linux)
        // Only whole pages inside the weight's bytes (a neighbour's could be in use).
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        for (start, bytes) in sourcePages {
            let lo = (Int(bitPattern: start) + page - 1) / page * page, hi = (Int(bitPattern: start) + bytes) / page * page
            if hi > lo { _ = madvise(UnsafeMutableRawPointer(bitPattern: lo), hi - lo, MADV_DONTNEED) }
        }
        #endif
        return UnsafePointer(units)
    }
}

extension WeightMatrix {
    /// At `precision` bf16 (with `KernelPolicy.packsWeightsBF16`), this model weight (rows × columns)
    /// packed once as `role`; nil at f32, or for a matrix made for one call.
    func packedBF16(_ ctx: ComputeContext, role: WeightRole, rows: Int, columns: Int) -> UnsafePointer<UInt32>? {
        pack(ctx, .matrix(role), role: role, rows: rows, columns: columns) { $0 }
    }

    /// A GEGLU projection (rows 2d × columns: the value half's rows, then the gate half's) packed
    /// once for `GEMMBF16.gemmGEGLU`: as B, each panel of 32 rows holding 16 value rows and the
    /// same 16 gate rows, so that one register tile has both halves of 16 outputs. nil where
    /// `packedBF16` would be, or when d is not a multiple of 16.
    func packedBF16GEGLU(_ ctx: ComputeContext, rows: Int, columns: Int) -> UnsafePointer<UInt32>? {
        let d = rows / 2
        guard rows % 32 == 0 else { return nil }
        return pack(ctx, .geglu, role: .right, rows: rows, columns: columns) { r in
            let panel = r / 32, x = r % 32
            return x < 16 ? 16 * panel + x : d + 16 * panel + x - 16
        }
    }

    /// The packing `form` of this weight as `role`, row r of the packed matrix being stored row
    /// `source(r)`.
    private func pack(_ ctx: ComputeContext, _ form: PackedBF16.Form, role: WeightRole, rows: Int, columns: Int,
                      source: (Int) -> Int) -> UnsafePointer<UInt32>? {
        guard ctx.policy.precision == .bf16, ctx.policy.packsWeightsBF16, let packs else { return nil }
        let count = Int(diffedit_bf16_packed_units(role.rawValue, rows, columns))
        return packs.units(form, rows: rows, columns: columns, count: count) { units in
            // Whole panels (12 or 32 rows) per worker, widened to f32 in scratch first when 16-bit.
            let panel = role == .left ? 12 : 32
            let panels = (rows + panel - 1) / panel
            let perPart = max(1, min(panels, ctx.policy.weightBlockFloats / max(1, panel * columns)))
            let parts = (panels + perPart - 1) / perPart
            let workers = min(ctx.threads, parts)
            ctx.workspace.withScratch(workers * perPart * panel * columns) { scratch in
                ctx.parallel(workers) { w in
                    var part = w
                    while part < parts {
                        let r0 = part * perPart * panel, r1 = min(rows, r0 + perPart * panel)
                        let block = scratch + w * perPart * panel * columns
                        for r in r0..<r1 { widenRow(source(r), ld: columns, columns: 0..<columns, into: block + (r - r0) * columns) }
                        diffedit_bf16_pack_weight(role.rawValue, block, columns, rows, columns, r0, r1, units)
                        part += workers
                    }
                }
            }
        }
    }
}
