import Foundation
import XCTest
import CKernels
@testable import DiffEditCore

/// The opt-in bf16 products (gemm_bf16.c, `KernelPolicy.precision`): the rounding, the product
/// against a float64 product of the rounded operands — the scalar emulation on every CPU, the
/// AVX512-BF16 kernel where the CPU has it — and a whole layer at bf16 against f32.
final class GEMMBF16Tests: XCTestCase {
    typealias Lcg = KernelTests.Lcg

    static func bf16(_ x: Float) -> Float { Float(bitPattern: UInt32(diffedit_f32_to_bf16(x)) << 16) }

    func testRoundingIsToNearestEven() {
        XCTAssertEqual(diffedit_f32_to_bf16(1), 0x3F80)
        XCTAssertEqual(diffedit_f32_to_bf16(-2), 0xC000)
        // Halfway cases go to the even neighbour; just above halfway goes up.
        XCTAssertEqual(diffedit_f32_to_bf16(Float(bitPattern: 0x3F80_8000)), 0x3F80)
        XCTAssertEqual(diffedit_f32_to_bf16(Float(bitPattern: 0x3F81_8000)), 0x3F82)
        XCTAssertEqual(diffedit_f32_to_bf16(Float(bitPattern: 0x3F80_8001)), 0x3F81)
        XCTAssertEqual(diffedit_f32_to_bf16(Float(bitPattern: 0x3F80_7FFF)), 0x3F80)
        XCTAssertEqual(diffedit_f32_to_bf16(.infinity), 0x7F80)
        XCTAssertTrue(Self.bf16(.nan).isNaN)
        XCTAssertTrue(Self.bf16(Float(bitPattern: 0x7F80_0001)).isNaN, "a NaN whose payload is below the cut stays NaN")
        XCTAssertEqual(Self.bf16(Float.greatestFiniteMagnitude), .infinity, "rounds up past the largest bf16")
    }

    /// The packing's vector rounding (16 values at a time, both walks) gives the scalar rounding's
    /// bits: A·I and I·B with an exact identity return the rounded A and B, ties and values next
    /// to them included; a NaN stays a NaN in its own row and nowhere else.
    func testVectorPackingRoundsAsScalar() {
        let k = 64, m = 16
        var rng = Lcg(state: 11)
        var values = rng.array(m * k)
        let ties: [UInt32] = [0x3F80_8000, 0x3F81_8000, 0x3F80_8001, 0x3F80_7FFF, 0xBF80_8000, 0x7F7E_8000, 0x0000_8000]
        for (i, t) in ties.enumerated() { values[i * 5 + 3] = Float(bitPattern: t) }
        let identity = (0..<(k * k)).map { $0 / k == $0 % k ? Float(1) : 0 }
        let paths: [Int32] = Precision.bf16Available ? [1, 0] : [1]
        for emulate in paths {
            // A·I: A packed along its rows (pairs adjacent).
            var c = [Float](repeating: .nan, count: m * k)
            XCTAssertEqual(diffedit_gemm_bf16(m, k, k, 1, values, k, 1, identity, k, 1, 0, &c, k, emulate), 0)
            XCTAssertEqual(c.map(\.bitPattern), values.map { Self.bf16($0).bitPattern }, "A·I, emulate \(emulate)")
            // I·B: B packed across its columns (rows adjacent), 16 columns at a time.
            var d = [Float](repeating: .nan, count: k * m)
            let b = (0..<(k * m)).map { values[($0 % m) * k + $0 / m] }  // B = Aᵀ, k × m
            XCTAssertEqual(diffedit_gemm_bf16(k, m, k, 1, identity, k, 1, b, m, 1, 0, &d, m, emulate), 0)
            XCTAssertEqual(d.map(\.bitPattern), b.map { Self.bf16($0).bitPattern }, "I·B, emulate \(emulate)")
        }
        // A NaN in row 2 of A: row 2 of A·I is NaN throughout, every other row exact.
        var withNaN = values
        withNaN[2 * k + 7] = .nan
        for emulate in paths {
            var c = [Float](repeating: 0, count: m * k)
            XCTAssertEqual(diffedit_gemm_bf16(m, k, k, 1, withNaN, k, 1, identity, k, 1, 0, &c, k, emulate), 0)
            for i in 0..<m {
                let row = Array(c[(i * k)..<((i + 1) * k)])
                if i == 2 { XCTAssertTrue(row[7].isNaN, "the NaN itself, emulate \(emulate)") }
                else { XCTAssertEqual(row.map(\.bitPattern), withNaN[(i * k)..<((i + 1) * k)].map { Self.bf16($0).bitPattern }) }
            }
        }
    }

