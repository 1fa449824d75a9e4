import Dispatch
import Foundation

/// What a forward pass runs with: the thread policy, the kernels' tuning (`KernelPolicy`), the
/// workspace its activations and scratch come from, and (optionally) a profiler and a FLOP
/// counter. Models hold one and hand it to their layers; layers hand it to the kernels; only
/// kernels look inside. One forward pass at a time per context (OpenBLAS's thread count is
/// process state, set here and nowhere else).
public final class ComputeContext: @unchecked Sendable {
    /// Threads for the BLAS and for our own parallel loops.
    public let threads: Int
    /// Block sizes, budgets and method choices of the kernels run with this context; set it
    /// before a forward pass, not during one (kernels read it once per call).
    public var policy: KernelPolicy
    public let workspace: Workspace
    /// Wall time per kernel category (`unet-bench --profile`); nil costs one branch per kernel.
    public var profiler: Profiler?
    /// Multiply–accumulates of the products run (convolutions, linears, attention).
    public var flops: FlopCounter?
    /// GroupNorm statistics to record, or to normalise with instead of each input's own
    /// (VAETiling's shared statistics); nil costs one branch per GroupNorm.
    public var groupNormStatistics: GroupNormStatistics?

    /// The threads OpenBLAS started with: OPENBLAS_NUM_THREADS when set (OpenBLAS reads it),
    /// else the machine's cores.
    public static let defaultThreads: Int = max(1, BLAS.threadsAtStart)

    public init(threads: Int = ComputeContext.defaultThreads, policy: KernelPolicy = KernelPolicy(),
                workspace: Workspace = Workspace()) {
        self.threads = max(1, threads)
        self.policy = policy
        self.workspace = workspace
        profiler = Profiler.fromEnvironment
    }

    /// A fresh activation of `shape` from the workspace (contents undefined).
    @inline(__always)
    public func activation(_ shape: [Int]) -> Activation { Activation(shape: shape, workspace: workspace) }

    @inline(__always)
    func measure<T>(_ name: @autoclosure () -> String, _ body: () throws -> T) rethrows -> T {
        guard let profiler else { return try body() }
        return try profiler.measure(name(), body)
    }

    @inline(__always)
    func countMACs(_ n: Int) { flops?.add(n) }

    // MARK: Threads

