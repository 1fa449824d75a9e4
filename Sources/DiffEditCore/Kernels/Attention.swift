import CKernels

/// Scaled dot-product attention, softmax(Q·Kᵀ·scale)·V, computed head by head and in chunks of
/// query rows so that no [heads, Lq, Lk] matrix is ever materialised whole: memory for the scores
/// is `chunk × Lk` floats per worker (from the workspace; as many rows as the policy's
/// `scoreBudget` holds, at least one), reused for every head and chunk. (batch, head) pairs run
/// in parallel on the context's threads, each with single-threaded BLAS; the softmax is
/// vectorised (VectorMath) and its normalisation is applied to the d-wide output rows.
public enum Attention {
    /// q: [B, Lq, heads·d], k and v: [B, Lk, heads·d] (heads interleaved as torch's
    /// `view(B, L, heads, d)`); returns [B, Lq, heads·d]. `causal` masks keys after the query
    /// position (CLIP's text encoder).
    public static func forward(q: Tensor, k: Tensor, v: Tensor, heads: Int, scale: Float,
                               causal: Bool = false, context: ComputeContext = ComputeContext()) -> Tensor {
        let b = q.shape[0], lq = q.shape[1], width = q.shape[2]
        let lk = k.shape[1]
        precondition(k.shape[0] == b && v.shape[0] == b && k.shape[2] == width && v.shape[2] == width
                     && v.shape[1] == lk && width % heads == 0)
        var out = [Float](repeating: 0, count: b * lq * width)
        q.data.withUnsafeBufferPointer { qp in
            k.data.withUnsafeBufferPointer { kp in
                v.data.withUnsafeBufferPointer { vp in
                    out.withUnsafeMutableBufferPointer { op in
                        forward(context, q: qp.baseAddress!, ldq: width, k: kp.baseAddress!, ldk: width,
                                v: vp.baseAddress!, ldv: width, out: op.baseAddress!, ldo: width,
                                batch: b, lq: lq, lk: lk, heads: heads, headDim: width / heads,
                                scale: scale, causal: causal)
                    }
                }
            }
        }
        return Tensor(shape: [b, lq, width], data: out)
    }

    /// Strided form: row i of batch b of Q starts at q + (b·lq + i)·ldq, and head h occupies
    /// columns h·d ..< (h+1)·d of every row (likewise K, V and the output). This lets fused
    /// QKV projections be attended without copying them apart.
    static func forward(_ ctx: ComputeContext, q: UnsafePointer<Float>, ldq: Int, k: UnsafePointer<Float>, ldk: Int,
                               v: UnsafePointer<Float>, ldv: Int, out: UnsafeMutablePointer<Float>, ldo: Int,
                               batch b: Int, lq: Int, lk: Int, heads: Int, headDim d: Int,
                               scale: Float, causal: Bool = false) {
        guard b > 0, lq > 0, heads > 0 else { return }
        if ctx.policy.fusedAttention && !causal && d <= fusedMaxHeadDim && lk >= ctx.policy.fusedAttentionMinKeys {
            fused(ctx, q: q, ldq: ldq, k: k, ldk: ldk, v: v, ldv: ldv, out: out, ldo: ldo,
                  batch: b, lq: lq, lk: lk, heads: heads, headDim: d, scale: scale)
            return
        }
        let chunk = max(1, min(lq, ctx.policy.scoreBudget / max(lk, 1)))
        let pairs = b * heads
        // Parallel over (batch, head) with single-threaded BLAS when there is enough work.
        let parallel = pairs > 1 && ctx.threads > 1 && lq * lk * d >= 1 << 16
        let workers = parallel ? min(ctx.threads, pairs) : 1
        let blasThreads = parallel ? 1 : ctx.threads
        ctx.countMACs(2 * b * heads * lq * lk * d)
        let ws = ctx.workspace
        ws.withScratch(workers * chunk * lk) { scores in ws.withScratch(workers * chunk) { sums in
        ctx.measure("attention") { ctx.parallel(workers) { w in
            let s = scores + w * chunk * lk
            let rowSums = sums + w * chunk
            var pair = w
            while pair < pairs {
                let bi = pair / heads, h = pair % heads
                let kh = k + bi * lk * ldk + h * d
                let vh = v + bi * lk * ldv + h * d
                var i0 = 0
                while i0 < lq {
                    let rows = min(chunk, lq - i0)
                    let qh = q + (bi * lq + i0) * ldq + h * d
                    ctx.measure("attention QK") {
                        ctx.gemm(threads: blasThreads, transB: true, m: rows, n: lk, k: d, alpha: scale,
                                  a: qh, lda: ldq, b: kh, ldb: ldk, c: s, ldc: lk)
                    }
                    if causal {
                        for r in 0..<rows {
                            let qi = i0 + r
                            if qi + 1 < lk {
                                (s + r * lk + qi + 1).update(repeating: -.infinity, count: lk - qi - 1)
                            }
                        }
                    }
                    // softmax(S)·V = diag(1/Σ e)·(e^{S − max}·V): normalise the d-wide output rows.
                    ctx.measure("attention softmax") { VectorMath.expRows(s, rows: rows, n: lk, stride: lk, sums: rowSums) }
                    let oh = out + (bi * lq + i0) * ldo + h * d
                    ctx.measure("attention PV") {
                        ctx.gemm(threads: blasThreads, m: rows, n: d, k: lk, a: s, lda: lk, b: vh, ldb: ldv, c: oh, ldc: ldo)
                    }
                    for r in 0..<rows {
                        let inv = 1 / rowSums[r]
                        let o = oh + r * ldo
                        for x in 0..<d { o[x] *= inv }
                    }
                    i0 += rows
                }
                pair += workers
            }
        } }
        } }
    }