    /// C = alpha·op(A)·op(B) + beta·C for odd sizes, both transposes, several K blocks (the
    /// kernel's KC is 384) and row/column tails, against float64 sums of the rounded operands.
    func testProductMatchesRoundedFloat64() {
        let paths: [(emulate: Int32, name: String)] = Precision.bf16Available
            ? [(1, "emulated"), (0, "AVX512-BF16")] : [(1, "emulated")]
        var rng = Lcg(state: 7)
        for (m, n, k) in [(1, 1, 1), (13, 33, 7), (25, 70, 513), (12, 32, 384), (40, 300, 800), (7, 5, 2), (3, 65, 17)] {
            for transA in [false, true] { for transB in [false, true] {
                for (alpha, beta) in [(Float(1), Float(0)), (1, 1), (0.25, 0.5)] {
                    let a = rng.array(m * k), b = rng.array(k * n), c0 = rng.array(m * n)
                    let (ars, acs) = transA ? (1, m) : (k, 1)
                    let (brs, bcs) = transB ? (1, k) : (n, 1)
                    for path in paths {
                        var c = c0
                        let status = diffedit_gemm_bf16(m, n, k, alpha, a, ars, acs, b, brs, bcs, beta, &c, n, path.emulate)
                        XCTAssertEqual(status, 0)
                        var worst = 0.0
                        for i in 0..<m { for j in 0..<n {
                            var sum = 0.0, size = 0.0
                            for l in 0..<k {
                                let p = Double(Self.bf16(a[i * ars + l * acs])) * Double(Self.bf16(b[l * brs + j * bcs]))
                                sum += p
                                size += abs(p)
                            }
                            let want = Double(alpha) * sum + Double(beta) * Double(c0[i * n + j])
                            let scale = Double(alpha) * size + abs(Double(beta) * Double(c0[i * n + j])) + 1e-30
                            worst = max(worst, abs(Double(c[i * n + j]) - want) / scale)
                        } }
                        // f32 sums of exact products (bf16 × bf16 fits in f32): a few f32 ulps.
                        XCTAssertLessThan(worst, 1e-6, "\(path.name) \(m)×\(n)×\(k) transA \(transA) transB \(transB) alpha \(alpha) beta \(beta)")
                    }
                }
            } }
        }
    }

