import XCTest
import COpenBLAS
@testable import DiffEditCore
import DiffEditTestSupport

/// Conv2D, GroupNorm, nearest upsampling and single-head attention against direct, loop-by-loop
/// evaluations of their definitions (torch.nn.Conv2d, nn.GroupNorm, F.interpolate nearest,
/// softmax(QKᵀ·s)V) in Double.
final class KernelTests: XCTestCase {
    /// Deterministic pseudo-random values in [−1, 1).
    struct Lcg {
        var state: UInt64
        mutating func next() -> Float {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: state >> 11) % (1 << 24)) / Float(1 << 23) - 1
        }
        mutating func array(_ n: Int) -> [Float] { (0..<n).map { _ in next() } }
    }

    static func naiveConv(_ x: Tensor, weight: [Float], bias: [Float]?, outC: Int, k: (Int, Int),
                          stride: Int, pad: Conv2D.Padding) -> Tensor {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let oh = (h + pad.top + pad.bottom - k.0) / stride + 1
        let ow = (w + pad.left + pad.right - k.1) / stride + 1
        var out = [Float](repeating: 0, count: n * outC * oh * ow)
        for b in 0..<n { for o in 0..<outC { for oy in 0..<oh { for ox in 0..<ow {
            var s = Double(bias?[o] ?? 0)
            for ci in 0..<c { for ky in 0..<k.0 { for kx in 0..<k.1 {
                let iy = oy * stride + ky - pad.top, ix = ox * stride + kx - pad.left
                guard iy >= 0, iy < h, ix >= 0, ix < w else { continue }
                s += Double(weight[((o * c + ci) * k.0 + ky) * k.1 + kx]) * Double(x.data[((b * c + ci) * h + iy) * w + ix])
            } } }
            out[((b * outC + o) * oh + oy) * ow + ox] = Float(s)
        } } } }
        return Tensor(shape: [n, outC, oh, ow], data: out)
    }

    func checkConv(n: Int, c: Int, h: Int, w: Int, outC: Int, k: Int, stride: Int, pad: Conv2D.Padding,
                   bias: Bool = true, budget: Int? = nil, _ label: String) {
        var rng = Lcg(state: UInt64(n * 1000 + c * 100 + h * 10 + w + k))
        let x = Tensor(shape: [n, c, h, w], data: rng.array(n * c * h * w))
        let weight = rng.array(outC * c * k * k)
        let b = bias ? rng.array(outC) : nil
        let ctx = ComputeContext()
        if let budget { ctx.policy.columnBudget = budget }
        let got = Conv2D.forward(x, weight: weight, bias: b, outChannels: outC, kernel: (k, k), stride: stride, padding: pad,
                                 context: ctx)
        let want = Self.naiveConv(x, weight: weight, bias: b, outC: outC, k: (k, k), stride: stride, pad: pad)
        XCTAssertEqual(got.shape, want.shape, label)
        assertClose(got.data, want.data, atol: 1e-5, label)
    }

    /// Small products run on one OpenBLAS thread (waking workers for them made a busy machine
    /// 50x slower); large ones use every allowed thread; results do not depend on it.
    func testSmallProductsRunOnOneThread() {
        do {
            var rng = Lcg(state: 3)
            let small = rng.array(32 * 32), big = rng.array(512 * 512)
            var c1 = [Float](repeating: 0, count: 32 * 32), c2 = [Float](repeating: 0, count: 512 * 512)
            BLAS.gemm(threads: 2, m: 32, n: 32, k: 32, a: small, lda: 32, b: small, ldb: 32, c: &c1, ldc: 32)
            XCTAssertEqual(Int(openblas_get_num_threads()), 1)
            XCTAssertEqual(BLAS.threadsInUse, 1)
            BLAS.gemm(threads: 2, m: 512, n: 512, k: 512, a: big, lda: 512, b: big, ldb: 512, c: &c2, ldc: 512)
            XCTAssertEqual(Int(openblas_get_num_threads()), 2)
            XCTAssertEqual(BLAS.threadsInUse, 2)
            // The small product is still right: one entry against its definition.
            var want: Float = 0
            for t in 0..<32 { want += small[5 * 32 + t] * small[t * 32 + 7] }
            XCTAssertEqual(c1[5 * 32 + 7], want, accuracy: 1e-4)
        }
    }

    func testConv3x3Pad1OddSizes() {
        checkConv(n: 2, c: 3, h: 7, w: 5, outC: 4, k: 3, stride: 1, pad: .same(1), "3x3 pad 1 on 7x5")
        checkConv(n: 1, c: 5, h: 1, w: 9, outC: 3, k: 3, stride: 1, pad: .same(1), "3x3 pad 1 on 1x9")
        checkConv(n: 1, c: 2, h: 6, w: 1, outC: 2, k: 3, stride: 1, pad: .same(1), bias: false, "3x3 pad 1 on 6x1, no bias")
    }

    func testConvStride2AsymmetricPadding() {
        // Downsample2D(padding=0): pad right and bottom by one, then stride 2.
        let asym = Conv2D.Padding(top: 0, bottom: 1, left: 0, right: 1)
        checkConv(n: 2, c: 3, h: 8, w: 6, outC: 5, k: 3, stride: 2, pad: asym, "stride 2 asym on 8x6")
        checkConv(n: 1, c: 4, h: 7, w: 9, outC: 3, k: 3, stride: 2, pad: asym, "stride 2 asym on 7x9")
        checkConv(n: 1, c: 3, h: 5, w: 5, outC: 2, k: 3, stride: 2, pad: .same(1), "stride 2 pad 1 on 5x5")
    }

    func testConv1x1() {
        checkConv(n: 2, c: 7, h: 3, w: 5, outC: 6, k: 1, stride: 1, pad: .same(0), "1x1 on 3x5")
        checkConv(n: 1, c: 3, h: 4, w: 4, outC: 2, k: 1, stride: 1, pad: .same(0), bias: false, "1x1 no bias")
    }

    /// Output rows unfolded in bands (the memory bound) must give the same result as one band.
    func testConvBandedIm2col() {
        let asym = Conv2D.Padding(top: 0, bottom: 1, left: 0, right: 1)
        // Budget below one row forces one-row bands; 100 floats gives bands of a few rows with a
        // ragged last band.
        checkConv(n: 2, c: 3, h: 11, w: 7, outC: 4, k: 3, stride: 1, pad: .same(1), budget: 1, "3x3 one-row bands")
        checkConv(n: 1, c: 2, h: 13, w: 5, outC: 3, k: 3, stride: 1, pad: .same(1), budget: 100, "3x3 ragged bands")
        checkConv(n: 1, c: 3, h: 10, w: 6, outC: 2, k: 3, stride: 2, pad: asym, budget: 60, "stride 2 bands")
    }

    func testGroupNormOddGroups() {
        // 15 channels in 5 groups of 3, odd spatial size, with and without the fused SiLU.
        let (n, c, h, w, groups) = (2, 15, 3, 5, 5)
        var rng = Lcg(state: 7)
        // An offset makes the mean matter.
        let x = Tensor(shape: [n, c, h, w], data: rng.array(n * c * h * w).map { 3 + 2 * $0 })
        let weight = rng.array(c), bias = rng.array(c)
        let eps: Float = 1e-6
        let cpg = c / groups, hw = h * w
        var want = [Float](repeating: 0, count: x.count)
        for b in 0..<n {
            for g in 0..<groups {
                var vals: [Double] = []
                for ch in (g * cpg)..<((g + 1) * cpg) { for i in 0..<hw { vals.append(Double(x.data[(b * c + ch) * hw + i])) } }
                let mean = vals.reduce(0, +) / Double(vals.count)
                let variance = vals.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(vals.count)
                for ch in (g * cpg)..<((g + 1) * cpg) {
                    for i in 0..<hw {
                        let idx = (b * c + ch) * hw + i
                        want[idx] = Float((Double(x.data[idx]) - mean) / (variance + Double(eps)).squareRoot()
                                          * Double(weight[ch]) + Double(bias[ch]))
                    }
                }
            }
        }
        let got = Normalization.groupNorm(x, groups: groups, weight: weight, bias: bias, eps: eps)
        assertClose(got.data, want, atol: 2e-6, "groupnorm 15ch/5 groups")
        let gotSilu = Normalization.groupNorm(x, groups: groups, weight: weight, bias: bias, eps: eps, silu: true)
        assertClose(gotSilu.data, want.map { $0 / (1 + exp(-$0)) }, atol: 2e-6, "groupnorm+silu")
        // One group over all channels.
        let one = Normalization.groupNorm(x, groups: 1, weight: weight, bias: bias, eps: eps)
        for b in 0..<n {
            let vals = x.data[(b * c * hw)..<((b + 1) * c * hw)].map(Double.init)
            let mean = vals.reduce(0, +) / Double(vals.count)
            let sd = (vals.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(vals.count) + Double(eps)).squareRoot()
            let expected = (0..<(c * hw)).map { i in Float((vals[i] - mean) / sd * Double(weight[i / hw]) + Double(bias[i / hw])) }
            assertClose(Array(one.data[(b * c * hw)..<((b + 1) * c * hw)]), expected, atol: 2e-6, "groupnorm 1 group, batch \(b)")
        }
    }

    func testUpsampleNearest2x() {
        let (n, c, h, w) = (2, 3, 3, 5)
        var rng = Lcg(state: 11)
        let x = Tensor(shape: [n, c, h, w], data: rng.array(n * c * h * w))
        let got = Conv2D.upsampleNearest(x, height: 2 * h, width: 2 * w)
        XCTAssertEqual(got.shape, [n, c, 2 * h, 2 * w])
        var want = [Float](repeating: 0, count: got.count)
        for p in 0..<(n * c) { for y in 0..<(2 * h) { for xx in 0..<(2 * w) {
            want[(p * 2 * h + y) * 2 * w + xx] = x.data[(p * h + y / 2) * w + xx / 2]
        } } }
        XCTAssertEqual(got.data, want, "nearest 2x is an exact copy")
    }

    func testAttentionSingleHead() {
        // The VAE mid block: one head over every position, scale 1/√C; odd lengths and a chunk
        // smaller than the query count.
        let (b, lq, lk, d) = (2, 7, 9, 5)
        var rng = Lcg(state: 13)
        let q = Tensor(shape: [b, lq, d], data: rng.array(b * lq * d).map { 3 * $0 })
        let k = Tensor(shape: [b, lk, d], data: rng.array(b * lk * d).map { 3 * $0 })
        let v = Tensor(shape: [b, lk, d], data: rng.array(b * lk * d))
        let scale = 1 / Float(d).squareRoot()
        var want = [Float](repeating: 0, count: b * lq * d)
        for bi in 0..<b { for i in 0..<lq {
            var s = [Double](repeating: 0, count: lk)
            for j in 0..<lk {
                for t in 0..<d { s[j] += Double(q.data[(bi * lq + i) * d + t]) * Double(k.data[(bi * lk + j) * d + t]) }
                s[j] *= Double(scale)
            }
            let m = s.max()!
            let e = s.map { Foundation.exp($0 - m) }
            let z = e.reduce(0, +)
            for t in 0..<d {
                var acc = 0.0
                for j in 0..<lk { acc += e[j] / z * Double(v.data[(bi * lk + j) * d + t]) }
                want[(bi * lq + i) * d + t] = Float(acc)
            }
        } }
        for budget in [KernelPolicy().scoreBudget, 2 * lk] {
            let ctx = ComputeContext()
            ctx.policy.scoreBudget = budget
            let got = Attention.forward(q: q, k: k, v: v, heads: 1, scale: scale, context: ctx)
            assertClose(got.data, want, atol: 1e-5, "single-head attention, score budget \(budget)")
        }
    }
}

