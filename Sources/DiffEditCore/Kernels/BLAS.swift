import COpenBLAS

/// OpenBLAS's cblas_sgemm: every large product in diffedit goes through here. Callers say how
/// many threads the product may use (ComputeContext's policy); OpenBLAS's thread count is
/// process state, changed only when it differs from the last product's.
public enum BLAS {
    /// C[M×N] = alpha · op(A) · op(B) + beta · C, row-major.
    /// op(A) is M×K (A is K×M when transA), op(B) is K×N (B is N×K when transB).
    @inline(__always)
    public static func gemm(threads: Int, transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                            alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                            b: UnsafePointer<Float>, ldb: Int, beta: Float = 0,
                            c: UnsafeMutablePointer<Float>, ldc: Int) {
        useThreads(m * n * k < singleThreadBelow ? 1 : threads)
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                    transB ? CblasTrans : CblasNoTrans,
                    blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb),
                    beta, c, blasint(ldc))
    }

    /// Products of fewer multiply-adds than this (m·n·k) run on one thread. Waking OpenBLAS's
    /// worker threads costs more than such a product saves, and on a busy machine every wake-up
    /// waits for a time slice: the demo model's 16×16 latents ran 50× slower (66 s instead of
    /// 1.2 s for an inversion) with two threads while another process kept both cores busy.
    /// 2^24 multiply-adds is ~0.2 ms on one core; SD-size products are 100–1000× larger.
    public static let singleThreadBelow = 1 << 24

    /// The thread count OpenBLAS uses for the next product.
    public static var threadsInUse: Int { current }

    /// OpenBLAS's own thread count at start-up (OPENBLAS_NUM_THREADS or the cores).
    public static let threadsAtStart = Int(openblas_get_num_threads())

    nonisolated(unsafe) private static var current = threadsAtStart

    /// Sets OpenBLAS's thread count when it differs. Called by the thread that runs the forward
    /// pass, and by parallel workers only after that thread has set it to 1 (so they never
    /// write it).
    @inline(__always)
    static func useThreads(_ n: Int) {
        if n != current {
            openblas_set_num_threads(Int32(n))
            current = n
        }
    }
}
