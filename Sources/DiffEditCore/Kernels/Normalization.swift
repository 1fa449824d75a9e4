import CKernels

/// LayerNorm and GroupNorm, accumulated in Double for the mean/variance like torch's CPU kernels
/// do in their reductions (keeps parity at 1e-5 on wide rows). Rows (LayerNorm) and
/// (image, group) pairs (GroupNorm) are independent and run on the context's threads.
public enum Normalization {
    /// LayerNorm over rows of length d: (x − mean)/√(var + eps)·γ + β.
    static func layerNorm(_ ctx: ComputeContext, x: UnsafePointer<Float>, rows: Int, d: Int,
                          weight: UnsafePointer<Float>, bias: UnsafePointer<Float>, eps: Float,
                          out: UnsafeMutablePointer<Float>) {
        ctx.parallelRanges(rows, minChunk: max(1, 16384 / max(d, 1))) { range in
            for r in range {
                let row = x + r * d
                var sum: Double = 0
                for i in 0..<d { sum += Double(row[i]) }
                let mean = sum / Double(d)
                var sq: Double = 0
                for i in 0..<d { let t = Double(row[i]) - mean; sq += t * t }
                let inv = Float(1 / (sq / Double(d) + Double(eps)).squareRoot())
                let m = Float(mean)
                let o = out + r * d
                for i in 0..<d { o[i] = (row[i] - m) * inv * weight[i] + bias[i] }
            }
        }
    }

    /// GroupNorm over NCHW (or NC…): channels split into `groups`, statistics per (n, group),
    /// then per-channel affine. `silu` fuses the SiLU that follows it in ResNet blocks.
    static func groupNorm(_ ctx: ComputeContext, x: UnsafePointer<Float>, n: Int, c: Int, spatial: Int, groups: Int,
                          weight: UnsafePointer<Float>, bias: UnsafePointer<Float>, eps: Float, silu: Bool,
                          out: UnsafeMutablePointer<Float>) {
        precondition(c % groups == 0, "GroupNorm: \(c) channels do not split into \(groups) groups")
        let cpg = c / groups
        // CKernels: vectorised for AVX-512/AVX2 (Swift's own loops compile for baseline SSE).
        ctx.parallelRanges(n * groups, minChunk: max(1, 16384 / max(1, cpg * spatial))) { range in
            diffedit_group_norm(x, c, spatial, groups, weight, bias, eps, silu ? 1 : 0, out, range.lowerBound, range.upperBound)
        }
    }

    /// Tensor form of layerNorm over the last dimension.
    public static func layerNorm(_ x: Tensor, weight: [Float], bias: [Float], eps: Float) -> Tensor {
        let d = x.shape.last!
        precondition(weight.count == d && bias.count == d)
        var out = [Float](repeating: 0, count: x.count)
        x.data.withUnsafeBufferPointer { xp in
            weight.withUnsafeBufferPointer { wp in
                bias.withUnsafeBufferPointer { bp in
                    out.withUnsafeMutableBufferPointer { op in
                        layerNorm(ComputeContext(), x: xp.baseAddress!, rows: x.count / d, d: d, weight: wp.baseAddress!,
                                  bias: bp.baseAddress!, eps: eps, out: op.baseAddress!)
                    }
                }
            }
        }
        return Tensor(shape: x.shape, data: out)
    }

    /// Tensor form of groupNorm.
    public static func groupNorm(_ x: Tensor, groups: Int, weight: [Float], bias: [Float],
                                 eps: Float, silu: Bool = false) -> Tensor {
        let n = x.shape[0], c = x.shape[1]
        precondition(weight.count == c && bias.count == c)
        var out = [Float](repeating: 0, count: x.count)
        x.data.withUnsafeBufferPointer { xp in
            weight.withUnsafeBufferPointer { wp in
                bias.withUnsafeBufferPointer { bp in
                    out.withUnsafeMutableBufferPointer { op in
                        groupNorm(ComputeContext(), x: xp.baseAddress!, n: n, c: c, spatial: x.count / (n * c), groups: groups,
                                  weight: wp.baseAddress!, bias: bp.baseAddress!, eps: eps, silu: silu, out: op.baseAddress!)
                    }
                }
            }
        }
        return Tensor(shape: x.shape, data: out)
    }
}
