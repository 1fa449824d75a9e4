/// Fully connected layers: y = x·Wᵀ + b over the last dimension, as torch.nn.Linear.
public enum Linear {
    /// x: rows × inFeatures, weight: [outFeatures, inFeatures] (torch layout), bias:
    /// [outFeatures]; writes rows × outFeatures (row stride `ldo`) to `out`.
    static func forward(_ ctx: ComputeContext, x: UnsafePointer<Float>, rows: Int, inFeatures: Int,
                        weight: WeightMatrix, bias: UnsafePointer<Float>?, outFeatures: Int,
                        out: UnsafeMutablePointer<Float>, ldo: Int? = nil) {
        let ldo = ldo ?? outFeatures
        if weight.streams(ctx, rows: outFeatures, columns: rows) {
            weight.stream(ctx, rows: outFeatures, k: inFeatures, n: rows, x: x, xj: inFeatures, xl: 1, into: out, ci: 1, cj: ldo,
                          onto: .biasRows(bias, rows: rows, ld: ldo))
            return
        }
        weight.accumulate(ctx, rows: outFeatures, columns: inFeatures, into: out,
                          onto: .biasRows(bias, rows: rows, ld: ldo), as: .right) { k, w, beta in
            ctx.gemm(m: rows, n: outFeatures, k: k.count, a: x + k.lowerBound, lda: inFeatures, weightTransposed: w,
                     beta: beta, c: out, ldc: ldo)
        }
    }

    /// GEGLU over this linear's output at once, out = h · gelu(g) for [h | g] = x·Wᵀ + bias (d =
    /// outFeatures / 2 columns, row stride d): at bf16 with the weight packed once
    /// (`WeightMatrix.packedBF16GEGLU`), one product whose register tiles hold both halves of 16
    /// outputs, so the 2d-wide product is never written. false, with nothing written, where that
    /// does not apply (the caller runs `forward` and `Pointwise.geglu`, the same arithmetic).
    static func forwardGEGLU(_ ctx: ComputeContext, x: UnsafePointer<Float>, rows: Int, inFeatures: Int,
                             weight: WeightMatrix, bias: UnsafePointer<Float>?, outFeatures: Int,
                             out: UnsafeMutablePointer<Float>) -> Bool {
        guard outFeatures % 32 == 0,
              let packed = weight.packedBF16GEGLU(ctx, rows: outFeatures, columns: inFeatures) else { return false }
        return GEMMBF16.gemmGEGLU(threads: ctx.threads, m: rows, d: outFeatures / 2, k: inFeatures, a: x, lda: inFeatures,
                                  packed: packed, bias: bias, c: out, ldc: outFeatures / 2)
    }

    /// The product read from NCHW channels: x [b, inFeatures, pixels] → tokens
    /// [b, pixels, outFeatures] (the permute to tokens folded into the product:
    /// tokens[i] = x[i]ᵀ·Wᵀ + bias).
    static func fromChannels(_ ctx: ComputeContext, x: UnsafePointer<Float>, images b: Int, pixels hw: Int,
                             inFeatures c: Int, weight: WeightMatrix, bias: UnsafePointer<Float>?, outFeatures: Int,
                             out: UnsafeMutablePointer<Float>) {
        if weight.streams(ctx, rows: outFeatures, columns: b * hw) {
            // One call per image (their pixels are not one stride apart); the bias rows first.
            let written = ProductStart.biasRows(bias, rows: b * hw, ld: outFeatures).write(ctx, channels: outFeatures, into: out)
            for bi in 0..<b {
                weight.stream(ctx, rows: outFeatures, k: c, n: hw, x: x + bi * c * hw, xj: 1, xl: hw,
                              into: out + bi * hw * outFeatures, ci: 1, cj: outFeatures, onto: written ? .accumulate : .empty)
            }
            return
        }
        weight.accumulate(ctx, rows: outFeatures, columns: c, into: out,
                          onto: .biasRows(bias, rows: b * hw, ld: outFeatures), as: .right) { k, w, beta in
            for bi in 0..<b {
                ctx.gemm(transA: true, m: hw, n: outFeatures, k: k.count,
                         a: x + (bi * c + k.lowerBound) * hw, lda: hw, weightTransposed: w,
                         beta: beta, c: out + bi * hw * outFeatures, ldc: outFeatures)
            }
        }
    }

    /// The product written back to NCHW channels onto a residual: tokens [b, pixels, inFeatures]
    /// → residual + bias + W·tokensᵀ as [b, outFeatures, pixels].
    static func toChannels(_ ctx: ComputeContext, tokens t: UnsafePointer<Float>, images b: Int, pixels hw: Int,
                           inFeatures: Int, weight: WeightMatrix, bias: UnsafePointer<Float>?, outFeatures c: Int,
                           residual: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>) {
        if weight.streams(ctx, rows: c, columns: b * hw) {
            // One call per image onto the residual and bias, written for all images first.
            _ = ProductStart.residual(residual, bias: bias, images: b, plane: hw).write(ctx, channels: c, into: out)
            for bi in 0..<b {
                weight.stream(ctx, rows: c, k: inFeatures, n: hw, x: t + bi * hw * inFeatures, xj: inFeatures, xl: 1,
                              into: out + bi * c * hw, ci: hw, cj: 1, onto: .accumulate)
            }
            return
        }
        weight.accumulate(ctx, rows: c, columns: inFeatures, into: out,
                          onto: .residual(residual, bias: bias, images: b, plane: hw), as: .left) { k, w, beta in
            for bi in 0..<b {
                ctx.gemm(transB: true, m: c, n: hw, k: k.count, weight: w,
                         b: t + bi * hw * inFeatures + k.lowerBound, ldb: inFeatures, beta: beta,
                         c: out + bi * c * hw, ldc: hw)
            }
        }
    }

    /// Tensor form. x: [..., inFeatures].
    public static func forward(_ x: Tensor, weight: [Float], bias: [Float]?, outFeatures: Int,
                               context: ComputeContext = ComputeContext()) -> Tensor {
        let inFeatures = x.shape.last!
        precondition(weight.count == outFeatures * inFeatures, "linear weight \(weight.count) != \(outFeatures)x\(inFeatures)")
        let rows = x.count / inFeatures
        var shape = x.shape
        shape[shape.count - 1] = outFeatures
        var out = [Float](repeating: 0, count: rows * outFeatures)
        x.data.withUnsafeBufferPointer { xp in
            weight.withUnsafeBufferPointer { wp in
                out.withUnsafeMutableBufferPointer { o in
                    bias.withUnsafeOptionalPointer { bp in
                        forward(context, x: xp.baseAddress!, rows: rows, inFeatures: inFeatures, weight: WeightMatrix(f32: wp.baseAddress!),
                                bias: bp, outFeatures: outFeatures, out: o.baseAddress!)
                    }
                }
            }
        }
        return Tensor(shape: shape, data: out)
    }
}