    /// C = alpha·op(A)·op(B) + beta·C on all of this context's threads (one thread for small
    /// products, see BLAS.singleThreadBelow).
    @inline(__always)
    public func gemm(threads: Int? = nil, transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int, alpha: Float = 1,
              a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int, beta: Float = 0,
              c: UnsafeMutablePointer<Float>, ldc: Int) {
        let threads = threads ?? self.threads
        // The opt-in bf16 products (KernelPolicy.precision); the f32 BLAS if its buffers fail.
        if policy.precision == .bf16, GEMMBF16.applies(m: m, n: n, k: k),
           GEMMBF16.gemm(threads: threads, transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a,
                         lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc) {
            return
        }
        BLAS.gemm(threads: threads, transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                  b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
    }

    /// C = alpha·W·B + beta·C with the weight on the left (`WeightRole.left`; W is m × k).
    @inline(__always)
    func gemm(threads: Int? = nil, transB: Bool = false, m: Int, n: Int, k: Int, alpha: Float = 1, weight w: WeightBlock,
              b: UnsafePointer<Float>, ldb: Int, beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        if let packed = w.packed,
           GEMMBF16.gemm(threads: threads ?? self.threads, transA: false, transB: transB, m: m, n: n, k: k, alpha: alpha,
                         a: nil, lda: k, packedA: packed, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc,
                         bias: w.bias.map { Bias(values: $0, perColumn: false) }) {
            return
        }
        guard let values = w.values else { fatalError("bf16 product: no memory for its packing buffers") }
        gemm(threads: threads, transB: transB, m: m, n: n, k: k, alpha: alpha, a: values, lda: w.ld, b: b, ldb: ldb,
             beta: beta, c: c, ldc: ldc)
    }

    /// C = alpha·A·Wᵀ + beta·C with the weight on the right, transposed (`WeightRole.right`; W is n × k).
    @inline(__always)
    func gemm(threads: Int? = nil, transA: Bool = false, m: Int, n: Int, k: Int, alpha: Float = 1,
              a: UnsafePointer<Float>, lda: Int, weightTransposed w: WeightBlock, beta: Float = 0,
              c: UnsafeMutablePointer<Float>, ldc: Int) {
        if let packed = w.packed,
           GEMMBF16.gemm(threads: threads ?? self.threads, transA: transA, transB: true, m: m, n: n, k: k, alpha: alpha,
                         a: a, lda: lda, b: nil, ldb: k, packedB: packed, beta: beta, c: c, ldc: ldc,
                         bias: w.bias.map { Bias(values: $0, perColumn: true) }) {
            return
        }
        guard let values = w.values else { fatalError("bf16 product: no memory for its packing buffers") }
        gemm(threads: threads, transA: transA, transB: true, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
             b: values, ldb: w.ld, beta: beta, c: c, ldc: ldc)
    }

    /// Runs body(i) for i in 0..<count on up to `threads` workers, each of which may call
    /// `BLAS.gemm(threads: 1, …)`: the BLAS is set to one thread before the workers start.
    func parallel(_ count: Int, _ body: (Int) -> Void) {
        if count <= 1 || threads == 1 {
            for i in 0..<count { body(i) }
            return
        }
        BLAS.useThreads(1)
        DispatchQueue.concurrentPerform(iterations: count, execute: body)
    }

    /// Splits 0..<n into at most `threads` contiguous ranges of at least `minChunk` and runs
    /// body(range) for each in parallel (elementwise and normalisation loops).
    func parallelRanges(_ n: Int, minChunk: Int = 4096, _ body: (Range<Int>) -> Void) {
        let parts = max(1, min(threads, n / max(minChunk, 1)))
        if parts == 1 { if n > 0 { body(0..<n) }; return }
        let size = (n + parts - 1) / parts
        DispatchQueue.concurrentPerform(iterations: parts) { k in
            let lo = k * size, hi = min(n, lo + size)
            if lo < hi { body(lo..<hi) }
        }
    }
}

/// Counts multiply–accumulates, for GFLOP/s.
public final class FlopCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    public init() {}
    public var macs: Int { lock.lock(); defer { lock.unlock() }; return count }
    func add(_ n: Int) { lock.lock(); count += n; lock.unlock() }
}

/// Wall-clock accounting of kernel time by category.
public final class Profiler: @unchecked Sendable {
    private let lock = NSLock()
    private var totals: [String: (seconds: Double, calls: Int)] = [:]
    public init() {}

    func measure<T>(_ name: String, _ body: () throws -> T) rethrows -> T {
        let t0 = DispatchTime.now().uptimeNanoseconds
        let r = try body()
        let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        lock.lock()
        let old = totals[name] ?? (0, 0)
        totals[name] = (old.seconds + dt, old.calls + 1)
        lock.unlock()
        return r
    }

    /// With DIFFEDIT_PROFILE=1 in the environment, one profiler shared by every context of the
    /// process, printed to stderr when the process exits (kernel time of any tool).
    public static let fromEnvironment: Profiler? = {
        guard let v = ProcessInfo.processInfo.environment["DIFFEDIT_PROFILE"], !v.isEmpty, v != "0" else { return nil }
        let p = Profiler()
        Profiler.atExit = p
        atexit {
            guard let p = Profiler.atExit else { return }
            var text = "kernel time (DIFFEDIT_PROFILE):\n"
            for (name, seconds, calls) in p.report() {
                text += String(format: "  %-36@ %8.3f s %6d calls\n", name as NSString, seconds, calls)
            }
            FileHandle.standardError.write(text.data(using: .utf8)!)
        }
        return p
    }()
    nonisolated(unsafe) private static var atExit: Profiler?

