import ArgumentParser
import DiffEditCore
import DiffEditCLI
import Foundation

/// unet-bench's numeric options: sizes bounded so that a run fits in memory (a 256x256 latent is
/// a 2048x2048 image).
private enum Numbers {
    static let height = NumberOption<Int>("--height", .from(1, to: 256))
    static let width = NumberOption<Int>("--width", .from(1, to: 256))
    static let batch = NumberOption<Int>("--batch", .from(1, to: 64))
    static let tokens = NumberOption<Int>("--tokens", .from(1, to: 1024))
    static let runs = NumberOption<Int>("--runs", .from(1, to: 1000))
    static let scoreBudget = NumberOption<Int>("--score-budget", .from(1, to: 1 << 30))
    static let smallConvPixels = NumberOption<Int>("--small-conv-pixels", .from(0, to: 1 << 30))
    static let threads = NumberOption<Int>("--threads", .from(1, to: 1024))
    static let gemmSize = NumberOption<Int>("--gemm", .from(1, to: 8192))
    static let convSize = NumberOption<Int>("--conv", .from(1, to: 8192))
    static let attentionSize = NumberOption<Int>("--time-attention", .from(1, to: 16384))
    static let streamColumns = NumberOption<Int>("--stream-columns", .from(0, to: 1 << 20))
}

/// Which Winograd form 3x3 convolutions of larger images take (KernelPolicy.useWinograd,
/// winogradTile).
enum WinogradChoice: String, CaseIterable, ExpressibleByArgument {
    case four = "4", two = "2", off
}

/// The instruction set of our own register tiles (fused attention, streamed products).
enum TileChoice: String, CaseIterable, ExpressibleByArgument {
    case best, avx512, avx2, plain
    /// The level the C kernels take, nil for the CPU's best.
    var level: Int? { switch self { case .best: nil; case .avx512: 2; case .avx2: 1; case .plain: 0 } }
}

/// How bf16 products read their weights (KernelPolicy.packsWeightsBF16).
enum BF16WeightsChoice: String, CaseIterable, ExpressibleByArgument {
    case packed, perProduct = "per-product"
}

/// How attention runs (KernelPolicy.fusedAttention).
enum AttentionChoice: String, CaseIterable, ExpressibleByArgument {
    case fused, gemm
}

/// Times UNet forward passes: one CFG step of Stable Diffusion is a batch-2 forward.
@main
struct UNetBench: DiffEditTool {
    static let configuration = CommandConfiguration(
        commandName: "unet-bench",
        abstract: "Time one UNet2DCondition forward pass and report GFLOP/s.",
        discussion: """
            Without --model, builds Stable Diffusion 1.5's UNet configuration with deterministic \
            random weights in memory (no download). FLOPs count 2 per multiply–accumulate of the \
            convolutions, linear layers and attention products.
            """,
        version: CLI.version)

    @Option(name: .long, help: "Model (a diffusers folder or a single-file .safetensors checkpoint) whose UNet to time; default: built-in SD 1.5 config with random weights.")
    var model: String?

    @Option(Numbers.height, "Latent height")
    var height = 64
    @Option(Numbers.width, "Latent width")
    var width = 64
    @Option(Numbers.batch, "Batch size (2 = one classifier-free-guidance step)")
    var batch = 2
    @Option(Numbers.tokens, "Text tokens per prompt")
    var tokens = 77
    @Option(Numbers.runs, "Timed forward passes (no warm-up run)")
    var runs = 1
    @Option(Numbers.scoreBudget, "Attention score buffer per worker, in floats (KernelPolicy.scoreBudget)", default: KernelPolicy().scoreBudget)
    var scoreBudget: Int?

    @Option(Numbers.smallConvPixels, "3x3 convolutions of images with at most this many output pixels (height x width) run as one GEMM over an unfolded copy (KernelPolicy.smallImagePixels)", default: KernelPolicy().smallImagePixels)
    var smallConvPixels: Int?

