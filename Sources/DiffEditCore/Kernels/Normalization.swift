/// LayerNorm and GroupNorm, accumulated in Double for the mean/variance like torch's CPU kernels
/// do in their reductions (keeps parity at 1e-5 on wide rows).
public enum Normalization {
    /// LayerNorm over the last dimension: (x − mean)/√(var + eps)·γ + β.
    public static func layerNorm(_ x: Tensor, weight: [Float], bias: [Float], eps: Float) -> Tensor {
        let d = x.shape.last!
        precondition(weight.count == d && bias.count == d)
        let rows = x.count / d
        var out = [Float](repeating: 0, count: x.count)
        x.data.withUnsafeBufferPointer { xp in
            out.withUnsafeMutableBufferPointer { op in
                for r in 0..<rows {
                    let row = xp.baseAddress! + r * d
                    var sum: Double = 0
                    for i in 0..<d { sum += Double(row[i]) }
                    let mean = sum / Double(d)
                    var sq: Double = 0
                    for i in 0..<d { let t = Double(row[i]) - mean; sq += t * t }
                    let inv = Float(1 / (sq / Double(d) + Double(eps)).squareRoot())
                    let m = Float(mean)
                    let o = op.baseAddress! + r * d
                    for i in 0..<d { o[i] = (row[i] - m) * inv * weight[i] + bias[i] }
                }
            }
        }
        return Tensor(shape: x.shape, data: out)
    }

    /// GroupNorm over NCHW (or NC…): channels split into `groups`, statistics per (n, group),
    /// then per-channel affine. `silu` fuses the SiLU that follows it in ResNet blocks.
    public static func groupNorm(_ x: Tensor, groups: Int, weight: [Float], bias: [Float],
                                 eps: Float, silu: Bool = false) -> Tensor {
        let n = x.shape[0], c = x.shape[1]
        precondition(c % groups == 0, "GroupNorm: \(c) channels do not split into \(groups) groups")
        precondition(weight.count == c && bias.count == c)
        let spatial = x.count / (n * c)
        let cpg = c / groups
        var out = [Float](repeating: 0, count: x.count)
        x.data.withUnsafeBufferPointer { xp in
            out.withUnsafeMutableBufferPointer { op in
                for b in 0..<n {
                    for g in 0..<groups {
                        let base = (b * c + g * cpg) * spatial
                        let len = cpg * spatial
                        var sum: Double = 0
                        for i in 0..<len { sum += Double(xp[base + i]) }
                        let mean = sum / Double(len)
                        var sq: Double = 0
                        for i in 0..<len { let t = Double(xp[base + i]) - mean; sq += t * t }
                        let inv = Float(1 / (sq / Double(len) + Double(eps)).squareRoot())
                        let m = Float(mean)
                        for ch in 0..<cpg {
                            let cc = g * cpg + ch
                            let scale = weight[cc] * inv
                            let shift = bias[cc] - m * scale
                            let o = base + ch * spatial
                            if silu {
                                for i in 0..<spatial {
                                    let v = xp[o + i] * scale + shift
                                    op[o + i] = v / (1 + Activation.expf(-v))
                                }
                            } else {
                                for i in 0..<spatial { op[o + i] = xp[o + i] * scale + shift }
                            }
                        }
                    }
                }
            }
        }
        return Tensor(shape: x.shape, data: out)
    }
}