    /// A linear layer and an attention at bf16 through ComputeContext against f32: the error is
    /// bf16's (relative ~2⁻⁹ per operand, averaged over K), neither zero (the path ran) nor more.
    func testLayersAtBF16AgainstF32() throws {
        try XCTSkipUnless(Precision.bf16Available, "this CPU has no AVX512-BF16: the bf16 path runs in f32 here (the emulation is tested above)")
        var rng = Lcg(state: 11)
        let rows = 96, inF = 320, outF = 200
        let x = Tensor(shape: [rows, inF], data: rng.array(rows * inF))
        let w = rng.array(outF * inF), bias = rng.array(outF)
        let f32 = ComputeContext(threads: 2)
        f32.policy.precision = .f32
        let bf = ComputeContext(threads: 2)
        bf.policy.precision = .bf16
        let y32 = Linear.forward(x, weight: w, bias: bias, outFeatures: outF, context: f32)
        let y16 = Linear.forward(x, weight: w, bias: bias, outFeatures: outF, context: bf)
        let rms = sqrt(y32.data.reduce(0.0) { $0 + Double($1 * $1) } / Double(y32.count))
        let err = zip(y32.data, y16.data).map { Double(abs($0 - $1)) }.max()!
        print("linear 96×320→200 at bf16: max error \(err), rms of the output \(rms)")
        XCTAssertGreaterThan(err, 0, "the bf16 path did not run")
        XCTAssertLessThan(err / rms, 0.05)
    }
    /// A weight packed once (either role, packed in two row ranges as the model's packing splits
    /// it between workers) gives the same bits as the same product packed per call, from row or
    /// column offsets at panel multiples too (how threads split a product).
    func testWeightsPackedOnceGiveTheSameBits() {
        let paths: [Int32] = Precision.bf16Available ? [1, 0] : [1]
        var rng = Lcg(state: 23)
        for (m, n, k) in [(13, 33, 7), (25, 70, 513), (40, 300, 800), (7, 5, 2), (64, 96, 1)] {
            let x = rng.array(m * k), w = rng.array(n * k), c0 = rng.array(m * n)
            let units = (k + 1) / 2
            for emulate in paths {
                // Role 1: C = X·Wᵀ with W (n × k) packed; rows of W split at 32.
                var pb = [UInt32](repeating: 0xFFFF_FFFF, count: Int(diffedit_bf16_packed_units(1, n, k)))
                let split = min(n, 32)
                w.withUnsafeBufferPointer { wp in
                    diffedit_bf16_pack_weight(1, wp.baseAddress!, k, n, k, 0, split, &pb)
                    diffedit_bf16_pack_weight(1, wp.baseAddress! + split * k, k, n, k, split, n, &pb)
                }
                var want = c0, got = c0
                XCTAssertEqual(diffedit_gemm_bf16(m, n, k, 1, x, k, 1, w, 1, k, 0.5, &want, n, emulate), 0)
                XCTAssertEqual(diffedit_gemm_bf16_packed(m, n, k, 1, x, k, 1, nil, nil, 1, k, pb, 0.5, &got, n, nil, 0, emulate), 0)
                XCTAssertEqual(got.map(\.bitPattern), want.map(\.bitPattern), "packed B \(m)×\(n)×\(k) emulate \(emulate)")
                // A bias per column added by the kernel: the bits of the bias written into C and a
                // beta-1 product (over K blocks too, k = 513 and 800).
                let bc = rng.array(n)
                var wantBias = (0..<(m * n)).map { bc[$0 % n] }, gotBias = c0
                XCTAssertEqual(diffedit_gemm_bf16(m, n, k, 1, x, k, 1, w, 1, k, 1, &wantBias, n, emulate), 0)
                XCTAssertEqual(diffedit_gemm_bf16_packed(m, n, k, 1, x, k, 1, nil, nil, 1, k, pb, 0, &gotBias, n, bc, 1, emulate), 0)
                XCTAssertEqual(gotBias.map(\.bitPattern), wantBias.map(\.bitPattern), "packed B with bias \(m)×\(n)×\(k) emulate \(emulate)")
                if n > 32 {  // the columns from 32 on, as a second worker computes them
                    var part = c0
                    pb.withUnsafeBufferPointer { p in
                        part.withUnsafeMutableBufferPointer { c in
                            XCTAssertEqual(diffedit_gemm_bf16_packed(m, n - 32, k, 1, x, k, 1, nil, nil, 1, k, p.baseAddress! + 32 * units,
                                                                     0.5, c.baseAddress! + 32, n, nil, 0, emulate), 0)
                        }
                    }
                    for i in 0..<m { for j in 32..<n { XCTAssertEqual(part[i * n + j].bitPattern, want[i * n + j].bitPattern) } }
                }
                // Role 0: C' = W'·Y with W' (m × k) packed; rows split at 12.
                let y = rng.array(k * n)
                var pa = [UInt32](repeating: 0xFFFF_FFFF, count: Int(diffedit_bf16_packed_units(0, m, k)))
                let rsplit = min(m, 12)
                x.withUnsafeBufferPointer { xp in
                    diffedit_bf16_pack_weight(0, xp.baseAddress!, k, m, k, 0, rsplit, &pa)
                    diffedit_bf16_pack_weight(0, xp.baseAddress! + rsplit * k, k, m, k, rsplit, m, &pa)
                }
                var want2 = c0, got2 = c0
                XCTAssertEqual(diffedit_gemm_bf16(m, n, k, 0.25, x, k, 1, y, n, 1, 0, &want2, n, emulate), 0)
                XCTAssertEqual(diffedit_gemm_bf16_packed(m, n, k, 0.25, nil, k, 1, pa, y, n, 1, nil, 0, &got2, n, nil, 0, emulate), 0)
                XCTAssertEqual(got2.map(\.bitPattern), want2.map(\.bitPattern), "packed A \(m)×\(n)×\(k) emulate \(emulate)")
                // A bias per row (an output channel of a convolution), with alpha ≠ 1.
                let br = rng.array(m)
                var wantRows = (0..<(m * n)).map { br[$0 / n] }, gotRows = c0
                XCTAssertEqual(diffedit_gemm_bf16(m, n, k, 0.25, x, k, 1, y, n, 1, 1, &wantRows, n, emulate), 0)
                XCTAssertEqual(diffedit_gemm_bf16_packed(m, n, k, 0.25, nil, k, 1, pa, y, n, 1, nil, 0, &gotRows, n, br, 0, emulate), 0)
                XCTAssertEqual(gotRows.map(\.bitPattern), wantRows.map(\.bitPattern), "packed A with bias \(m)×\(n)×\(k) emulate \(emulate)")
                if m > 12 {
                    var part = c0
                    pa.withUnsafeBufferPointer { p in
                        part.withUnsafeMutableBufferPointer { c in
                            XCTAssertEqual(diffedit_gemm_bf16_packed(m - 12, n, k, 0.25, nil, k, 1, p.baseAddress! + 12 * units, y, n, 1, nil,
                                                                     0, c.baseAddress! + 12 * n, n, nil, 0, emulate), 0)
                        }
                    }
                    for i in 12..<m { for j in 0..<n { XCTAssertEqual(part[i * n + j].bitPattern, want2[i * n + j].bitPattern) } }
                }
            }
        }
    }

