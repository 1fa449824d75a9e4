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
    static func gemm(threads: Int, transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                     a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int, beta: Float,
                     c: UnsafeMutablePointer<Float>, ldc: Int) -> Bool {
        // A(i, l) and B(l, j) as strides: a transpose swaps them.
        let (ars, acs) = transA ? (1, lda) : (lda, 1)
        let (brs, bcs) = transB ? (1, ldb) : (ldb, 1)
        func run(_ rows: Range<Int>, _ cols: Range<Int>) -> Int32 {
            diffedit_gemm_bf16(rows.count, cols.count, k, alpha, a + rows.lowerBound * ars, ars, acs,
                               b + cols.lowerBound * bcs, brs, bcs, beta,
                               c + rows.lowerBound * ldc + cols.lowerBound, ldc, 0)
        }
        // Work split in multiples of the kernel's register tile (12 rows × 32 columns).
        let byRows = m >= n
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
