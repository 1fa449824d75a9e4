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
        ctx.parallelRanges(n * groups, minChunk: max(1, 16384 / max(1, cpg * spatial))) { range in
            for pair in range {
                let b = pair / groups, g = pair % groups
                let base = (b * c + g * cpg) * spatial
                let len = cpg * spatial
                var sum: Double = 0
                for i in 0..<len { sum += Double(x[base + i]) }
                let mean = sum / Double(len)
                var sq: Double = 0
                for i in 0..<len { let t = Double(x[base + i]) - mean; sq += t * t }
                let inv = Float(1 / (sq / Double(len) + Double(eps)).squareRoot())
                let m = Float(mean)
                for ch in 0..<cpg {
                    let cc = g * cpg + ch
                    let scale = weight[cc] * inv
                    let shift = bias[cc] - m * scale
                    let o = base + ch * spatial
                    if silu {
                        for i in 0..<spatial {
                            let v = x[o + i] * scale + shift
                            out[o + i] = v / (1 + Pointwise.expf(-v))
                        }
                    } else {
                        for i in 0..<spatial { out[o + i] = x[o + i] * scale + shift }
                    }
                }
            }
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