    /// Categories by time, largest first, and clears them.
    public func report() -> [(name: String, seconds: Double, calls: Int)] {
        lock.lock(); defer { lock.unlock() }
        let r = totals.map { ($0.key, $0.value.seconds, $0.value.calls) }.sorted { $0.1 > $1.1 }
        totals = [:]
        return r
    }
}

/// The memory a model's forward passes compute in: buffers handed out by size and taken back
/// when the activation holding them is released, so the second and every later forward pass
/// of a denoising loop reuses the first one's memory instead of allocating (the compute buffer
/// stable-diffusion.cpp reserves once). Activation sizes repeat exactly from step to step, so
/// buffers are kept per exact element count.
public final class Workspace: @unchecked Sendable {
    private let lock = NSLock()
    private var free: [Int: [UnsafeMutablePointer<Float>]] = [:]
    /// Buffers obtained from the system so far: constant once a forward pass has been seen.
    public private(set) var allocations = 0
    /// Bytes held (in use or pooled) now, and at most.
    public private(set) var bytesHeld = 0
    public private(set) var highWaterBytes = 0

    public init() {}

    deinit { releasePooled() }

    func take(_ count: Int) -> UnsafeMutablePointer<Float> {
        let n = max(count, 1)
        lock.lock()
        if let p = free[n]?.popLast() {
            lock.unlock()
            return p
        }
        allocations += 1
        bytesHeld += n * 4
        highWaterBytes = max(highWaterBytes, bytesHeld)
        lock.unlock()
        // 64-byte alignment for the vector loops and the BLAS.
        return UnsafeMutableRawPointer.allocate(byteCount: n * 4, alignment: 64).bindMemory(to: Float.self, capacity: n)
    }

    func give(_ p: UnsafeMutablePointer<Float>, count: Int) {
        lock.lock()
        free[max(count, 1), default: []].append(p)
        lock.unlock()
    }

    /// Returns the pooled (unused) buffers to the system.
    public func releasePooled() {
        lock.lock()
        for (n, list) in free {
            for p in list { p.deallocate() }
            bytesHeld -= n * 4 * list.count
        }
        free = [:]
        lock.unlock()
    }

    /// Scratch of `count` floats for the duration of `body` (kernel-internal buffers).
    @inline(__always)
    func withScratch<R>(_ count: Int, _ body: (UnsafeMutablePointer<Float>) throws -> R) rethrows -> R {
        let p = take(count)
        defer { give(p, count: count) }
        return try body(p)
    }
}

/// A dense f32 activation in C order whose memory belongs to a Workspace: what layers take and
/// return. Copying the struct shares the buffer (activations are written once, by the kernel
/// that makes them, then read); the buffer goes back to the workspace with its last holder.
public struct Activation {
    final class Storage {
        let pointer: UnsafeMutablePointer<Float>
        let count: Int
        let workspace: Workspace

        init(count: Int, workspace: Workspace) {
            self.count = count
            self.workspace = workspace
            pointer = workspace.take(count)
        }

        deinit { workspace.give(pointer, count: count) }
    }

    public private(set) var shape: [Int]
    let storage: Storage

    init(shape: [Int], workspace: Workspace) {
        self.shape = shape
        storage = Storage(count: shape.reduce(1, *), workspace: workspace)
    }

    public var count: Int { storage.count }
    public var rank: Int { shape.count }
    @inline(__always) var pointer: UnsafeMutablePointer<Float> { storage.pointer }

    /// The same buffer seen with another shape of equal element count.
    func reshaped(_ newShape: [Int]) -> Activation {
        precondition(newShape.reduce(1, *) == count, "reshape \(shape) to \(newShape)")
        var r = self
        r.shape = newShape
        return r
    }

    /// A copy in the workspace of `context`.
    init(_ t: Tensor, _ context: ComputeContext) {
        self.init(shape: t.shape, workspace: context.workspace)
        if t.count > 0 { t.data.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: t.count) } }
    }

    /// A copy as a Tensor (the models' public currency).
    public var tensor: Tensor {
        Tensor(shape: shape, data: [Float](UnsafeBufferPointer(start: pointer, count: count)))
    }
}