    /// GEGLU's product with its value and gate rows interleaved by 16 in the packed weight
    /// (`diffedit_gemm_bf16_geglu`) gives the bits of the plain product with its bias, then
    /// `diffedit_geglu`: emulated everywhere, on vdpbf16ps where present; odd row counts, K over
    /// one block of the plain product (which then sums over K blocks), no bias, and threads'
    /// column offsets (whole panels of 16 outputs).
    func testGEGLUProductGivesTheBitsOfProductThenGate() {
        let paths: [Int32] = Precision.bf16Available ? [1, 0] : [1]
        var rng = Lcg(state: 53)
        for (m, d, k, withBias) in [(13, 16, 40, true), (30, 48, 800, true), (5, 32, 7, false)] {
            let x = rng.array(m * k), w = rng.array(2 * d * k), bias = rng.array(2 * d)
            // W' rows: panel q = value rows 16q…16q+15, then gate rows d + 16q….
            var permuted = [Float](repeating: 0, count: 2 * d * k)
            for r in 0..<(2 * d) {
                let q = r / 32, i = r % 32, src = i < 16 ? 16 * q + i : d + 16 * q + i - 16
                for l in 0..<k { permuted[r * k + l] = w[src * k + l] }
            }
            var pb = [UInt32](repeating: 0, count: Int(diffedit_bf16_packed_units(1, 2 * d, k)))
            diffedit_bf16_pack_weight(1, permuted, k, 2 * d, k, 0, 2 * d, &pb)
            var plain = [UInt32](repeating: 0, count: Int(diffedit_bf16_packed_units(1, 2 * d, k)))
            diffedit_bf16_pack_weight(1, w, k, 2 * d, k, 0, 2 * d, &plain)
            for emulate in paths {
                var projected = [Float](repeating: 0, count: m * 2 * d), want = [Float](repeating: 0, count: m * d)
                bias.withUnsafeBufferPointer { bp in
                    XCTAssertEqual(diffedit_gemm_bf16_packed(m, 2 * d, k, 1, x, k, 1, nil, nil, 1, k, plain, 0, &projected, 2 * d,
                                                             withBias ? bp.baseAddress : nil, 1, emulate), 0)
                }
                diffedit_geglu(projected, m, d, &want)
                var got = [Float](repeating: .nan, count: m * d)
                bias.withUnsafeBufferPointer { bp in
                    XCTAssertEqual(diffedit_gemm_bf16_geglu(m, 2 * d, k, x, k, 1, pb, &got, d, withBias ? bp.baseAddress : nil,
                                                            withBias ? bp.baseAddress! + d : nil, emulate), 0)
                }
                XCTAssertEqual(got.map(\.bitPattern), want.map(\.bitPattern), "GEGLU \(m)×\(d)×\(k) emulate \(emulate)")
                if d > 16 {  // the outputs from 16 on, as a second worker computes them
                    var part = [Float](repeating: .nan, count: m * d)
                    pb.withUnsafeBufferPointer { p in bias.withUnsafeBufferPointer { bp in part.withUnsafeMutableBufferPointer { o in
                        XCTAssertEqual(diffedit_gemm_bf16_geglu(m, 2 * d - 32, k, x, k, 1, p.baseAddress! + 32 * ((k + 1) / 2),
                                                                o.baseAddress! + 16, d, withBias ? bp.baseAddress! + 16 : nil,
                                                                withBias ? bp.baseAddress! + d + 16 : nil, emulate), 0)
                    } } }
                    for i in 0..<m { for j in 16..<d { XCTAssertEqual(part[i * d + j].bitPattern, want[i * d + j].bitPattern) } }
                }
            }
        }
    }

