import CKernels
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// The GEMM wrapper, chunked attention, the shifted-GEMM convolution and the vectorised math,
/// each against a naive double-precision reference.
final class AttentionKernelTests: XCTestCase {
    /// Conv2D's methods against the direct convolution in Double: about 10× the worst error
    /// measured (1.9e-6, bands on a 5×7 image; it was 1e-4). Against torch: ConvPathTests.
    static let convTolerance = 2e-5
    func random(_ n: Int, seed: UInt64) -> [Float] { TorchGenerator(seed: seed).randn(count: n) }

    /// C = alpha·op(A)·op(B) + beta·C for every transpose combination, with leading dimensions
    /// larger than the logical widths (sub-matrices of bigger buffers).
    func testGemmTransposesAndLeadingDimensions() {
        let (m, n, k) = (5, 7, 3)
        for transA in [false, true] {
            for transB in [false, true] {
                let lda = (transA ? m : k) + 2, ldb = (transB ? k : n) + 3, ldc = n + 4
                let aRows = transA ? k : m, bRows = transB ? n : k
                let a = random(aRows * lda, seed: 1), b = random(bRows * ldb, seed: 2)
                var c = random(m * ldc, seed: 3)
                let c0 = c
                let alpha: Float = 0.75, beta: Float = 0.5
                BLAS.gemm(threads: 1, transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                          b: b, ldb: ldb, beta: beta, c: &c, ldc: ldc)
                for i in 0..<m {
                    for j in 0..<ldc {
                        if j >= n { XCTAssertEqual(c[i * ldc + j], c0[i * ldc + j], "padding column touched"); continue }
                        var s: Double = 0
                        for p in 0..<k {
                            let av = transA ? a[p * lda + i] : a[i * lda + p]
                            let bv = transB ? b[j * ldb + p] : b[p * ldb + j]
                            s += Double(av) * Double(bv)
                        }
                        let want = Double(alpha) * s + Double(beta) * Double(c0[i * ldc + j])
                        XCTAssertEqual(Double(c[i * ldc + j]), want, accuracy: 1e-5, "transA \(transA) transB \(transB) [\(i),\(j)]")
                    }
                }
            }
        }
    }

    /// softmax(Q·Kᵀ·scale)·V per head, in double.
    func naiveAttention(q: [Float], k: [Float], v: [Float], b: Int, lq: Int, lk: Int, heads: Int, d: Int,
                        scale: Float, causal: Bool) -> [Double] {
        let w = heads * d
        var out = [Double](repeating: 0, count: b * lq * w)
        for bi in 0..<b {
            for h in 0..<heads {
                for i in 0..<lq {
                    var s = [Double](repeating: -.infinity, count: lk)
                    for j in 0..<lk where !(causal && j > i) {
                        var dot: Double = 0
                        for x in 0..<d { dot += Double(q[(bi * lq + i) * w + h * d + x]) * Double(k[(bi * lk + j) * w + h * d + x]) }
                        s[j] = dot * Double(scale)
                    }
                    let m = s.max()!
                    let e = s.map { Foundation.exp($0 - m) }
                    let z = e.reduce(0, +)
                    for x in 0..<d {
                        var acc: Double = 0
                        for j in 0..<lk { acc += e[j] / z * Double(v[(bi * lk + j) * w + h * d + x]) }
                        out[(bi * lq + i) * w + h * d + x] = acc
                    }
                }
            }
        }
        return out
    }

    /// Chunking with odd sizes: a score budget so small that chunks are 1–3 rows and the last
    /// chunk is partial, for self- and cross-attention, causal or not, several batches and heads;
    /// the two largest cases take the parallel (batch, head) path.
    func testChunkedAttentionMatchesNaive() {
        for (b, lq, lk, heads, d, causal) in [(1, 7, 7, 1, 3, false), (2, 13, 13, 3, 5, true),
                                              (3, 11, 5, 2, 4, false), (2, 9, 77, 4, 8, false),
                                              (1, 40, 40, 5, 8, true), (2, 300, 257, 3, 8, false),
                                              (1, 260, 260, 2, 16, true)] {
            let w = heads * d
            let q = random(b * lq * w, seed: 10), k = random(b * lk * w, seed: 11), v = random(b * lk * w, seed: 12)
            let scale = 1 / Float(d).squareRoot()
            let want = naiveAttention(q: q, k: k, v: v, b: b, lq: lq, lk: lk, heads: heads, d: d, scale: scale, causal: causal)
            for budget in [1, 2 * lk + 1, 3 * lk, 1 << 20] {
                // The BLAS path, and the fused one (never for causal) at every level this CPU runs.
                for level in [-1] + Array(0...Int(diffedit_attention_level())) {
                    let ctx = ComputeContext()
                    ctx.policy.scoreBudget = budget
                    ctx.policy.fusedAttention = level >= 0
                    ctx.policy.fusedAttentionMinKeys = 1
                    ctx.policy.attentionLevel = max(level, 0)
                    let got = Attention.forward(q: Tensor(shape: [b, lq, w], data: q), k: Tensor(shape: [b, lk, w], data: k),
                                                v: Tensor(shape: [b, lk, w], data: v), heads: heads, scale: scale, causal: causal,
                                                context: ctx)
                    XCTAssertEqual(got.shape, [b, lq, w])
                    assertClose(got.data, want, atol: 2e-5,
                                "b \(b) lq \(lq) lk \(lk) heads \(heads) d \(d) causal \(causal) budget \(budget) level \(level)")
                }
            }
        }
    }