    /// Heads at most this wide take the fused path (SD's UNet: 40–160; SD 2: 64). The VAE's single
    /// 512-wide head stays on the BLAS, which blocks K for its cache where a packed head would not fit.
    public static let fusedMaxHeadDim = 160

    /// The fused form of `forward` (attention.c; attention_bf16.c at `precision` bf16, which rounds
    /// what the bf16 products of the BLAS form round). Work items are (pair, block of query rows),
    /// split in contiguous runs between workers; a worker packs a pair's K and V when it reaches it,
    /// then per block: scores, softmax in place (the same exp as the BLAS path), and P·V scaled by 1/Σ.
    private static func fused(_ ctx: ComputeContext, q: UnsafePointer<Float>, ldq: Int, k: UnsafePointer<Float>,
                              ldk: Int, v: UnsafePointer<Float>, ldv: Int, out: UnsafeMutablePointer<Float>, ldo: Int,
                              batch b: Int, lq: Int, lk: Int, heads: Int, headDim d: Int, scale: Float) {
        let bf16 = ctx.policy.precision == .bf16
        let level = Int32(min(ctx.policy.attentionLevel, Int(diffedit_attention_level())))
        let tile = bf16 ? 12 : Int(diffedit_attention_tile_rows(level))
        let wanted = max(tile, ctx.policy.attentionBlockFloats / lk / tile * tile)
        let blockRows = max(1, min(lq, wanted, ctx.policy.scoreBudget / lk))
        let blocks = (lq + blockRows - 1) / blockRows
        let items = b * heads * blocks
        let workers = max(1, min(ctx.threads, items, lq * lk * d * b * heads >= 1 << 16 ? items : 1))
        // Packed K and V: floats at f32, 32-bit pair units (the same size) at bf16.
        let keyFloats = bf16 ? Int(diffedit_attention_bf16_keys_units(lk, d)) : Int(diffedit_attention_keys_floats(level, lk, d))
        let valueFloats = bf16 ? Int(diffedit_attention_bf16_values_units(lk, d))
                               : Int(diffedit_attention_values_floats(level, lk, d))
        // Each worker's part starts on a 64-byte line, as the workspace does (vector loads that split lines cost two).
        let perWorker = (keyFloats + valueFloats + blockRows * (lk + 2) + 15) / 16 * 16
        ctx.countMACs(2 * b * heads * lq * lk * d)
        ctx.workspace.withScratch(workers * perWorker) { scratch in
        ctx.measure("attention") { ctx.parallel(workers) { w in
            let kt = scratch + w * perWorker, vp = kt + keyFloats, s = vp + valueFloats
            let sums = s + blockRows * lk, inv = sums + blockRows
            let kUnits = UnsafeMutableRawPointer(kt).assumingMemoryBound(to: UInt32.self)
            let vUnits = UnsafeMutableRawPointer(vp).assumingMemoryBound(to: UInt32.self)
            var packed = -1
            for item in (w * items / workers)..<((w + 1) * items / workers) {
                let pair = item / blocks, i0 = (item % blocks) * blockRows
                let bi = pair / heads, h = pair % heads
                if pair != packed {
                    let kh = k + bi * lk * ldk + h * d, vh = v + bi * lk * ldv + h * d
                    if bf16 { _ = diffedit_attention_bf16_pack(kh, ldk, vh, ldv, lk, d, kUnits, vUnits) }
                    else { diffedit_attention_pack(level, kh, ldk, vh, ldv, lk, d, kt, vp) }
                    packed = pair
                }
                let rows = min(blockRows, lq - i0)
                let qi = q + (bi * lq + i0) * ldq + h * d, oi = out + (bi * lq + i0) * ldo + h * d
                ctx.measure("attention QK") {
                    if bf16 { _ = diffedit_attention_bf16_scores(qi, ldq, rows, kUnits, lk, d, scale, s, lk, 0) }
                    else { diffedit_attention_scores(level, qi, ldq, rows, kt, lk, d, scale, s, lk) }
                }
                ctx.measure("attention softmax") { VectorMath.expRows(s, rows: rows, n: lk, stride: lk, sums: sums) }
                for r in 0..<rows { inv[r] = 1 / sums[r] }
                ctx.measure("attention PV") {
                    if bf16 { diffedit_attention_bf16_values(s, lk, rows, vUnits, lk, d, inv, oi, ldo, 0) }
                    else { diffedit_attention_values(level, s, lk, rows, vp, lk, d, inv, oi, ldo) }
                }
            }
        } }
        }
    }

