#if canImport(Glibc)
import Glibc
#endif
import CKernels

/// Running under an address-space limit (`ulimit -v`, RLIMIT_AS), as HPC schedulers set it.
///
/// OpenBLAS cannot fail gracefully there: each BLAS thread (and each thread calling the BLAS)
/// takes a ~128 MiB buffer, and when `malloc` refuses it OpenBLAS retries for ever — in a worker
/// started when the library loads (so even `--version` hung: `exit()` joins that worker) or in
/// the first product. So the thread count is settled before any product runs: with a limit set,
/// `BLASKernel.prepare` starts the tool again with one BLAS thread, where the address space in
/// use is the tool's own baseline; `settle` then works out how many threads fit, starts again
/// with that many when more than one fit, and refuses in one line when not even one does. The
/// tools' own estimates (`MemoryBudget.require`) count the headroom left under the limit too.
public enum AddressSpace {
    /// What the restart for measuring carries: the thread count wanted before it.
    static let wantedMarker = "DIFFEDIT_THREADS_WANTED"

    /// OpenBLAS's per-thread buffer (BUFFER_SIZE, 128 MiB on x86-64, as malloc'd) and a margin
    /// for the tool's own small allocations; big ones are estimated by the tools.
    static let blasBuffer = 130 << 20
    static let margin = 32 << 20

    /// The soft RLIMIT_AS in bytes, or nil when there is none (RLIM_INFINITY is all ones;
    /// Swift cannot import the macro).
    public static var limitBytes: Int? {
        var r = rlimit()
        guard getrlimit(RLIMIT_AS_CONSTANT, &r) == 0, r.rlim_cur != rlim_t.max else { return nil }
        return r.rlim_cur > UInt(Int.max) ? nil : Int(r.rlim_cur)
    }

    /// RLIMIT_AS is an enum in Glibc's Swift import on some toolchains, an Int32 on others.
    private static var RLIMIT_AS_CONSTANT: __rlimit_resource_t { __rlimit_resource_t(RLIMIT_AS.rawValue) }

    /// The address space the process uses now (VmSize).
    public static var inUseBytes: Int {
        var buffer = [CChar](repeating: 0, count: 64)
        let fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 0 }
        let n = read(fd, &buffer, buffer.count - 1)
        close(fd)
        guard n > 0 else { return 0 }
        let text = String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let pages = Int(text.split(separator: " ").first ?? "") ?? 0
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// What is left under the limit now for a tool's work (nil: no limit): less the BLAS buffers
    /// and stacks not yet taken — the calling thread's buffer and each loop worker's stack and
    /// buffer (the BLAS workers took theirs when the library loaded, and are in use already).
    public static var headroomBytes: Int? {
        guard let limit = limitBytes else { return nil }
        return limit - inUseBytes - (BLAS.threadsAtStart - 1) * (blasBuffer + stackBytes) - margin
    }

    /// One product on the calling thread, so that OpenBLAS takes that thread's buffer now, while
    /// it is known to fit (`settle`), rather than in the tool's first product, where a refused
    /// buffer would be retried for ever; from then on the buffer counts in `inUseBytes`.
    static func takeBLASBuffer() {
        let n = 128  // above OpenBLAS's small-matrix path, which takes no buffer
        var a = [Float](repeating: 0, count: n * n), c = [Float](repeating: 0, count: n * n)
        a.withUnsafeMutableBufferPointer { p in
            c.withUnsafeMutableBufferPointer { q in
                BLAS.gemm(threads: 1, m: n, n: n, k: n, a: p.baseAddress!, lda: n, b: p.baseAddress!, ldb: n,
                          c: q.baseAddress!, ldc: n)
            }
        }
    }

    /// Thread stacks are reserved at the soft RLIMIT_STACK (8 MiB by default).
    static var stackBytes: Int {
        var r = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_STACK.rawValue), &r) == 0, r.rlim_cur != rlim_t.max else { return 8 << 20 }
        return Int(min(r.rlim_cur, 1 << 30))
    }

    /// Address space that `threads` threads need beyond `baseline`: a BLAS buffer for the
    /// calling thread, a buffer and a stack for each BLAS worker, and for the tools' own
    /// parallel loops (which call the BLAS from up to `threads` threads) a stack and a buffer
    /// each. Conservative: fewer threads, never a hang.
    public static func needed(threads t: Int, baseline: Int, stack: Int) -> Int {
        baseline + blasBuffer * (2 * t - 1) + stack * (2 * t - 1) + margin
    }

    /// The most threads (up to `wanted`) that fit under `limit` and leave room for the work
    /// (a quarter of what the limit leaves above the baseline, at least 256 MiB: each thread
    /// costs ~140 MiB of address space, which a small limit rather spends on the tool's
    /// activations); one thread when it fits at all; 0 when not even one does.
    public static func threadsThatFit(limit: Int, baseline: Int, wanted: Int, stack: Int) -> Int {
        let reserve = max(256 << 20, (limit - baseline) / 4)
        var t = max(1, wanted)
        while t > 1 && needed(threads: t, baseline: baseline, stack: stack) + reserve > limit { t -= 1 }
        return needed(threads: 1, baseline: baseline, stack: stack) <= limit ? t : 0
    }

    /// The environment of the restart that measures (empty when no limit is set): one BLAS
    /// thread, and the count wanted otherwise.
    static func measuringEnvironment(_ environment: [String: String], cores: Int) -> [String: String] {
        guard limitBytes != nil else { return [:] }
        let wanted = environment["OPENBLAS_NUM_THREADS"].flatMap { Int($0) }.map { max(1, $0) } ?? cores
        return ["OPENBLAS_NUM_THREADS": "1", wantedMarker: String(wanted)]
    }

    /// In the restart that measures: settle on the thread count (see the type's comment).
    /// Returns normally to run with one thread; starts the tool again with more; ends the
    /// process with one line and status 1 when nothing fits.
    static func settle(_ environment: [String: String]) {
        guard let limit = limitBytes else { return }
        // One malloc arena: each extra one reserves 64 MiB of address space.
        _ = diffedit_limit_malloc_arenas()
        guard let wantedText = environment[wantedMarker] else {
            takeBLASBuffer()  // started again with the threads that fit: room for it is known
            return
        }
        unsetenv(wantedMarker)
        let wanted = Int(wantedText) ?? 1
        let baseline = inUseBytes
        let t = threadsThatFit(limit: limit, baseline: baseline, wanted: wanted, stack: stackBytes)
        if t == 0 {
            let tool = CommandLine.arguments.first.map { String($0.split(separator: "/").last ?? "") } ?? "diffedit"
            let need = needed(threads: 1, baseline: baseline, stack: stackBytes)
            let line = "\(tool): out of memory under the address-space limit (ulimit -v \(limit / 1024)): starting needs about \(need / 1024) KiB — raise it (ulimit -v \(need / 1024 + 65536) or more) or remove it (ulimit -v unlimited)\n"
            _ = line.withCString { fputs($0, stderr) }
            // _exit: an OpenBLAS worker may be spinning on its buffer, and exit() would join it.
            _exit(1)
        }
        guard t > 1 else {
            takeBLASBuffer()
            return
        }
        setenv("OPENBLAS_NUM_THREADS", String(t), 1)
        fflush(stdout)
        fflush(stderr)
        BLASKernel.execSelf()
        setenv("OPENBLAS_NUM_THREADS", "1", 1)  // exec failed: go on with the one thread we have
    }
}
