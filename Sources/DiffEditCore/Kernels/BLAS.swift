import COpenBLAS

/// Thin wrappers over OpenBLAS's cblas_sgemm: every large product in diffedit goes through here.
public enum BLAS {
    /// C[M×N] = alpha · op(A) · op(B) + beta · C, row-major.
    /// op(A) is M×K (A is K×M when transA), op(B) is K×N (B is N×K when transB).
    @inline(__always)
    public static func gemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                            alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                            b: UnsafePointer<Float>, ldb: Int, beta: Float = 0,
                            c: UnsafeMutablePointer<Float>, ldc: Int) {
        useThreads(m * n * k < singleThreadBelow ? 1 : threads)
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                    transB ? CblasTrans : CblasNoTrans,
                    blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb),
                    beta, c, blasint(ldc))
    }

    /// Most threads a product may use (OpenBLAS's own choice at start-up: OPENBLAS_NUM_THREADS
    /// or the core count). Attention sets it to 1 while it runs heads in parallel itself.
    public static var threads: Int {
        get { threadLimit }
        set { threadLimit = Swift.max(1, newValue); useThreads(threadLimit) }
    }

    /// Products of fewer multiply-adds than this (m·n·k) run on one thread. Waking OpenBLAS's
    /// worker threads costs more than such a product saves, and on a busy machine every wake-up
    /// waits for a time slice: the demo model's 16×16 latents ran 50× slower (66 s instead of
    /// 1.2 s for an inversion) with two threads while another process kept both cores busy.
    /// 2^24 multiply-adds is ~0.2 ms on one core; SD-size products are 100–1000× larger.
    public static var singleThreadBelow = 1 << 24

    nonisolated(unsafe) private static var threadLimit = Int(openblas_get_num_threads())
    nonisolated(unsafe) private static var threadsInUse = Int(openblas_get_num_threads())

    @inline(__always)
    private static func useThreads(_ n: Int) {
        if n != threadsInUse {
            openblas_set_num_threads(Int32(n))
            threadsInUse = n
        }
    }
}