    @Option(name: .long, help: "Winograd form of 3x3 stride-1 convolutions where it pays: 4 = F(4x4, 3x3), 2 = F(2x2, 3x3), off = unfolded products instead (KernelPolicy.winogradTile, useWinograd)")
    var winograd: WinogradChoice = KernelPolicy().winogradTile == 2 ? .two : .four
    @Flag(name: .long, help: "Same as --winograd off.")
    var noWinograd = false
    @Option(name: .long, help: "Attention of the UNet's heads: fused = packed keys and values, blocks of query rows with their scores in cache; gemm = two BLAS products per chunk of rows (KernelPolicy.fusedAttention)")
    var attention: AttentionChoice = KernelPolicy().fusedAttention ? .fused : .gemm
    @Option(Numbers.streamColumns, "Products by a weight with at most this many columns (tokens or pixels) stream the weight once in place instead of widening it for the BLAS; 0 = never (KernelPolicy.streamColumns)", default: KernelPolicy().streamColumns)
    var streamColumns: Int?
    @Option(name: .long, help: "At --precision bf16: packed = each weight (or a Winograd layer's transformed planes) packed into the bf16 kernel's layout once, at its first product, and kept, the checkpoint's pages given back; per-product = widened and packed at every product (KernelPolicy.packsWeightsBF16). Same numbers.")
    var bf16Weights: BF16WeightsChoice = KernelPolicy().packsWeightsBF16 ? .packed : .perProduct
    @Option(name: .long, help: "Instruction set of our own register tiles (fused attention, streamed products), at most the CPU's: best, avx512, avx2 or plain C (KernelPolicy.attentionLevel, streamLevel); with OPENBLAS_CORETYPE=Haswell it shows an AVX2-only CPU's path")
    var tiles: TileChoice = .best
    @Flag(name: .long, help: "Convert every weight to a private f32 copy at load instead of reading matrices in place from the checkpoint's memory map (same numbers).")
    var f32Weights = false

    @OptionGroup var loraOption: LoRAOption

    @OptionGroup var deepCacheOption: DeepCacheOption
    @OptionGroup var precisionOption: PrecisionOption

    @Flag(name: .long, help: "Print time per kernel category (summed over worker threads).")
    var profile = false

    @Option(Numbers.threads, "Threads for the BLAS and our own loops", defaultText: "the machine's cores")
    var threads: Int?

    @Option(name: .long, parsing: .upToNextOption, help: Numbers.gemmSize.help("Instead, time one GEMM of M N K (BLAS.gemm, row-major), each", defaultText: nil),
            transform: Numbers.gemmSize.transform)
    var gemm: [Int] = []

    @Option(name: .long, parsing: .upToNextOption, help: Numbers.convSize.help("Instead, time one 3x3 stride-1 convolution (padding 1, batch --batch) of C in-channels, O out-channels and H x W images by each method, with its error against float64: C O H W", defaultText: nil),
            transform: Numbers.convSize.transform)
    var conv: [Int] = []

    @Option(name: .long, parsing: .upToNextOption, help: Numbers.attentionSize.help("Instead, time one attention (batch --batch) of LQ queries and LK keys, HEADS heads of width D, fused and as BLAS products, with each one's error against float64 on sampled rows: LQ LK HEADS D", defaultText: nil),
            transform: Numbers.attentionSize.transform)
    var timeAttention: [Int] = []