    /// The unfolded images packed straight from the images (`diffedit_bf16_pack_im2col`) are the
    /// units of unfolding them (`Conv2D.unfold`) and packing the copy as a B operand: 3×3 with
    /// padding 1, stride 2 with the VAE encoder's padding, 1×1, a last panel part empty, and two
    /// threads' panel ranges.
    func testImagesPackedAsTheirUnfoldedColumns() {
        var rng = Lcg(state: 61)
        for (n, c, h, w, kernel, stride, pad) in [(2, 5, 7, 9, 3, 1, Conv2D.Padding.same(1)),
                                                  (3, 4, 8, 8, 3, 2, Conv2D.Padding(top: 0, bottom: 1, left: 0, right: 1)),
                                                  (1, 9, 6, 5, 1, 1, Conv2D.Padding.same(0))] {
            let x = rng.array(n * c * h * w).map { $0 * 3 }
            let (oh, ow) = Conv2D.outputSize(h: h, w: w, kernel: (kernel, kernel), stride: stride, padding: pad)
            let columns = n * oh * ow, k = c * kernel * kernel
            var cols = [Float](repeating: .nan, count: k * columns)
            x.withUnsafeBufferPointer { xp in
                Conv2D.unfold(ComputeContext(threads: 1), x: xp.baseAddress!, images: n, c: c, h: h, w: w,
                              kernel: (kernel, kernel), stride: stride, padding: pad, rows: 0..<oh, ow: ow, into: &cols, ld: columns)
            }
            var transposed = [Float](repeating: 0, count: columns * k)
            for l in 0..<k { for j in 0..<columns { transposed[j * k + l] = cols[l * columns + j] } }
            let count = Int(diffedit_bf16_packed_units(1, columns, k))
            var want = [UInt32](repeating: 0, count: count), got = [UInt32](repeating: 0xFFFF_FFFF, count: count)
            diffedit_bf16_pack_weight(1, transposed, k, columns, k, 0, columns, &want)
            let split = min(columns, 32)
            x.withUnsafeBufferPointer { xp in
                diffedit_bf16_pack_im2col(xp.baseAddress!, n, c, h, w, kernel, kernel, stride, pad.top, pad.left, oh, ow, 0, split, &got)
                diffedit_bf16_pack_im2col(xp.baseAddress!, n, c, h, w, kernel, kernel, stride, pad.top, pad.left, oh, ow, split,
                                          (columns + 31) / 32 * 32, &got)
            }
            XCTAssertEqual(got, want, "\(kernel)×\(kernel)/\(stride) \(n)×\(c)×\(h)×\(w)")
        }
    }

