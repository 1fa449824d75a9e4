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

    /// The mean and (biased) variance of every (image, group) pair of x, as groupNorm computes
    /// them (two passes in Double): stats[2·pair] = mean, stats[2·pair + 1] = variance.
    static func groupStatistics(_ ctx: ComputeContext, x: UnsafePointer<Float>, n: Int, c: Int, spatial: Int, groups: Int,
                                into stats: UnsafeMutablePointer<Double>) {
        precondition(c % groups == 0, "GroupNorm: \(c) channels do not split into \(groups) groups")
        let len = c / groups * spatial
        ctx.parallelRanges(n * groups, minChunk: max(1, 16384 / max(1, len))) { range in
            for pair in range {
                let p = x + pair * len  // a group's channels are contiguous in NCHW
                var sum: Double = 0
                for i in 0..<len { sum += Double(p[i]) }
                let mean = sum / Double(len)
                var sq: Double = 0
                for i in 0..<len { let t = Double(p[i]) - mean; sq += t * t }
                stats[2 * pair] = mean
                stats[2 * pair + 1] = sq / Double(len)
            }
        }
    }

    /// groupNorm normalising with given statistics (laid out as groupStatistics writes them)
    /// instead of x's own: the same per-channel affine and SiLU.
    static func groupNorm(_ ctx: ComputeContext, x: UnsafePointer<Float>, n: Int, c: Int, spatial: Int, groups: Int,
                          statistics stats: UnsafePointer<Double>, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>,
                          eps: Float, silu: Bool, out: UnsafeMutablePointer<Float>) {
        let cpg = c / groups
        ctx.parallelRanges(n * c, minChunk: max(1, 16384 / max(1, spatial))) { range in
            for plane in range {
                let (b, cc) = (plane / c, plane % c)
                let pair = b * groups + cc / cpg
                let mean = stats[2 * pair], variance = stats[2 * pair + 1]
                let inv = Float(1 / (variance + Double(eps)).squareRoot())
                let scale = weight[cc] * inv, shift = bias[cc] - Float(mean) * scale
                let src = x + plane * spatial, dst = out + plane * spatial
                for j in 0..<spatial { dst[j] = src[j] * scale + shift }
                if silu { VectorMath.silu(dst, count: spatial) }
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

/// Every GroupNorm's per-(image, group) mean and variance over a forward pass, in call order:
/// recorded on one input, then used by later passes in place of their inputs' own statistics
/// (VAETiling's shared statistics: every tile normalised as the whole image would be). Carried
/// by ComputeContext.groupNormStatistics; one forward pass at a time.
public final class GroupNormStatistics {
    /// Per GroupNorm call: [mean, variance] per (image, group) pair, as groupStatistics lays them out.
    private(set) var calls: [[Double]] = []
    /// True until `replay()`: each GroupNorm call appends its input's statistics.
    public private(set) var isRecording = true
    private var nextCall = 0

    public init() {}

    /// The number of GroupNorm calls recorded.
    public var count: Int { calls.count }

    /// Ends the recording; the next forward pass uses the recorded statistics from its first GroupNorm.
    public func replay() {
        isRecording = false
        nextCall = 0
    }

    /// Starts a forward pass over again at the first recorded GroupNorm (once per tile).
    public func rewind() { nextCall = 0 }

    /// Runs `body` with the next call's statistics buffer (2 × pairs Doubles) and whether it is
    /// to be filled (recording) or read (replay).
    func next<R>(pairs: Int, _ body: (UnsafeMutablePointer<Double>, _ record: Bool) -> R) -> R {
        if isRecording {
            calls.append([Double](repeating: 0, count: 2 * pairs))
            return calls[calls.count - 1].withUnsafeMutableBufferPointer { body($0.baseAddress!, true) }
        }
        precondition(nextCall < calls.count, "GroupNormStatistics: more GroupNorm calls than the \(calls.count) recorded")
        precondition(calls[nextCall].count == 2 * pairs, "GroupNormStatistics: call \(nextCall) has another batch or group count than recorded")
        defer { nextCall += 1 }
        return calls[nextCall].withUnsafeMutableBufferPointer { body($0.baseAddress!, false) }
    }
}
