import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// Winograd F(4×4, 3×3) (`Conv2D.forwardWinograd4`) against a float64 direct convolution of the
/// same (f32 or f16-rounded) weights and inputs, on sizes that leave partial 4×4 tiles on both
/// edges, padding 1, 0 and uneven, several images, channel counts that are multiples of nothing,
/// f16 weights read as stored and widened in blocks; with every budget at its default and at its
/// smallest (many tile groups, U in blocks of a few output channels, both at once); and against
/// torch's conv2d on the fixture cases (Tests/Fixtures/conv.tensor, README section 14). The
/// fixture models' tests (UNetTests, VAETests, DiffEditTests, …) reach F(4×4) through the
/// dispatcher wherever a 3×3 convolution has 64 tiles and 24 input channels.
///
/// Tolerance: the error is measured relative to the largest |output| of each case. With
/// weights ~ N(0, 1/(9C)) and inputs ~ N(0, 1) (outputs ~ N(0, 1)), the worst measured on an
/// AVX2 AMD EPYC (printed with DIFFEDIT_PRINT_PARITY=1) is 2.0e-6 at these small channel counts
/// (4.9e-7 for im2col); on SD shapes (the numpy study in Conv2DWinograd4.swift's header) 1.2e-5
/// at 1280 channels. 2e-5 is 10× the measured worst here.
final class Conv2DWinograd4Tests: XCTestCase {
    static let relativeTolerance = 2e-5
    /// Absolute against torch's float32 and float64 results on the fixture cases, ~10× the worst
    /// measured (winograd case, K = 1440: 1.35e-5 against torch's float32 and float64, where
    /// F(2×2) is 1.8e-6 and im2col 1.3e-6 against float64).
    static let fixtureTolerance = 1.5e-4

    struct Case {
        let n, c, o, h, w: Int
        let padding: Conv2D.Padding
        var label: String { "\(n)x\(c)x\(h)x\(w) -> \(o), padding \(padding.top)\(padding.bottom)\(padding.left)\(padding.right)" }
    }

    static let cases: [Case] = [
        Case(n: 2, c: 37, o: 29, h: 13, w: 11, padding: .same(1)),
        Case(n: 1, c: 19, o: 23, h: 9, w: 14, padding: .same(0)),
        Case(n: 3, c: 8, o: 5, h: 6, w: 7, padding: .same(1)),
        Case(n: 1, c: 45, o: 3, h: 22, w: 5, padding: .same(1)),
        Case(n: 2, c: 11, o: 17, h: 3, w: 3, padding: .same(0)),
        Case(n: 1, c: 13, o: 9, h: 10, w: 9, padding: Conv2D.Padding(top: 0, bottom: 1, left: 1, right: 0)),
    ]

