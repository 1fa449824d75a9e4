/// Scaled dot-product attention, softmax(Q·Kᵀ·scale)·V, computed head by head and in chunks of
/// query rows so that no [heads, Lq, Lk] matrix is ever materialised whole: memory for the scores
/// is `chunk × Lk` floats, reused for every head and chunk.
public enum Attention {
    /// Rows of scores kept at once are bounded by this many floats (16 MiB).
    public static var scoreBudget = 1 << 22

    /// q: [B, Lq, heads·d], k and v: [B, Lk, heads·d] (heads interleaved as torch's
    /// `view(B, L, heads, d)`); returns [B, Lq, heads·d]. `causal` masks keys after the query
    /// position (CLIP's text encoder).
    public static func forward(q: Tensor, k: Tensor, v: Tensor, heads: Int, scale: Float,
                               causal: Bool = false) -> Tensor {
        let b = q.shape[0], lq = q.shape[1], width = q.shape[2]
        let lk = k.shape[1]
        precondition(k.shape[0] == b && v.shape[0] == b && k.shape[2] == width && v.shape[2] == width
                     && v.shape[1] == lk && width % heads == 0)
        let d = width / heads
        let chunk = max(1, min(lq, scoreBudget / max(lk, 1)))
        var out = [Float](repeating: 0, count: b * lq * width)
        var scores = [Float](repeating: 0, count: chunk * lk)
        q.data.withUnsafeBufferPointer { qp in
            k.data.withUnsafeBufferPointer { kp in
                v.data.withUnsafeBufferPointer { vp in
                    out.withUnsafeMutableBufferPointer { op in
                        scores.withUnsafeMutableBufferPointer { sp in
                            let s = sp.baseAddress!
                            for bi in 0..<b {
                                for h in 0..<heads {
                                    let kh = kp.baseAddress! + bi * lk * width + h * d
                                    let vh = vp.baseAddress! + bi * lk * width + h * d
                                    var i0 = 0
                                    while i0 < lq {
                                        let rows = min(chunk, lq - i0)
                                        let qh = qp.baseAddress! + (bi * lq + i0) * width + h * d
                                        BLAS.gemm(transB: true, m: rows, n: lk, k: d, alpha: scale,
                                                  a: qh, lda: width, b: kh, ldb: width, c: s, ldc: lk)
                                        if causal {
                                            for r in 0..<rows {
                                                let qi = i0 + r
                                                if qi + 1 < lk {
                                                    (s + r * lk + qi + 1).update(repeating: -.infinity, count: lk - qi - 1)
                                                }
                                            }
                                        }
                                        Activation.softmaxRows(s, rows: rows, n: lk, stride: lk)
                                        let oh = op.baseAddress! + (bi * lq + i0) * width + h * d
                                        BLAS.gemm(m: rows, n: d, k: lk, a: s, lda: lk, b: vh, ldb: width,
                                                  c: oh, ldc: width)
                                        i0 += rows
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        return Tensor(shape: [b, lq, width], data: out)
    }
}