    /// The probabilities themselves, softmax(Q·Kᵀ·scale) per row, written out whole — diffusers'
    /// Attention.get_attention_scores (baddbmm with alpha = scale, then softmax over the keys), which
    /// LEDITS++'s LEDITSCrossAttnProcessor hands to its attention store. Only for batch items
    /// `items` (the same strided layout as `forward`); out[(item − items.lowerBound)·heads + h] is
    /// the [lq, lk] matrix of that item and head. For the store's small grids only: nothing here is
    /// chunked, and `forward` still computes the attention output.
    static func probabilities(_ ctx: ComputeContext, q: UnsafePointer<Float>, ldq: Int, k: UnsafePointer<Float>,
                              ldk: Int, items: Range<Int>, lq: Int, lk: Int, heads: Int, headDim d: Int,
                              scale: Float, out: UnsafeMutablePointer<Float>) {
        let pairs = items.count * heads
        guard pairs > 0, lq > 0, lk > 0 else { return }
        let workers = min(ctx.threads, pairs)
        ctx.countMACs(pairs * lq * lk * d)
        ctx.measure("attention store") { ctx.parallel(workers) { w in
            var pair = w
            while pair < pairs {
                let bi = items.lowerBound + pair / heads, h = pair % heads
                let s = out + pair * lq * lk
                BLAS.gemm(threads: 1, transB: true, m: lq, n: lk, k: d, alpha: scale,
                          a: q + bi * lq * ldq + h * d, lda: ldq, b: k + bi * lk * ldk + h * d, ldb: ldk, c: s, ldc: lk)
                VectorMath.softmaxRows(s, rows: lq, n: lk, stride: lk)
                pair += workers
            }
        } }
    }
}