    /// Deterministic values in [−1, 1) (a 64-bit LCG; the reference is computed from them, not typed).
    struct Numbers {
        var state: UInt64
        mutating func next() -> Float {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: state) >> 40) / Float(1 << 23)
        }
    }

    /// out[b][oi][y][x] = bias[oi] + Σ weight[oi][ci][ky][kx] · x[b][ci][y + ky − pt][x + kx − pl], in Double.
    static func direct(_ k: Case, x: [Float], weight: [Float], bias: [Float]) -> [Double] {
        let (oh, ow) = Conv2D.outputSize(h: k.h, w: k.w, kernel: (3, 3), stride: 1, padding: k.padding)
        var out = [Double](repeating: 0, count: k.n * k.o * oh * ow)
        for b in 0..<k.n {
            for oi in 0..<k.o {
                for y in 0..<oh {
                    for xo in 0..<ow {
                        var s = Double(bias[oi])
                        for ci in 0..<k.c {
                            for ky in 0..<3 {
                                let iy = y + ky - k.padding.top
                                if iy < 0 || iy >= k.h { continue }
                                for kx in 0..<3 {
                                    let ix = xo + kx - k.padding.left
                                    if ix < 0 || ix >= k.w { continue }
                                    s += Double(weight[((oi * k.c + ci) * 3 + ky) * 3 + kx])
                                        * Double(x[((b * k.c + ci) * k.h + iy) * k.w + ix])
                                }
                            }
                        }
                        out[((b * k.o + oi) * oh + y) * ow + xo] = s
                    }
                }
            }
        }
        return out
    }

    /// F(4×4) on the case with `policy`, weights as f32 or as the f16 bits given.
    static func winograd4(_ k: Case, x: [Float], weight: [Float], f16: [UInt16]?, bias: [Float],
                          policy: KernelPolicy) -> [Float] {
        let (oh, ow) = Conv2D.outputSize(h: k.h, w: k.w, kernel: (3, 3), stride: 1, padding: k.padding)
        let ctx = ComputeContext(policy: policy)
        var out = [Float](repeating: .nan, count: k.n * k.o * oh * ow)
        x.withUnsafeBufferPointer { xp in
            bias.withUnsafeBufferPointer { bp in
                func run(_ wm: WeightMatrix) {
                    Conv2D.forwardWinograd4(ctx, x: xp.baseAddress!, n: k.n, c: k.c, h: k.h, w: k.w, weight: wm,
                                            bias: bp.baseAddress, outChannels: k.o, padding: k.padding, out: &out)
                }
                if let f16 {
                    f16.withUnsafeBytes { run(WeightMatrix(raw: $0.baseAddress!, bits: .f16)) }
                } else {
                    weight.withUnsafeBufferPointer { run(WeightMatrix(f32: $0.baseAddress!)) }
                }
            }
        }
        return out
    }

    /// Worst |ours − reference| / max |reference|.
    static func relativeError(_ got: [Float], _ reference: [Double]) -> Double {
        var worst = 0.0, scale = 0.0
        for i in reference.indices {
            let e = abs(Double(got[i]) - reference[i])
            worst = e.isNaN || worst.isNaN ? .nan : max(worst, e)
            scale = max(scale, abs(reference[i]))
        }
        return worst / max(scale, .leastNormalMagnitude)
    }

    static func policies() -> [(String, KernelPolicy)] {
        var manyGroups = KernelPolicy(); manyGroups.winogradBudget = 1
        var blocks = KernelPolicy(); blocks.winogradWeightBudget = 36 * 20 * 4
        var both = KernelPolicy(); both.winogradBudget = 36 * 80 * 5; both.winogradWeightBudget = 1
        var rowBlocks = KernelPolicy(); rowBlocks.winogradWeightBudget = 36 * 50 * 7; rowBlocks.weightBlockFloats = 9 * 50 * 2
        return [("default budgets", KernelPolicy()), ("one tile per group", manyGroups), ("U in blocks of a few rows", blocks),
                ("U one row at a time, 5 tiles per group", both), ("U in blocks, f16 widened 2 rows at a time", rowBlocks)]
    }

    func testMatchesFloat64DirectConvolution() {
        var numbers = Numbers(state: 27)
        var worst = 0.0, runs = 0
        for k in Self.cases {
            let x = (0..<(k.n * k.c * k.h * k.w)).map { _ in numbers.next() * 1.7 }
            let scale = 1 / Float(3 * k.c).squareRoot()
            let w32 = (0..<(k.o * k.c * 9)).map { _ in numbers.next() * scale * 1.7 }
            let bias = (0..<k.o).map { _ in numbers.next() * 0.1 }
            let half = w32.map { Float16($0) }
            let w16 = half.map { Float($0) }
            let reference32 = Self.direct(k, x: x, weight: w32, bias: bias)
            let reference16 = Self.direct(k, x: x, weight: w16, bias: bias)
            for (name, policy) in Self.policies() {
                for sixteen in [false, true] {
                    let got = Self.winograd4(k, x: x, weight: w32, f16: sixteen ? half.map(\.bitPattern) : nil, bias: bias,
                                             policy: policy)
                    let e = Self.relativeError(got, sixteen ? reference16 : reference32)
                    XCTAssertLessThanOrEqual(e, Self.relativeTolerance, "F(4x4) \(k.label), \(name)\(sixteen ? ", f16 weights" : "")")
                    XCTAssertFalse(e.isNaN, "F(4x4) \(k.label) left outputs unwritten")
                    worst = nanAwareMax(worst, e)
                    runs += 1
                }
            }
            // The unfolded product on the same case, for scale.
            let im2col = Conv2D.forward(Tensor(shape: [k.n, k.c, k.h, k.w], data: x), weight: w32, bias: bias, outChannels: k.o,
                                        kernel: (3, 3), padding: k.padding)
            if ProcessInfo.processInfo.environment["DIFFEDIT_PRINT_PARITY"] != nil {
                print("F(4x4) \(k.label): im2col relative error \(Self.relativeError(im2col.data, reference32))")
            }
        }
        XCTAssertEqual(runs, Self.cases.count * Self.policies().count * 2)
        print("F(4x4) against float64 direct: \(runs) runs, worst relative error \(worst)")
    }

    /// F(4×4) called directly on the three torch fixture cases (which the default dispatch
    /// never sends to it: too few tiles or input channels).
    func testMatchesTorchOnFixtures() throws {
        var worst = 0.0
        for name in ["small", "bands", "winograd"] {
            let k = try ConvPathTests.load(name)
            let (n, c, h, w) = (k.x.shape[0], k.x.shape[1], k.x.shape[2], k.x.shape[3])
            for sixteen in k.weightRecord.dtype == .f16 ? [false, true] : [false] {
                let ctx = ComputeContext()
                var out = [Float](repeating: .nan, count: k.out.shape.reduce(1, *))
                k.x.data.withUnsafeBufferPointer { xp in
                    k.bias.withUnsafeBufferPointer { bp in
                        func run(_ wm: WeightMatrix) {
                            Conv2D.forwardWinograd4(ctx, x: xp.baseAddress!, n: n, c: c, h: h, w: w, weight: wm, bias: bp.baseAddress,
                                                    outChannels: k.outChannels, padding: .same(1), out: &out)
                        }
                        if sixteen {
                            k.weightRecord.bytes.withUnsafeBytes { run(WeightMatrix(raw: $0.baseAddress!, bits: .f16)) }
                        } else {
                            k.weight.withUnsafeBufferPointer { run(WeightMatrix(f32: $0.baseAddress!)) }
                        }
                    }
                }
                let got = Tensor(shape: k.out.shape, data: out)
                let a = assertClose(got, k.out, atol: Self.fixtureTolerance, "F(4x4) conv \(name) vs torch f32")
                let b = assertClose(got.data, k.out64.floats(), atol: Self.fixtureTolerance, "F(4x4) conv \(name) vs float64")
                worst = nanAwareMax(worst, nanAwareMax(a.maxAbsError, b.maxAbsError))
            }
        }
        print("F(4x4) against torch's conv fixtures: worst abs error \(worst)")
    }

    /// The dispatcher's rule: F(4×4) from `winograd4MinTiles` tiles and `winograd4MinInChannels`
    /// input channels, at any image size, unless the policy asks for F(2×2) or no Winograd.
    func testDispatchRule() {
        func path(n: Int = 1, c: Int, o: Int, h: Int, w: Int, _ change: (inout KernelPolicy) -> Void = { _ in }) -> [String] {
            var p = KernelPolicy()
            change(&p)
            let ctx = ComputeContext(policy: p)
            ctx.profiler = Profiler()
            let x = [Float](repeating: 0.5, count: n * c * h * w), weight = [Float](repeating: 0.01, count: o * c * 9)
            var out = [Float](repeating: .nan, count: n * o * h * w)
            x.withUnsafeBufferPointer { xp in
                weight.withUnsafeBufferPointer { wp in
                    Conv2D.forward(ctx, x: xp.baseAddress!, n: n, c: c, h: h, w: w, weight: WeightMatrix(f32: wp.baseAddress!),
                                   bias: nil, outChannels: o, kernel: 3, stride: 1, padding: .same(1), out: &out)
                }
            }
            XCTAssertTrue(out.allSatisfy(\.isFinite))
            return ctx.profiler!.report().map(\.name)
        }
        // 16×16 has 16 tiles: four images reach 64.
        XCTAssertEqual(path(n: 4, c: 24, o: 3, h: 16, w: 16), ["conv winograd4 16x16 24->3"])
        XCTAssertEqual(path(n: 3, c: 24, o: 3, h: 16, w: 16), ["conv small 16x16 24->3"])
        XCTAssertEqual(path(n: 4, c: 23, o: 3, h: 16, w: 16), ["conv small 16x16 23->3"])
        XCTAssertEqual(path(n: 1, c: 24, o: 8, h: 32, w: 29), ["conv winograd4 32x29 24->8"])  // 8·8 tiles
        XCTAssertEqual(path(n: 1, c: 24, o: 8, h: 32, w: 28), ["conv small 32x28 24->8"])  // 8·7 tiles
        XCTAssertEqual(path(n: 1, c: 23, o: 160, h: 40, w: 40), ["conv bands 40x40 23->160"])
        XCTAssertEqual(path(n: 2, c: 160, o: 160, h: 16, w: 16) { $0.winogradTile = 2 }, ["conv small 16x16 160->160"])
        XCTAssertEqual(path(n: 1, c: 160, o: 160, h: 40, w: 40) { $0.winogradTile = 2 }, ["conv winograd 40x40 160->160"])
        XCTAssertEqual(path(n: 1, c: 160, o: 160, h: 40, w: 40) { $0.useWinograd = false }, ["conv bands 40x40 160->160"])
        XCTAssertEqual(path(n: 2, c: 160, o: 160, h: 16, w: 16) { $0.useWinograd = false }, ["conv small 16x16 160->160"])
    }
}