    /// The fused tiles (attention.c) at every level the CPU runs, on the head widths of SD (40, 64,
    /// 80, 160) and odd ones that leave partial vectors, with query rows that are not a multiple of
    /// a tile, keys that are not a multiple of a panel or of the 256-key runs of the value tile,
    /// and blocks of 1 row, a few rows and the default; the fused QKV layout (row stride 3·width).
    func testFusedAttentionTilesMatchNaive() {
        for (b, lq, lk, heads, d) in [(1, 25, 300, 2, 40), (2, 13, 129, 1, 80), (1, 7, 33, 3, 17),
                                      (1, 30, 70, 1, 160), (2, 11, 520, 2, 64), (1, 5, 31, 1, 1)] {
            let w = heads * d
            let qkv = random(b * max(lq, lk) * 3 * w, seed: 50)
            // Q rows from the first third of each fused row, K and V from the others.
            func part(_ p: Int, rows: Int) -> [Float] {
                var out = [Float]()
                for r in 0..<(b * rows) {
                    let start: Int = r * 3 * w + p * w
                    out.append(contentsOf: qkv[start..<(start + w)])
                }
                return out
            }
            let q = part(0, rows: lq), k = part(1, rows: lk), v = part(2, rows: lk)
            let scale = 1 / Float(d).squareRoot()
            let want = naiveAttention(q: q, k: k, v: v, b: b, lq: lq, lk: lk, heads: heads, d: d, scale: scale, causal: false)
            for level in 0...Int(diffedit_attention_level()) {
                for blockFloats in [1, 3 * lk, 1 << 17] {
                    let ctx = ComputeContext()
                    ctx.policy.fusedAttentionMinKeys = 1
                    ctx.policy.attentionLevel = level
                    ctx.policy.attentionBlockFloats = blockFloats
                    let got = Attention.forward(q: Tensor(shape: [b, lq, w], data: q), k: Tensor(shape: [b, lk, w], data: k),
                                                v: Tensor(shape: [b, lk, w], data: v), heads: heads, scale: scale, context: ctx)
                    assertClose(got.data, want, atol: 2e-6, "fused: b \(b) lq \(lq) lk \(lk) heads \(heads) d \(d) level \(level) block \(blockFloats)")
                }
                // The strided form on the fused buffer itself (lq == lk cases only share rows).
                if lq <= lk {
                    var out = [Float](repeating: .nan, count: b * lq * w)
                    let ctx = ComputeContext()
                    ctx.policy.fusedAttentionMinKeys = 1
                    ctx.policy.attentionLevel = level
                    let qs = q
                    // Batch rows of Q live lq apart in `qs`; K and V are read in place, lk rows per batch item.
                    qs.withUnsafeBufferPointer { qp in qkv.withUnsafeBufferPointer { p in out.withUnsafeMutableBufferPointer { o in
                        Attention.forward(ctx, q: qp.baseAddress!, ldq: w, k: p.baseAddress! + w, ldk: 3 * w,
                                          v: p.baseAddress! + 2 * w, ldv: 3 * w, out: o.baseAddress!, ldo: w,
                                          batch: b, lq: lq, lk: lk, heads: heads, headDim: d, scale: scale)
                    } } }
                    assertClose(out, want, atol: 2e-6, "fused strided: lq \(lq) lk \(lk) d \(d) level \(level)")
                }
            }
        }
        // Heads wider than the tiles' stack (256) run on plain loops in the scores kernel.
        let (lq, lk, d) = (3, 40, 260)
        let q = random(lq * d, seed: 51), k = random(lk * d, seed: 52)
        for level in 0...diffedit_attention_level() {
            var kt = [Float](repeating: 0, count: diffedit_attention_keys_floats(level, lk, d))
            var vp = [Float](repeating: 0, count: diffedit_attention_values_floats(level, lk, d))
            var s = [Float](repeating: 0, count: lq * lk)
            diffedit_attention_pack(level, k, d, k, d, lk, d, &kt, &vp)
            diffedit_attention_scores(level, q, d, lq, kt, lk, d, 0.5, &s, lk)
            for i in 0..<lq {
                for j in 0..<lk {
                    var dot = 0.0
                    for x in 0..<d { dot += Double(q[i * d + x]) * Double(k[j * d + x]) }
                    XCTAssertEqual(Double(s[i * lk + j]), 0.5 * dot, accuracy: 2e-4, "wide head, level \(level) [\(i),\(j)]")
                }
            }
        }
    }
    /// The fused attention at bf16 (attention_bf16.c), its scalar emulation on every CPU and its
    /// AVX512-BF16 tiles where the CPU has them, against softmax attention in Double on the values
    /// it rounds: Q, K and V in bf16, the probabilities e^{s − max} rounded to bf16 over their f32
    /// sum. Odd widths and key counts cover the pair and panel padding, 300+ keys the runs of 128
    /// key pairs, d 160 three-vector output tiles.
    func testFusedAttentionBF16MatchesRoundedReference() {
        func bf(_ x: Float) -> Float { Float(bitPattern: UInt32(diffedit_f32_to_bf16(x)) << 16) }
        for (lq, lk, d) in [(25, 300, 40), (13, 129, 80), (7, 33, 17), (30, 70, 160), (11, 520, 64), (5, 31, 1)] {
            let q = random(lq * d, seed: 60), k = random(lk * d, seed: 61), v = random(lk * d, seed: 62)
            let scale = 1 / Float(d).squareRoot()
            // The reference: scores of the rounded Q and K (f32 sums differ from Double's only in
            // the last bits), probabilities rounded as the kernel rounds them.
            var want = [Double](repeating: 0, count: lq * d)
            for i in 0..<lq {
                var s = [Double](repeating: 0, count: lk)
                for j in 0..<lk {
                    var dot = 0.0
                    for x in 0..<d { dot += Double(bf(q[i * d + x])) * Double(bf(k[j * d + x])) }
                    s[j] = dot * Double(scale)
                }
                let m = s.max()!
                let e = s.map { Float(Foundation.exp($0 - m)) }
                let z = e.reduce(0.0) { $0 + Double($1) }
                for x in 0..<d {
                    var acc = 0.0
                    for j in 0..<lk { acc += Double(bf(e[j])) * Double(bf(v[j * d + x])) }
                    want[i * d + x] = acc / z
                }
            }
            let paths: [Int32] = Precision.bf16Available ? [1, 0] : [1]
            for emulate in paths {
                var kt = [UInt32](repeating: 0, count: Int(diffedit_attention_bf16_keys_units(lk, d)))
                var vp = [UInt32](repeating: 0, count: Int(diffedit_attention_bf16_values_units(lk, d)))
                var scores = [Float](repeating: .nan, count: lq * lk), sums = [Float](repeating: 0, count: lq)
                var out = [Float](repeating: .nan, count: lq * d)
                XCTAssertEqual(diffedit_attention_bf16_pack(k, d, v, d, lk, d, &kt, &vp), 0)
                XCTAssertEqual(diffedit_attention_bf16_scores(q, d, lq, kt, lk, d, scale, &scores, lk, emulate), 0)
                diffedit_exp_rows(&scores, lq, lk, lk, &sums)
                let inv = sums.map { 1 / $0 }
                diffedit_attention_bf16_values(&scores, lk, lq, vp, lk, d, inv, &out, d, emulate)
                // A probability whose f32 exp sits at a bf16 rounding boundary may round the other
                // way than the reference's: one bf16 step of one weight, at most ~4e-3 of |V|.
                assertClose(out, want, atol: 4e-3, "bf16 fused lq \(lq) lk \(lk) d \(d) emulate \(emulate)")
                let worst = zip(out, want).map { abs(Double($0) - $1) }.max()!
                XCTAssertLessThan(worst, 4e-3)
            }
        }
        // Through Attention.forward at bf16 (batch, heads, blocks, workers) against its bf16 BLAS form.
        guard Precision.bf16Available else { return }
        let (b, lq, lk, heads, d) = (2, 70, 300, 3, 40)
        let w = heads * d
        let q = Tensor(shape: [b, lq, w], data: random(b * lq * w, seed: 63))
        let k = Tensor(shape: [b, lk, w], data: random(b * lk * w, seed: 64))
        let v = Tensor(shape: [b, lk, w], data: random(b * lk * w, seed: 65))
        let fused = ComputeContext(threads: 2), blas = ComputeContext(threads: 2)
        for ctx in [fused, blas] { ctx.policy.precision = .bf16; ctx.policy.attentionBlockFloats = 3 * lk }
        blas.policy.fusedAttention = false
        let scale = 1 / Float(d).squareRoot()
        let got = Attention.forward(q: q, k: k, v: v, heads: heads, scale: scale, context: fused)
        let ref = Attention.forward(q: q, k: k, v: v, heads: heads, scale: scale, context: blas)
        let exact = naiveAttention(q: q.data, k: k.data, v: v.data, b: b, lq: lq, lk: lk, heads: heads, d: d, scale: scale, causal: false)
        assertClose(got.data, ref.data.map(Double.init), atol: 4e-3, "fused bf16 against the bf16 BLAS form")
        let err = zip(got.data, exact).map { abs(Double($0) - $1) }.max()!
        XCTAssertGreaterThan(err, 1e-5, "bf16 rounding shows against Double (the bf16 path ran)")
        XCTAssertLessThan(err, 2e-2)
    }