    func run() throws {
        try CLI.run(Self.toolName) {
            try precisionOption.apply(tool: Self.toolName, quiet: false)
            if !gemm.isEmpty {
                guard gemm.count == 3 else { throw ToolError("--gemm takes three sizes, M N K — e.g. --gemm 64 64 64") }
                let (m, n, k) = (gemm[0], gemm[1], gemm[2])
                let a = [Float](repeating: 0.5, count: m * k), b = [Float](repeating: 0.25, count: k * n)
                var c = [Float](repeating: 0, count: m * n)
                let context = ComputeContext(threads: threads ?? ComputeContext.defaultThreads)
                print("gemm in \(context.policy.precision.rawValue)")
                for r in 0..<max(runs, 2) {
                    let t0 = Date()
                    a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in c.withUnsafeMutableBufferPointer { cp in
                        context.gemm(m: m, n: n, k: k, a: ap.baseAddress!, lda: k, b: bp.baseAddress!, ldb: n,
                                     c: cp.baseAddress!, ldc: n)
                    } } }
                    let dt = Date().timeIntervalSince(t0)
                    print(String(format: "gemm %dx%dx%d run %d: %.4f s, %.1f GFLOP/s", m, n, k, r + 1, dt,
                                 2 * Double(m * n * k) / dt / 1e9))
                }
                return
            }
            if !timeAttention.isEmpty {
                guard timeAttention.count == 4 else { throw ToolError("--time-attention takes four sizes, LQ LK HEADS D — e.g. --time-attention 4096 4096 8 40") }
                timeAttentionMethods(lq: timeAttention[0], lk: timeAttention[1], heads: timeAttention[2], d: timeAttention[3])
                return
            }
            if !conv.isEmpty {
                guard conv.count == 4 else { throw ToolError("--conv takes four sizes, C O H W — e.g. --conv 640 640 32 32") }
                timeConvolution(c: conv[0], o: conv[1], h: conv[2], w: conv[3])
                return
            }
            let context = ComputeContext(threads: threads ?? ComputeContext.defaultThreads)
            // Before the UNet loads: readsWeightsInPlace is read when weights are loaded.
            if f32Weights { context.policy.readsWeightsInPlace = false }
            if let scoreBudget { context.policy.scoreBudget = scoreBudget }
            if let smallConvPixels { context.policy.smallImagePixels = smallConvPixels }
            if noWinograd || winograd == .off { context.policy.useWinograd = false }
            if winograd == .two { context.policy.winogradTile = 2 }
            context.policy.fusedAttention = attention == .fused
            context.policy.packsWeightsBF16 = bf16Weights == .packed
            if let streamColumns { context.policy.streamColumns = streamColumns }
            if let level = tiles.level { context.policy.attentionLevel = level; context.policy.streamLevel = level }
            let loadStart = Date()
            let unet: UNet2DCondition
            if let model {
                var folder = try ModelFolder.resolve(model)
                folder.lora = try loraOption.load()
                unet = try UNet2DCondition(folder: folder, context: context)
            } else {
                unet = try UNet2DCondition(config: JSONConfig(values: UNetConfig.stableDiffusion15JSON, label: "built-in SD 1.5 unet config"),
                                           randomWeightsSeed: 1, context: context)
            }
            let loadTime = Date().timeIntervalSince(loadStart)
            let cross = unet.config.crossAttentionDim[0]
            let g = TorchGenerator(seed: 0)
            let sample = g.randn(shape: [batch, 4, height, width])
            let enc = g.randn(shape: [batch, tokens, cross])
            CLI.note(Self.toolName, "\(model ?? "SD 1.5 config, random weights"), loaded in \(String(format: "%.1f", loadTime)) s; latent \(batch)x4x\(height)x\(width), \(tokens) tokens, \(context.threads) threads; \(BLASKernel.description)")
            let profiler = profile ? Profiler() : nil
            context.profiler = profiler
            // --deep-cache N: runs 1, N+1, … are whole steps, the others the shallow branch.
            let cache = deepCacheOption.deepCache > 1 ? UNetFeatureCache(interval: deepCacheOption.deepCache) : nil
            for r in 0..<runs {
                let flops = FlopCounter()
                context.flops = flops
                let t0 = Date()
                let out = try unet.forward(sample: sample, timesteps: [981], encoderHiddenStates: enc, cache: cache)
                let dt = Date().timeIntervalSince(t0)
                let gflop = Double(2 * flops.macs) / 1e9
                let finite = out.data.allSatisfy { $0.isFinite }
                print(String(format: "run %d: %.3f s, %.1f GFLOP, %.1f GFLOP/s", r + 1, dt, gflop, gflop / dt)
                      + (finite ? "" : " (output has non-finite values!)"))
                print(String(format: "  workspace: %d buffers, %.1f MiB held", context.workspace.allocations,
                             Double(context.workspace.highWaterBytes) / 1048576))
                for (name, seconds, calls) in profiler?.report() ?? [] {
                    print(String(format: "  %-20@ %8.3f s %6d calls", name as NSString, seconds, calls))
                }
            }
        }
    }

    /// --time-attention LQ LK HEADS D: the fused and the BLAS attention's time (the best of --runs,
    /// at least 2) on random data, and each one's worst error against float64 on 64 sampled rows.
    func timeAttentionMethods(lq: Int, lk: Int, heads: Int, d: Int) {
        let g = TorchGenerator(seed: 0)
        let w = heads * d
        let q = g.randn(shape: [batch, lq, w]), k = g.randn(shape: [batch, lk, w]), v = g.randn(shape: [batch, lk, w])
        let scale = 1 / Float(d).squareRoot()
        let context = ComputeContext(threads: threads ?? ComputeContext.defaultThreads)
        if let level = tiles.level { context.policy.attentionLevel = level }
        // float64 rows: (batch, query) pairs spread over the whole output.
        let samples = (0..<64).map { ($0 % batch, ($0 * 7919) % lq) }
        var exact = [[Double]]()
        for (bi, i) in samples {
            var row = [Double](repeating: 0, count: w)
            for h in 0..<heads {
                var s = [Double](repeating: 0, count: lk)
                for j in 0..<lk {
                    var dot = 0.0
                    for x in 0..<d { dot += Double(q.data[(bi * lq + i) * w + h * d + x]) * Double(k.data[(bi * lk + j) * w + h * d + x]) }
                    s[j] = dot * Double(scale)
                }
                let m = s.max()!
                let e = s.map { Foundation.exp($0 - m) }, z = e.reduce(0, +)
                for x in 0..<d {
                    var acc = 0.0
                    for j in 0..<lk { acc += e[j] * Double(v.data[(bi * lk + j) * w + h * d + x]) }
                    row[h * d + x] = acc / z
                }
            }
            exact.append(row)
        }
        for fused in [true, false] {
            context.policy.fusedAttention = fused
            var best = Double.infinity
            var out = Attention.forward(q: q, k: k, v: v, heads: heads, scale: scale, context: context)  // warm-up
            for _ in 0..<max(runs, 2) {
                let t0 = Date()
                out = Attention.forward(q: q, k: k, v: v, heads: heads, scale: scale, context: context)
                best = min(best, Date().timeIntervalSince(t0))
            }
            var worst = 0.0
            for (n, (bi, i)) in samples.enumerated() {
                for c in 0..<w { worst = max(worst, abs(Double(out.data[(bi * lq + i) * w + c]) - exact[n][c])) }
            }
            let ran = fused && d <= Attention.fusedMaxHeadDim && lk >= context.policy.fusedAttentionMinKeys ? "fused" : "gemm"
            print(String(format: "attention %dx%d, %d heads of %d, batch %d, %@: %.4f s, %.1f GFLOP/s, max error to float64 %.2e",
                         lq, lk, heads, d, batch, ran, best, 4 * Double(batch * heads * lq * lk * d) / best / 1e9, worst))
        }
    }

    /// --conv C O H W: each method's time per call (the best of --runs, at least 2) on random data.
    func timeConvolution(c: Int, o: Int, h: Int, w: Int) {
        let g = TorchGenerator(seed: 0)
        let x = g.randn(shape: [batch, c, h, w])
        let weight = g.randn(shape: [o, c, 3, 3]).data.map { $0 / Float(3 * c).squareRoot() }
        let bias = g.randn(shape: [o]).data
        let context = ComputeContext(threads: threads ?? ComputeContext.defaultThreads)
        let methods: [(String, () -> Tensor)] = [
            ("small", { Conv2D.forwardSmall(x, weight: weight, bias: bias, outChannels: o, kernel: (3, 3), padding: .same(1), context: context) }),
            ("bands", { Conv2D.forward(x, weight: weight, bias: bias, outChannels: o, kernel: (3, 3), padding: .same(1), context: context) }),
            ("winograd 2", { Conv2D.forwardWinograd(x, weight: weight, bias: bias, outChannels: o, padding: .same(1), context: context) }),
            ("winograd 4", { Conv2D.forwardWinograd(x, weight: weight, bias: bias, outChannels: o, padding: .same(1), tile: 4, context: context) }),
        ]
        // The float64 direct convolution of the same numbers, for each method's error.
        var exact = [Double](repeating: 0, count: batch * o * h * w)
        exact.withUnsafeMutableBufferPointer { e in
            DispatchQueue.concurrentPerform(iterations: batch * o) { bo in
                let b = bo / o, oi = bo % o
                let dst = e.baseAddress! + bo * h * w
                for p in 0..<(h * w) { dst[p] = Double(bias[oi]) }
                for ci in 0..<c {
                    let plane = x.data.withUnsafeBufferPointer { $0.baseAddress! } + (b * c + ci) * h * w
                    for ky in 0..<3 {
                        for kx in 0..<3 {
                            let wv = Double(weight[((oi * c + ci) * 3 + ky) * 3 + kx])
                            for y in max(0, 1 - ky)..<min(h, h + 1 - ky) {
                                let srow = plane + (y + ky - 1) * w + (kx - 1), drow = dst + y * w
                                for xo in max(0, 1 - kx)..<min(w, w + 1 - kx) { drow[xo] += wv * Double(srow[xo]) }
                            }
                        }
                    }
                }
            }
        }
        let exactScale = exact.reduce(0) { max($0, abs($1)) }
        var reference: Tensor?
        for (name, method) in methods {
            var best = Double.infinity, out = method()  // warm-up: scratch first touched
            for _ in 0..<max(runs, 2) {
                let t0 = Date()
                out = method()
                best = min(best, Date().timeIntervalSince(t0))
            }
            let ref = reference ?? out
            reference = ref
            var worst: Float = 0, scale: Float = 0
            for i in 0..<out.count {
                worst = max(worst, abs(out.data[i] - ref.data[i]))
                scale = max(scale, abs(ref.data[i]))
            }
            var worstExact = 0.0
            for i in 0..<out.count { worstExact = max(worstExact, abs(Double(out.data[i]) - exact[i])) }
            print(String(format: "conv %d->%d %dx%d batch %d %-10@ %.4f s, %.1f GFLOP/s (direct count), max diff to small %.2e of %.2e, to float64 %.2e of max (%.2e)",
                         c, o, h, w, batch, name as NSString, best, 2 * Double(batch * o * c * 9 * h * w) / best / 1e9,
                         Double(worst), Double(scale), worstExact / exactScale, worstExact))
        }
    }
}