/// The vectorised C kernels (CKernels: AVX-512, AVX2 or baseline, chosen at load) against
/// VectorMath's scalar forms of the same formulas, on lengths that are not multiples of the
/// vector width and on the inputs softmax meets (−∞ from masks, large negatives).
final class VectorisedKernelTests: XCTestCase {
    func testExpRowsGegluSiluMatchScalarForms() {
        var rng = KernelTests.Lcg(state: 21)
        for n in [1, 7, 16, 17, 77, 333] {
            let rows = 3
            var x = rng.array(rows * n).map { 30 * $0 }
            x[0] = -.infinity
            if n > 3 { x[n + 2] = -200 }
            var sums = [Float](repeating: 0, count: rows)
            var got = x
            got.withUnsafeMutableBufferPointer { p in
                sums.withUnsafeMutableBufferPointer { VectorMath.expRows(p.baseAddress!, rows: rows, n: n, stride: n, sums: $0.baseAddress!) }
            }
            for r in 0..<rows {
                let row = Array(x[(r * n)..<((r + 1) * n)])
                let m = row.max()! == -.infinity ? 0 : row.max()!
                var want: Float = 0
                for i in 0..<n {
                    let e = VectorMath.exp(row[i] - m)
                    want += e
                    let g = got[r * n + i]
                    XCTAssertTrue(abs(g - e) <= 4e-7 * max(e, 1e-30) || abs(g - e) < 1e-37, "exp row \(r) [\(i)] of \(n): \(g) vs \(e)")
                }
                XCTAssertEqual(sums[r], want, accuracy: 1e-5 * want, "row sum \(r) of \(n)")
            }
            XCTAssertEqual(got[0], 0, "exp(−∞) is 0")

            let d = n
            let hg = rng.array(2 * d * rows).map { 6 * $0 }
            var out = [Float](repeating: .nan, count: d * rows)
            hg.withUnsafeBufferPointer { h in
                out.withUnsafeMutableBufferPointer { VectorMath.geglu(h.baseAddress!, rows: rows, d: d, out: $0.baseAddress!) }
            }
            for r in 0..<rows { for i in 0..<d {
                let want = hg[r * 2 * d + i] * VectorMath.gelu(hg[r * 2 * d + d + i])
                XCTAssertEqual(out[r * d + i], want, accuracy: 1e-6 * max(1, abs(want)), "geglu \(r),\(i) of \(d)")
            } }

            var s = rng.array(n).map { 20 * $0 }
            let s0 = s
            s.withUnsafeMutableBufferPointer { VectorMath.silu($0.baseAddress!, count: n) }
            for i in 0..<n {
                XCTAssertEqual(s[i], VectorMath.silu(s0[i]), accuracy: 1e-6 * max(1, abs(s0[i])), "silu [\(i)] of \(n)")
            }
        }
    }
}