    /// The strided form reads Q, K, V out of one fused [L, 3·width] buffer.
    func testStridedAttentionOnFusedQKV() {
        let (b, l, heads, d) = (2, 9, 3, 4)
        let w = heads * d
        let qkv = random(b * l * 3 * w, seed: 20)
        var q = [Float](), k = [Float](), v = [Float]()
        for r in 0..<(b * l) {
            let base: Int = r * 3 * w
            q.append(contentsOf: qkv[base..<(base + w)])
            k.append(contentsOf: qkv[(base + w)..<(base + 2 * w)])
            v.append(contentsOf: qkv[(base + 2 * w)..<(base + 3 * w)])
        }
        let want = naiveAttention(q: q, k: k, v: v, b: b, lq: l, lk: l, heads: heads, d: d, scale: 0.5, causal: false)
        var out = [Float](repeating: 0, count: b * l * w)
        qkv.withUnsafeBufferPointer { p in
            out.withUnsafeMutableBufferPointer { o in
                let base = p.baseAddress!
                Attention.forward(ComputeContext(), q: base, ldq: 3 * w, k: base + w, ldk: 3 * w, v: base + 2 * w, ldv: 3 * w,
                                  out: o.baseAddress!, ldo: w, batch: b, lq: l, lk: l, heads: heads, headDim: d, scale: 0.5)
            }
        }
        assertClose(out, want, atol: 2e-5, "strided attention on fused QKV")
    }

