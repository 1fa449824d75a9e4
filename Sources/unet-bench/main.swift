import ArgumentParser
import DiffEditCore
import DiffEditCLI
import Foundation

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

    @Option(name: .long, help: "Model folder in diffusers layout (uses its unet/); default: built-in SD 1.5 config with random weights.")
    var model: String?

    @Option(name: .long, help: "Latent height.") var height = 64
    @Option(name: .long, help: "Latent width.") var width = 64
    @Option(name: .long, help: "Batch size (2 = one classifier-free-guidance step).") var batch = 2
    @Option(name: .long, help: "Text tokens per prompt.") var tokens = 77
    @Option(name: .long, help: "Timed forward passes (no warm-up run).") var runs = 1
    @Option(name: .long, help: "Attention score buffer per worker, in floats (Attention.scoreBudget).")
    var scoreBudget: Int?

    @Option(name: .long, help: "3x3 convolutions of images with at most this many output pixels (height x width) run as one GEMM over an unfolded copy (Conv2D.smallImagePixels).")
    var smallConvPixels: Int?

    @Flag(name: .long, help: "3x3 convolutions of larger images in bands of rows instead of Winograd F(2x2, 3x3).")
    var noWinograd = false
    @Flag(name: .long, help: "Convert f16/bf16 weights to f32 at load instead of keeping them 16-bit and widening them per use (same numbers).")
    var f32Weights = false

    @Flag(name: .long, help: "Print time per kernel category (summed over worker threads).")
    var profile = false

    @Option(name: .long, help: "Threads for the BLAS and our own loops (default: the machine's cores).") var threads: Int?

    @Option(name: .long, parsing: .upToNextOption, help: "Instead, time one GEMM of M N K (BLAS.gemm, row-major).")
    var gemm: [Int] = []

    func run() throws {
        try CLI.run("unet-bench") {
            if !gemm.isEmpty {
                guard gemm.count == 3, gemm.allSatisfy({ $0 > 0 }) else { throw ToolError("--gemm takes M N K") }
                let (m, n, k) = (gemm[0], gemm[1], gemm[2])
                let a = [Float](repeating: 0.5, count: m * k), b = [Float](repeating: 0.25, count: k * n)
                var c = [Float](repeating: 0, count: m * n)
                for r in 0..<max(runs, 2) {
                    let t0 = Date()
                    BLAS.gemm(threads: threads ?? ComputeContext.defaultThreads, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: n,
                              c: &c, ldc: n)
                    let dt = Date().timeIntervalSince(t0)
                    print(String(format: "gemm %dx%dx%d run %d: %.4f s, %.1f GFLOP/s", m, n, k, r + 1, dt,
                                 2 * Double(m * n * k) / dt / 1e9))
                }
                return
            }
            guard height >= 1, width >= 1, batch >= 1, tokens >= 1, runs >= 1 else {
                throw ToolError("--height, --width, --batch, --tokens and --runs must be positive")
            }
            if let threads, threads < 1 { throw ToolError("--threads must be at least 1") }
            let context = ComputeContext(threads: threads ?? ComputeContext.defaultThreads)
            if f32Weights { Parameter.keepsSixteenBit = false }
            let loadStart = Date()
            let unet: UNet2DCondition
            if let model {
                unet = try UNet2DCondition(folder: try ModelFolder.resolve(model), context: context)
            } else {
                unet = try UNet2DCondition(config: JSONConfig(values: UNetConfig.stableDiffusion15JSON, label: "built-in SD 1.5 unet config"),
                                           randomWeightsSeed: 1, context: context)
            }
            let loadTime = Date().timeIntervalSince(loadStart)
            let cross = unet.config.crossAttentionDim[0]
            let g = TorchGenerator(seed: 0)
            let sample = g.randn(shape: [batch, 4, height, width])
            let enc = g.randn(shape: [batch, tokens, cross])
            CLI.note("unet-bench", "\(model ?? "SD 1.5 config, random weights"), loaded in \(String(format: "%.1f", loadTime)) s; latent \(batch)x4x\(height)x\(width), \(tokens) tokens, \(context.threads) threads; \(BLASKernel.description)")
            let profiler = profile ? Profiler() : nil
            context.profiler = profiler
            if let scoreBudget {
                guard scoreBudget >= 1 else { throw ToolError("--score-budget must be at least 1 (floats)") }
                Attention.scoreBudget = scoreBudget
            }
            if let smallConvPixels {
                guard smallConvPixels >= 0 else { throw ToolError("--small-conv-pixels must be 0 or more") }
                Conv2D.smallImagePixels = smallConvPixels
            }
            if noWinograd { Conv2D.useWinograd = false }
            for r in 0..<runs {
                let flops = FlopCounter()
                context.flops = flops
                let t0 = Date()
                let out = try unet.forward(sample: sample, timesteps: [981], encoderHiddenStates: enc)
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
}