    /// Model layers at bf16 with their weights packed once give the bits of the same layers packed
    /// per product: a linear layer (weight on the right), a 1×1 and a 3×3 convolution (on the left),
    /// through checkpoint-like 16-bit parameters, twice (the second call reads the kept packing).
    func testLayersWithWeightsPackedOnceMatchPerProduct() throws {
        try XCTSkipUnless(Precision.bf16Available, "this CPU has no AVX512-BF16 (the packing itself is tested emulated above)")
        var rng = Lcg(state: 31)
        let packedCtx = ComputeContext(threads: 2), perProduct = ComputeContext(threads: 2)
        for ctx in [packedCtx, perProduct] { ctx.policy.precision = .bf16 }
        perProduct.policy.packsWeightsBF16 = false
        packedCtx.policy.winograd4MinTiles = Int.max
        perProduct.policy.winograd4MinTiles = Int.max
        packedCtx.policy.useWinograd = false
        perProduct.policy.useWinograd = false
        // Linear, 70 tokens, 200 → 150, the weight in f16 as a checkpoint stores it.
        let lin = Parameter(shape: [150, 200], bits: .f16)
        let lw = rng.array(150 * 200)
        let lh = lin.storage.raw.assumingMemoryBound(to: UInt16.self)
        for i in 0..<lw.count { lh[i] = Float16(lw[i]).bitPattern }
        let x = rng.array(70 * 200), bias = rng.array(150)
        func linear(_ ctx: ComputeContext) -> [Float] {
            var out = [Float](repeating: 0, count: 70 * 150)
            x.withUnsafeBufferPointer { xp in bias.withUnsafeBufferPointer { bp in out.withUnsafeMutableBufferPointer { o in
                Linear.forward(ctx, x: xp.baseAddress!, rows: 70, inFeatures: 200, weight: lin.matrix, bias: bp.baseAddress!,
                               outFeatures: 150, out: o.baseAddress!)
            } } }
            return out
        }
        let want = linear(perProduct)
        XCTAssertEqual(linear(packedCtx).map(\.bitPattern), want.map(\.bitPattern), "linear, packing made")
        XCTAssertEqual(lin.storage.packs.forms, [.matrix(.right)], "the linear weight was packed, as B")
        XCTAssertEqual(linear(packedCtx).map(\.bitPattern), want.map(\.bitPattern), "linear, packing kept")
        // GEGLU's projection, 70 tokens, 96 → 2 × 64 (value rows, then gate rows), in one fused
        // product: the bits of the product (per product) then Pointwise.geglu.
        let ff = Parameter(shape: [128, 96], bits: .f16)
        let fw = rng.array(128 * 96)
        let fh = ff.storage.raw.assumingMemoryBound(to: UInt16.self)
        for i in 0..<fw.count { fh[i] = Float16(fw[i]).bitPattern }
        let fx = rng.array(70 * 96), fb = rng.array(128)
        var wantG = [Float](repeating: 0, count: 70 * 64), projected = [Float](repeating: 0, count: 70 * 128)
        fx.withUnsafeBufferPointer { xp in fb.withUnsafeBufferPointer { bp in
            Linear.forward(perProduct, x: xp.baseAddress!, rows: 70, inFeatures: 96, weight: ff.matrix, bias: bp.baseAddress!,
                           outFeatures: 128, out: &projected)
            XCTAssertFalse(Linear.forwardGEGLU(perProduct, x: xp.baseAddress!, rows: 70, inFeatures: 96, weight: ff.matrix,
                                               bias: bp.baseAddress!, outFeatures: 128, out: &wantG),
                           "without weights packed once there is no fused product")
        } }
        Pointwise.geglu(perProduct, projected, rows: 70, d: 64, out: &wantG)
        for _ in 0..<2 {
            var got = [Float](repeating: .nan, count: 70 * 64)
            fx.withUnsafeBufferPointer { xp in fb.withUnsafeBufferPointer { bp in
                XCTAssertTrue(Linear.forwardGEGLU(packedCtx, x: xp.baseAddress!, rows: 70, inFeatures: 96, weight: ff.matrix,
                                                  bias: bp.baseAddress!, outFeatures: 128, out: &got))
            } }
            XCTAssertEqual(got.map(\.bitPattern), wantG.map(\.bitPattern), "GEGLU fused")
        }
        XCTAssertEqual(ff.storage.packs.forms, [.geglu], "the projection was packed with its halves interleaved")
        // Convolutions 48 → 40 channels on 2 images of 9 × 11.
        for kernel in [1, 3] {
            let conv = Parameter(shape: [40, 48, kernel, kernel], bits: .f16)
            let cw = rng.array(40 * 48 * kernel * kernel)
            let ch = conv.storage.raw.assumingMemoryBound(to: UInt16.self)
            for i in 0..<cw.count { ch[i] = Float16(cw[i]).bitPattern }
            let img = rng.array(2 * 48 * 9 * 11), cb = rng.array(40)
            func run(_ ctx: ComputeContext) -> [Float] {
                var out = [Float](repeating: 0, count: 2 * 40 * 9 * 11)
                img.withUnsafeBufferPointer { xp in cb.withUnsafeBufferPointer { bp in out.withUnsafeMutableBufferPointer { o in
                    Conv2D.forward(ctx, x: xp.baseAddress!, n: 2, c: 48, h: 9, w: 11, weight: conv.matrix, bias: bp.baseAddress!,
                                   outChannels: 40, kernel: kernel, stride: 1, padding: .same(kernel / 2), out: o.baseAddress!)
                } } }
                return out
            }
            let want = run(perProduct)
            XCTAssertEqual(run(packedCtx).map(\.bitPattern), want.map(\.bitPattern), "conv \(kernel)×\(kernel), packing made")
            XCTAssertEqual(conv.storage.packs.forms, [.matrix(.left)], "the convolution weight was packed, as A")
            XCTAssertEqual(run(packedCtx).map(\.bitPattern), want.map(\.bitPattern), "conv \(kernel)×\(kernel), packing kept")
            XCTAssertFalse(want.contains { $0.isNaN })
        }
        // F(4×4, 3×3): its 36 transformed planes packed once, against U built per product.
        for ctx in [packedCtx, perProduct] { ctx.policy.useWinograd = true; ctx.policy.winograd4MinTiles = 64 }
        // Both build U 24 rows at a time, two blocks (the transform's products by the BLAS may round
        // a last bit differently for another block width, and a block under GEMMBF16.minimumWork
        // would stay in f32 per product); the packed planes are then multiplied whole.
        for ctx in [packedCtx, perProduct] { ctx.policy.winogradWeightBudget = 36 * 48 * 24 }
        let conv = Parameter(shape: [40, 48, 3, 3], bits: .f16)
        let cw = rng.array(40 * 48 * 9)
        let ch = conv.storage.raw.assumingMemoryBound(to: UInt16.self)
        for i in 0..<cw.count { ch[i] = Float16(cw[i] / 8).bitPattern }
        let (h, w) = (33, 35)
        let img = rng.array(2 * 48 * h * w), cb = rng.array(40)
        func winograd(_ ctx: ComputeContext) -> [Float] {
            var out = [Float](repeating: 0, count: 2 * 40 * h * w)
            img.withUnsafeBufferPointer { xp in cb.withUnsafeBufferPointer { bp in out.withUnsafeMutableBufferPointer { o in
                Conv2D.forwardWinograd4(ctx, x: xp.baseAddress!, n: 2, c: 48, h: h, w: w, weight: conv.matrix, bias: bp.baseAddress!,
                                        outChannels: 40, padding: .same(1), out: o.baseAddress!)
            } } }
            return out
        }
        let wantW = winograd(perProduct)
        XCTAssertEqual(winograd(packedCtx).map(\.bitPattern), wantW.map(\.bitPattern), "F(4×4), planes packed")
        XCTAssertEqual(conv.storage.packs.forms, [.winograd4], "the planes were packed")
        XCTAssertEqual(winograd(packedCtx).map(\.bitPattern), wantW.map(\.bitPattern), "F(4×4), planes kept")
        XCTAssertFalse(wantW.contains { $0.isNaN })
    }
}