    func naiveConv(_ x: [Float], n: Int, c: Int, h: Int, w: Int, weight: [Float], bias: [Float], o: Int,
                   k: Int, stride: Int, pad: Conv2D.Padding) -> (shape: [Int], data: [Double]) {
        let oh = (h + pad.top + pad.bottom - k) / stride + 1, ow = (w + pad.left + pad.right - k) / stride + 1
        var out = [Double](repeating: 0, count: n * o * oh * ow)
        for b in 0..<n { for oc in 0..<o { for y in 0..<oh { for xx in 0..<ow {
            var s = Double(bias[oc])
            for ic in 0..<c { for ky in 0..<k { for kx in 0..<k {
                let iy = y * stride + ky - pad.top, ix = xx * stride + kx - pad.left
                if iy < 0 || iy >= h || ix < 0 || ix >= w { continue }
                s += Double(x[((b * c + ic) * h + iy) * w + ix]) * Double(weight[((oc * c + ic) * k + ky) * k + kx])
            } } }
            out[((b * o + oc) * oh + y) * ow + xx] = s
        } } } }
        return ([n, o, oh, ow], out)
    }

    /// Conv2D's stride-1 methods on torch's weight layout (bands, small images, Winograd)
    /// against a direct convolution, for 3×3 and 5×5 kernels, asymmetric padding, several images
    /// and non-square inputs.
    func testStrideOneConvolutionsMatchNaive() {
        for (n, c, h, w, o, k, pad) in [(2, 3, 5, 7, 4, 3, Conv2D.Padding.same(1)), (1, 5, 4, 4, 2, 3, .same(0)),
                                        (3, 2, 6, 3, 3, 5, .same(2)), (2, 4, 1, 1, 5, 3, .same(1)),
                                        (1, 2, 5, 6, 3, 3, Conv2D.Padding(top: 0, bottom: 1, left: 2, right: 0))] {
            let x = random(n * c * h * w, seed: 30), weight = random(o * c * k * k, seed: 31), bias = random(o, seed: 32)
            let want = naiveConv(x, n: n, c: c, h: h, w: w, weight: weight, bias: bias, o: o, k: k, stride: 1, pad: pad)
            // One band per image, bands of two rows, one row per band.
            let ow = want.shape[3]
            for budget in [1 << 24, 2 * k * k * c * ow, 1] {
                let ctx = ComputeContext()
                ctx.policy.columnBudget = budget
                let got = Conv2D.forward(Tensor(shape: [n, c, h, w], data: x), weight: weight, bias: bias,
                                         outChannels: o, kernel: (k, k), padding: pad, context: ctx)
                XCTAssertEqual(got.shape, want.shape)
                assertClose(got.data, want.data, atol: Self.convTolerance, "bands: n \(n) c \(c) \(h)x\(w) o \(o) k \(k) budget \(budget)")
            }
            // The small-image method (one GEMM over the group's unfolded images): all images in
            // one group, two per group, one per group.
            for budget in [1 << 24, 2 * k * k * c * (want.data.count / (n * o)), 1] {
                let ctx = ComputeContext()
                ctx.policy.smallColumnBudget = budget
                let got = Conv2D.forwardSmall(Tensor(shape: [n, c, h, w], data: x), weight: weight, bias: bias,
                                              outChannels: o, kernel: (k, k), padding: pad, context: ctx)
                XCTAssertEqual(got.shape, want.shape)
                assertClose(got.data, want.data, atol: Self.convTolerance, "small: n \(n) c \(c) \(h)x\(w) o \(o) k \(k) budget \(budget)")
            }
            // Winograd F(2×2, 3×3) for the 3×3 cases: tiles in one group, two groups, one per group.
            if k == 3 {
                for budget in [1 << 24, 16 * (c + o) * 3, 1] {
                    let ctx = ComputeContext()
                    ctx.policy.winogradBudget = budget
                    let got = Conv2D.forwardWinograd(Tensor(shape: [n, c, h, w], data: x), weight: weight, bias: bias,
                                                     outChannels: o, padding: pad, context: ctx)
                    XCTAssertEqual(got.shape, want.shape)
                    assertClose(got.data, want.data, atol: Self.convTolerance, "winograd: n \(n) c \(c) \(h)x\(w) o \(o) budget \(budget)")
                }
            }
        }
    }

