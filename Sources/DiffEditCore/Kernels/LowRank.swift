/// LoRA's low-rank term, added to a layer's output after its base product: y += (x·Aᵀ)·Bᵀ with
/// A = `down` [rank, in] and B = `up` [out, rank] (the adapters' scales folded into B), as PEFT's
/// `lora_B(lora_A(x)) * scaling`. Two thin products through a [rows, rank] scratch: the base
/// weights are never touched, so they stay the checkpoint's shared pages.
enum LowRank {
    /// x [rows, in] → y [rows, out] += (x·Aᵀ)·Bᵀ.
    static func linear(_ ctx: ComputeContext, x: UnsafePointer<Float>, rows: Int, down: UnsafePointer<Float>,
                       up: UnsafePointer<Float>, rank: Int, inFeatures: Int, outFeatures: Int,
                       out: UnsafeMutablePointer<Float>) {
        ctx.workspace.withScratch(rows * rank) { t in
            ctx.gemm(transB: true, m: rows, n: rank, k: inFeatures, a: x, lda: inFeatures, b: down, ldb: inFeatures,
                     c: t, ldc: rank)
            ctx.gemm(transB: true, m: rows, n: outFeatures, k: rank, a: t, lda: rank, b: up, ldb: rank, beta: 1,
                     c: out, ldc: outFeatures)
        }
    }

    /// Linear.fromChannels' layout: x [b, in, pixels] (channels) → y [b, pixels, out] += xᵀ·Aᵀ·Bᵀ.
    static func fromChannels(_ ctx: ComputeContext, x: UnsafePointer<Float>, images b: Int, pixels hw: Int,
                             down: UnsafePointer<Float>, up: UnsafePointer<Float>, rank: Int, inFeatures c: Int,
                             outFeatures: Int, out: UnsafeMutablePointer<Float>) {
        ctx.workspace.withScratch(hw * rank) { t in
            for bi in 0..<b {
                ctx.gemm(transA: true, transB: true, m: hw, n: rank, k: c, a: x + bi * c * hw, lda: hw, b: down, ldb: c,
                         c: t, ldc: rank)
                ctx.gemm(transB: true, m: hw, n: outFeatures, k: rank, a: t, lda: rank, b: up, ldb: rank, beta: 1,
                         c: out + bi * hw * outFeatures, ldc: outFeatures)
            }
        }
    }

    /// Linear.toChannels' layout: tokens [b, pixels, in] → y [b, out, pixels] += B·(tokens·Aᵀ)ᵀ.
    static func toChannels(_ ctx: ComputeContext, tokens: UnsafePointer<Float>, images b: Int, pixels hw: Int,
                           down: UnsafePointer<Float>, up: UnsafePointer<Float>, rank: Int, inFeatures: Int,
                           outFeatures c: Int, out: UnsafeMutablePointer<Float>) {
        ctx.workspace.withScratch(hw * rank) { t in
            for bi in 0..<b {
                ctx.gemm(transB: true, m: hw, n: rank, k: inFeatures, a: tokens + bi * hw * inFeatures, lda: inFeatures,
                         b: down, ldb: inFeatures, c: t, ldc: rank)
                ctx.gemm(transB: true, m: c, n: hw, k: rank, a: up, lda: rank, b: t, ldb: rank, beta: 1,
                         c: out + bi * c * hw, ldc: hw)
            }
        }
    }

    /// A k×k convolution's term: A as a conv to `rank` channels with the base conv's stride and
    /// padding, then B as a 1×1 conv back to `outChannels`, added to y [n, out, oh, ow].
    static func conv(_ ctx: ComputeContext, x: UnsafePointer<Float>, n: Int, c: Int, h: Int, w: Int,
                     down: UnsafePointer<Float>, up: UnsafePointer<Float>, rank: Int, outChannels o: Int, kernel: Int,
                     stride: Int, padding: Conv2D.Padding, out: UnsafeMutablePointer<Float>) {
        let (oh, ow) = Conv2D.outputSize(h: h, w: w, kernel: (kernel, kernel), stride: stride, padding: padding)
        let plane = oh * ow
        ctx.workspace.withScratch(n * rank * plane) { t in
            Conv2D.forward(ctx, x: x, n: n, c: c, h: h, w: w, weight: WeightMatrix(f32: down), bias: nil,
                           outChannels: rank, kernel: kernel, stride: stride, padding: padding, out: t)
            for i in 0..<n {
                ctx.gemm(m: o, n: plane, k: rank, a: up, lda: rank, b: t + i * rank * plane, ldb: plane, beta: 1,
                         c: out + i * o * plane, ldc: plane)
            }
        }
    }
}
