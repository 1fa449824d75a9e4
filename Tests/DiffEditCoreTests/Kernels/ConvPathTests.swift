import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// Each of Conv2D's methods — whole small images (`forwardSmall`), bands of rows
/// (`forwardIm2col`), Winograd F(2×2, 3×3) (`forwardWinograd`) — against torch's conv2d for the
/// same weights and inputs (Tests/Fixtures/conv.tensor, Tests/Fixtures/README.md section 14),
/// reached both through the dispatcher `Conv2D.forward` (the path it took is read off the
/// context's profiler) and directly. The fixture models never reach Winograd (it needs
/// 2·C·O ≥ 160·(C + O), i.e. 160 channels, on images above `smallImagePixels`); here a
/// 160 → 160-channel case takes it by a policy that lowers `smallImagePixels`, with the f16
/// weights as stored and widened, in one tile group and in many, in one weight block and in
/// blocks of a few rows. Odd image sizes leave partial 2×2 tiles on both edges.
///
/// Tolerance, per case, absolute against torch's float32 result and against the float64 one
/// (`output.f64`): about 10× the worst error measured on an AVX2-only AMD EPYC against torch's
/// float32 (printed with DIFFEDIT_PRINT_PARITY=1): small 7.2e-7, bands 9.5e-7 (K = 9·C = 45 and
/// 36 terms per sum), Winograd case 5.7e-6 (K = 1440; against float64 ours is 1.8e-6, torch's
/// own float32 result 5.2e-6).
final class ConvPathTests: XCTestCase {
    static let tolerance: [String: Double] = ["small": 7e-6, "bands": 1e-5, "winograd": 6e-5]

    struct Case {
        let name: String
        let x: Tensor
        let weightRecord: TensorRecord
        let weight: [Float]
        let bias: [Float]
        let out: TensorRecord
        let out64: TensorRecord
        var outChannels: Int { weightRecord.shape[0] }
    }

    static func load(_ name: String) throws -> Case {
        let recs = try Fixtures.records("conv.tensor")
        func r(_ suffix: String) throws -> TensorRecord {
            guard let rec = recs["conv.\(name).\(suffix)"] else {
                XCTFail("conv.tensor has no record conv.\(name).\(suffix)")
                throw ToolError("missing fixture record conv.\(name).\(suffix)")
            }
            return rec
        }
        let w = try r("weight")
        return Case(name: name, x: try r("input").tensor(), weightRecord: w, weight: w.floats(), bias: try r("bias").floats(),
                    out: try r("output"), out64: try r("output.f64"))
    }