    /// Vectorised exp, SiLU, GELU and softmax against libm in double.
    func testVectorMathAccuracy() {
        // exp: relative error ≤ 3e-7 over [−87, 88] (NaN-aware: closeness with rtol only).
        let expX = (0..<20001).map { Float(-87 + Double($0) * 175.0 / 20000) }
        assertClose(expX.map { VectorMath.exp($0) }, expX.map { Foundation.exp(Double($0)) }, atol: 0, rtol: 3e-7, "exp relative error")
        XCTAssertEqual(VectorMath.exp(-.infinity), 0)
        XCTAssertEqual(VectorMath.exp(-100), 0)
        XCTAssertEqual(VectorMath.exp(0), 1)
        let xs = (0..<4001).map { -10 + Double($0) * 20 / 4000 }
        assertClose(xs.map { VectorMath.gelu(Float($0)) }, xs.map { 0.5 * $0 * (1 + Foundation.erf($0 / 2.0.squareRoot())) },
                    atol: 2e-6, "gelu abs error")
        assertClose(xs.map { VectorMath.silu(Float($0)) }, xs.map { $0 / (1 + Foundation.exp(-$0)) }, atol: 2e-6, "silu abs error")
        var rows = random(3 * 37, seed: 40)
        rows[5] = -.infinity
        let copy = rows
        rows.withUnsafeMutableBufferPointer { VectorMath.softmaxRows($0.baseAddress!, rows: 3, n: 37, stride: 37) }
        for r in 0..<3 {
            let xs = copy[(r * 37)..<(r * 37 + 37)].map(Double.init)
            let m = xs.max()!
            let z = xs.reduce(0) { $0 + Foundation.exp($1 - m) }
            for j in 0..<37 {
                XCTAssertEqual(Double(rows[r * 37 + j]), Foundation.exp(xs[j] - m) / z, accuracy: 1e-6)
            }
        }
        XCTAssertEqual(rows[5], 0)
    }
}