    /// Runs `method` on the case with `weight` (f32 floats, or the record's own bits) and a fresh
    /// context with `policy` and a profiler; returns the output and the kernel labels recorded.
    func run(_ k: Case, policy: KernelPolicy, sixteenBit: Bool = false,
             _ method: (ComputeContext, UnsafePointer<Float>, WeightMatrix, UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> Void)
        -> (out: Tensor, paths: [String]) {
        let ctx = ComputeContext(policy: policy)
        ctx.profiler = Profiler()
        let shape = k.out.shape
        var out = [Float](repeating: .nan, count: shape.reduce(1, *))
        k.x.data.withUnsafeBufferPointer { xp in
            k.bias.withUnsafeBufferPointer { bp in
                if sixteenBit {
                    precondition(k.weightRecord.dtype == .f16)
                    k.weightRecord.bytes.withUnsafeBytes { wb in
                        method(ctx, xp.baseAddress!, WeightMatrix(raw: wb.baseAddress!, bits: .f16), bp.baseAddress!, &out)
                    }
                } else {
                    k.weight.withUnsafeBufferPointer { wp in
                        method(ctx, xp.baseAddress!, WeightMatrix(f32: wp.baseAddress!), bp.baseAddress!, &out)
                    }
                }
            }
        }
        return (Tensor(shape: shape, data: out), ctx.profiler!.report().map(\.name))
    }

    /// The dispatcher on the case.
    func dispatch(_ k: Case, _ policy: KernelPolicy, sixteenBit: Bool = false) -> (out: Tensor, paths: [String]) {
        let (n, c, h, w) = (k.x.shape[0], k.x.shape[1], k.x.shape[2], k.x.shape[3])
        return run(k, policy: policy, sixteenBit: sixteenBit) { ctx, x, wm, b, out in
            Conv2D.forward(ctx, x: x, n: n, c: c, h: h, w: w, weight: wm, bias: b, outChannels: k.outChannels, kernel: 3,
                           stride: 1, padding: .same(1), out: out)
        }
    }

    @discardableResult
    func check(_ got: Tensor, _ k: Case, _ label: String, file: StaticString = #filePath, line: UInt = #line) -> Double {
        let atol = Self.tolerance[k.name] ?? 0
        XCTAssertGreaterThan(atol, 0, "no tolerance for conv case \(k.name)", file: file, line: line)
        let c = assertClose(got, k.out, atol: atol, "conv \(k.name) \(label) vs torch f32", file: file, line: line)
        let c64 = assertClose(got.data, k.out64.floats(), atol: atol, "conv \(k.name) \(label) vs float64", file: file, line: line)
        return nanAwareMax(c.maxAbsError, c64.maxAbsError)
    }

    func assertPath(_ paths: [String], _ prefix: String, _ label: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(paths.count, 1, "\(label): one convolution, one kernel call: \(paths)", file: file, line: line)
        XCTAssertTrue(paths.allSatisfy { $0.hasPrefix(prefix) }, "\(label): took \(paths), expected \(prefix)", file: file, line: line)
    }

    func policy(_ change: (inout KernelPolicy) -> Void) -> KernelPolicy {
        var p = KernelPolicy()
        change(&p)
        return p
    }

    /// The three methods on each case, through the dispatcher (path asserted) and directly.
    func testEveryPathMatchesTorch() throws {
        var worst = 0.0, runs = 0
        let small = try Self.load("small"), bands = try Self.load("bands"), wino = try Self.load("winograd")
        XCTAssertEqual(wino.weightRecord.dtype, .f16, "the Winograd case's weights are stored as f16")
        XCTAssertEqual(small.x.shape, [2, 5, 9, 7])
        XCTAssertEqual(bands.x.shape, [1, 4, 37, 33])
        XCTAssertEqual(wino.x.shape, [2, 160, 9, 7])
        // (case, label, policy, 16-bit weights, the path the dispatcher must take)
        let dispatched: [(Case, String, KernelPolicy, Bool, String)] = [
            (small, "default policy", KernelPolicy(), false, "conv small"),
            (small, "small in one image per group", policy { $0.smallColumnBudget = 1 }, false, "conv small"),
            (small, "no small path", policy { $0.smallImagePixels = 0 }, false, "conv bands"),
            (small, "one-row bands", policy { $0.smallImagePixels = 0; $0.columnBudget = 1 }, false, "conv bands"),
            (bands, "default policy", KernelPolicy(), false, "conv bands"),
            (bands, "bands of 3 rows", policy { $0.columnBudget = 4 * 9 * 33 * 3 }, false, "conv bands"),
            (bands, "small path raised", policy { $0.smallImagePixels = 37 * 33 }, false, "conv small"),
            (wino, "default policy (63 pixels)", KernelPolicy(), false, "conv small"),
            (wino, "Winograd", policy { $0.smallImagePixels = 0 }, false, "conv winograd"),
            (wino, "Winograd, f16 weights", policy { $0.smallImagePixels = 0 }, true, "conv winograd"),
            (wino, "Winograd, f16 weights in blocks of 3 rows", policy { $0.smallImagePixels = 0; $0.weightBlockFloats = 3 * 9 * 160 },
             true, "conv winograd"),
            (wino, "Winograd, 7 tiles per group", policy { $0.smallImagePixels = 0; $0.winogradBudget = 16 * 320 * 7 }, false,
             "conv winograd"),
            (wino, "Winograd, one tile per group, f16 in blocks of one row",
             policy { $0.smallImagePixels = 0; $0.winogradBudget = 1; $0.weightBlockFloats = 1 }, true, "conv winograd"),
            (wino, "Winograd off", policy { $0.smallImagePixels = 0; $0.useWinograd = false }, false, "conv bands"),
            (wino, "bands, f16 weights in K slices", policy { $0.smallImagePixels = 0; $0.useWinograd = false; $0.weightBlockFloats = 160 * 100 },
             true, "conv bands"),
            (wino, "small, f16 weights", KernelPolicy(), true, "conv small"),
        ]
        for (k, label, p, sixteen, path) in dispatched {
            let (got, paths) = dispatch(k, p, sixteenBit: sixteen)
            assertPath(paths, path, "\(k.name) \(label)")
            worst = nanAwareMax(worst, check(got, k, "\(label) (\(path))"))
            runs += 1
        }
        // Each method called directly on every case (Winograd on few channels too).
        for k in [small, bands, wino] {
            let (n, c, h, w) = (k.x.shape[0], k.x.shape[1], k.x.shape[2], k.x.shape[3])
            let o = k.outChannels
            let direct: [(String, (ComputeContext, UnsafePointer<Float>, WeightMatrix, UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> Void)] = [
                ("forwardSmall", { ctx, x, wm, b, out in
                    Conv2D.forwardSmall(ctx, x: x, n: n, c: c, h: h, w: w, weight: wm, bias: b, outChannels: o, kernel: (3, 3),
                                        padding: .same(1), out: out) }),
                ("forwardIm2col", { ctx, x, wm, b, out in
                    Conv2D.forwardIm2col(ctx, x: x, n: n, c: c, h: h, w: w, weight: wm, bias: b, outChannels: o, kernel: (3, 3),
                                         stride: 1, padding: .same(1), out: out) }),
                ("forwardWinograd", { ctx, x, wm, b, out in
                    Conv2D.forwardWinograd(ctx, x: x, n: n, c: c, h: h, w: w, weight: wm, bias: b, outChannels: o,
                                           padding: .same(1), out: out) }),
            ]
            for (label, method) in direct {
                for p in [KernelPolicy(), policy { $0.winogradBudget = 1; $0.columnBudget = 1; $0.smallColumnBudget = 1 }] {
                    let (got, _) = run(k, policy: p, method)
                    worst = nanAwareMax(worst, check(got, k, "\(label)\(p == KernelPolicy() ? "" : " (smallest budgets)")"))
                    runs += 1
                }
            }
        }
        XCTAssertEqual(runs, dispatched.count + 3 * 3 * 2)
        print("conv paths against torch: \(runs) runs, worst abs error \(worst)")
    }

    /// Strided convolutions of small images (SD's downsamplers: 3×3 stride 2, padding 1 in the
    /// UNet, (0, 1, 0, 1) in the VAE encoder) take whole small images too: the same numbers as
    /// unfolded bands of rows and a float64 direct convolution, with weights in f32 and f16, on
    /// batches with odd sizes.
    func testStridedSmallImagesMatchBands() {
        var rng = KernelTests.Lcg(state: 41)
        for (n, c, o, h, w, pad) in [(2, 24, 20, 9, 7, Conv2D.Padding.same(1)), (3, 16, 8, 8, 8, Conv2D.Padding(top: 0, bottom: 1, left: 0, right: 1)),
                                     (1, 5, 70, 5, 6, Conv2D.Padding.same(1))] {
            let x = rng.array(n * c * h * w), wf = rng.array(o * c * 9), bias = rng.array(o)
            let half = Parameter(shape: [o, c, 3, 3], bits: .f16)
            let hp = half.storage.raw.assumingMemoryBound(to: UInt16.self)
            for i in 0..<wf.count { hp[i] = Float16(wf[i]).bitPattern }
            let (oh, ow) = Conv2D.outputSize(h: h, w: w, kernel: (3, 3), stride: 2, padding: pad)
            for sixteen in [false, true] {
                let used = sixteen ? wf.map { Float(Float16($0)) } : wf
                let want = KernelTests.naiveConv(Tensor(shape: [n, c, h, w], data: x), weight: used, bias: bias, outC: o,
                                                 k: (3, 3), stride: 2, pad: pad).data
                var outs: [[Float]] = []
                for small in [true, false] {
                    var p = KernelPolicy()
                    if !small { p.smallImagePixels = 0 }
                    let ctx = ComputeContext(threads: 2, policy: p)
                    ctx.profiler = Profiler()
                    var out = [Float](repeating: .nan, count: n * o * oh * ow)
                    x.withUnsafeBufferPointer { xp in wf.withUnsafeBufferPointer { wp in bias.withUnsafeBufferPointer { bp in
                        Conv2D.forward(ctx, x: xp.baseAddress!, n: n, c: c, h: h, w: w,
                                       weight: sixteen ? half.matrix : WeightMatrix(f32: wp.baseAddress!), bias: bp.baseAddress!,
                                       outChannels: o, kernel: 3, stride: 2, padding: pad, out: &out)
                    } } }
                    let path = ctx.profiler!.report().map(\.name)
                    XCTAssertEqual(path, [small ? "conv small 3x3/2 \(h)x\(w) \(c)->\(o)" : "conv im2col 3x3/2 \(h)x\(w) \(c)->\(o)"])
                    outs.append(out)
                }
                for (out, path) in zip(outs, ["small", "bands"]) {
                    XCTAssertEqual(out.count, want.count)
                    let worst = zip(out, want).map { abs($0 - $1) }.max()!
                    XCTAssertLessThan(worst, 2e-5, "stride 2 \(path) \(n)×\(c)→\(o) \(h)×\(w) f16 \(sixteen)")
                }
            }
        }
    }

    /// Which method the dispatcher picks, at the edges of the policy's rules: whole small images
    /// up to `smallImagePixels` output pixels (1024 = 32×32), Winograd for 3×3 stride-1 only when
    /// 2·C·O ≥ 160·(C + O) (160 → 160 yes, 159 → 159 or 160 → 80 no) and `useWinograd`; 1×1 and
    /// strided convolutions always im2col.
    func testDispatchRuleEdges() {
        func path(c: Int, o: Int, h: Int, w: Int, kernel: Int = 3, stride: Int = 1, _ change: (inout KernelPolicy) -> Void = { _ in }) -> [String] {
            var p = KernelPolicy()
            change(&p)
            let ctx = ComputeContext(policy: p)
            ctx.profiler = Profiler()
            let x = [Float](repeating: 0.5, count: c * h * w), weight = [Float](repeating: 0.01, count: o * c * kernel * kernel)
            let pad = kernel == 3 ? 1 : 0
            let (oh, ow) = Conv2D.outputSize(h: h, w: w, kernel: (kernel, kernel), stride: stride, padding: .same(pad))
            var out = [Float](repeating: .nan, count: o * oh * ow)
            x.withUnsafeBufferPointer { xp in
                weight.withUnsafeBufferPointer { wp in
                    Conv2D.forward(ctx, x: xp.baseAddress!, n: 1, c: c, h: h, w: w, weight: WeightMatrix(f32: wp.baseAddress!), bias: nil,
                                   outChannels: o, kernel: kernel, stride: stride, padding: .same(pad), out: &out)
                }
            }
            // Every output is the same sum of weights × 0.5 inside the image: at least finite.
            XCTAssertTrue(out.allSatisfy(\.isFinite))
            return ctx.profiler!.report().map(\.name)
        }
        XCTAssertEqual(path(c: 2, o: 3, h: 32, w: 32), ["conv small 32x32 2->3"])
        XCTAssertEqual(path(c: 2, o: 3, h: 32, w: 33), ["conv bands 32x33 2->3"])
        XCTAssertEqual(path(c: 160, o: 160, h: 4, w: 5) { $0.smallImagePixels = 0 }, ["conv winograd 4x5 160->160"])
        XCTAssertEqual(path(c: 159, o: 159, h: 4, w: 5) { $0.smallImagePixels = 0 }, ["conv bands 4x5 159->159"])
        XCTAssertEqual(path(c: 160, o: 80, h: 4, w: 5) { $0.smallImagePixels = 0 }, ["conv bands 4x5 160->80"])
        XCTAssertEqual(path(c: 240, o: 120, h: 4, w: 5) { $0.smallImagePixels = 0 }, ["conv winograd 4x5 240->120"])
        XCTAssertEqual(path(c: 160, o: 160, h: 4, w: 5) { $0.smallImagePixels = 0; $0.useWinograd = false }, ["conv bands 4x5 160->160"])
        XCTAssertEqual(path(c: 160, o: 160, h: 4, w: 5), ["conv small 4x5 160->160"])
        XCTAssertEqual(path(c: 160, o: 160, h: 8, w: 8, stride: 2) { $0.smallImagePixels = 0 }, ["conv im2col 3x3/2 8x8 160->160"])
        XCTAssertEqual(path(c: 160, o: 160, h: 8, w: 8, kernel: 1) { $0.smallImagePixels = 0 }, ["conv 1x1 8x8 160->160"])
        XCTAssertEqual(path(c: 4, o: 4, h: 8, w: 8, kernel: 1), ["conv 1x1 8x8 4->4"])
    }
}
