import Foundation
import XCTest
@testable import DiffEditCore

/// 16-bit weights kept in memory (`WeightMatrix`, `Parameter.keepsSixteenBit`): every kernel that
/// multiplies by a weight gives the numbers of the same values held as f32, also when the
/// weight is widened in many blocks, and the loader keeps f16/bf16 checkpoints 16-bit.
final class SixteenBitWeightTests: XCTestCase {
    typealias Lcg = KernelTests.Lcg

    /// `count` values exactly representable in `bits`, as f32 and as their 16-bit patterns.
    static func values(_ count: Int, _ bits: WeightMatrix.Bits, seed: UInt64) -> (f32: [Float], raw: [UInt16]) {
        var rng = Lcg(state: seed)
        let f = rng.array(count)
        switch bits {
        case .f16:
            let h = f.map { Float16($0) }
            return (h.map { Float($0) }, h.map { $0.bitPattern })
        case .bf16:
            let r = f.map { UInt16($0.bitPattern >> 16) }
            return (r.map { Float(bitPattern: UInt32($0) << 16) }, r)
        case .f32:
            return (f, [])
        }
    }

    /// Runs `kernel` with the weight as f32 and as 16 bits widened in blocks of `blockFloats`
    /// floats; returns both outputs.
    func both(_ count: Int, _ bits: WeightMatrix.Bits, blockFloats: Int, seed: UInt64,
              _ kernel: (ComputeContext, WeightMatrix) -> [Float]) -> (f32: [Float], sixteen: [Float]) {
        let (f, raw) = Self.values(count, bits, seed: seed)
        let ctx = ComputeContext()
        let want = f.withUnsafeBufferPointer { kernel(ctx, WeightMatrix(f32: $0.baseAddress!)) }
        let saved = WeightMatrix.blockFloats
        WeightMatrix.blockFloats = blockFloats
        defer { WeightMatrix.blockFloats = saved }
        let got = raw.withUnsafeBufferPointer { kernel(ctx, WeightMatrix(raw: UnsafeRawPointer($0.baseAddress!), bits: bits)) }
        return (want, got)
    }

    func testLinearWithSixteenBitWeights() {
        let (rows, i, o) = (5, 37, 11)
        var rng = Lcg(state: 9)
        let x = rng.array(rows * i), bias = rng.array(o)
        for bits in [WeightMatrix.Bits.f16, .bf16] {
            for block in [1 << 21, 64, 5] {  // one block; several K slices; one column per slice
                for withBias in [true, false] {
                    let r = both(o * i, bits, blockFloats: block, seed: 4) { ctx, w in
                        var out = [Float](repeating: 0, count: rows * o)
                        x.withUnsafeBufferPointer { xp in
                            bias.withUnsafeBufferPointer { bp in
                                Linear.forward(ctx, x: xp.baseAddress!, rows: rows, inFeatures: i, weight: w,
                                               bias: withBias ? bp.baseAddress! : nil, outFeatures: o, out: &out)
                            }
                        }
                        return out
                    }
                    assertClose(r.sixteen, r.f32, atol: 1e-5, "linear \(bits) block \(block) bias \(withBias)")
                }
            }
        }
    }

    func testConvolutionsWithSixteenBitWeights() {
        let (n, c, h, w, o) = (2, 6, 9, 7, 5)
        var rng = Lcg(state: 21)
        let x = rng.array(n * c * h * w), bias = rng.array(o)
        let asym = Conv2D.Padding(top: 0, bottom: 1, left: 0, right: 1)
        typealias Method = (ComputeContext, UnsafePointer<Float>, WeightMatrix, UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> Void
        // (label, weight count, output count, kernel)
        let cases: [(String, Int, Int, Method)] = [
            ("1x1", o * c, n * o * h * w, { ctx, xp, wm, bp, out in
                Conv2D.forwardIm2col(ctx, x: xp, n: n, c: c, h: h, w: w, weight: wm, bias: bp, outChannels: o,
                                     kernel: (1, 1), stride: 1, padding: .same(0), out: out) }),
            ("3x3 stride 2", o * c * 9, n * o * 4 * 3, { ctx, xp, wm, bp, out in
                Conv2D.forwardIm2col(ctx, x: xp, n: n, c: c, h: h, w: w, weight: wm, bias: bp, outChannels: o,
                                     kernel: (3, 3), stride: 2, padding: asym, out: out) }),
            ("small", o * c * 9, n * o * h * w, { ctx, xp, wm, bp, out in
                Conv2D.forwardSmall(ctx, x: xp, n: n, c: c, h: h, w: w, packedWeight: wm, bias: bp, outChannels: o,
                                    kernel: (3, 3), padding: .same(1), out: out) }),
            ("bands", o * c * 9, n * o * h * w, { ctx, xp, wm, bp, out in
                Conv2D.forwardBands(ctx, x: xp, n: n, c: c, h: h, w: w, packedWeight: wm, bias: bp, outChannels: o,
                                    kernel: (3, 3), padding: .same(1), out: out) }),
            ("winograd", o * c * 9, n * o * h * w, { ctx, xp, wm, bp, out in
                Conv2D.forwardWinograd(ctx, x: xp, n: n, c: c, h: h, w: w, packedWeight: wm, bias: bp, outChannels: o,
                                       padding: .same(1), out: out) }),
        ]
        for (label, count, outCount, method) in cases {
            for bits in [WeightMatrix.Bits.f16, .bf16] {
                // One block; K slices that cut through taps; row blocks (Winograd).
                for block in [1 << 21, 4 * 9 * c + 7, 13] {
                    let r = both(count, bits, blockFloats: block, seed: 7) { ctx, wm in
                        var out = [Float](repeating: .nan, count: outCount)
                        x.withUnsafeBufferPointer { xp in
                            bias.withUnsafeBufferPointer { bp in method(ctx, xp.baseAddress!, wm, bp.baseAddress!, &out) }
                        }
                        return out
                    }
                    assertClose(r.sixteen, r.f32, atol: 1e-5, "\(label) \(bits) block \(block)")
                }
            }
        }
    }

    /// A checkpoint stored in f16: matrices stay 16-bit (the file's own bytes for plain
    /// layouts, repacked for convolutions), small vectors become f32, and every value is the
    /// stored one; with keepsSixteenBit off everything is f32 with the same values.
    func testLoaderKeepsSixteenBitMatrices() throws {
        let (o, c) = (48, 400)  // 19 200 elements: above Parameter.sixteenBitMinimum
        let conv = Self.values(o * c * 9, .f16, seed: 1), lin = Self.values(o * c, .f16, seed: 2)
        let lin2 = Self.values(o * c, .f16, seed: 3), bias = Self.values(o, .f16, seed: 4)
        let path = NSTemporaryDirectory() + "sixteen-\(getpid()).safetensors"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try SafeTensorsTests.writeF16(path, [("conv.weight", [o, c, 3, 3], conv.raw), ("lin.weight", [o, c], lin.raw),
                                             ("lin2.weight", [o, c], lin2.raw), ("lin.bias", [o], bias.raw)])
        for keep in [true, false] {
            let saved = Parameter.keepsSixteenBit
            Parameter.keepsSixteenBit = keep
            defer { Parameter.keepsSixteenBit = saved }
            let l = ParameterLoader(source: WeightStore(component: "test", file: try SafeTensorsFile(path: path)))
            let m = try l.matrix("lin.weight", [o, c])
            XCTAssertEqual(m.bits, keep ? .f16 : .f32)
            XCTAssertEqual(m.values, lin.f32)
            let b = try l.matrix("lin.bias", [o])
            XCTAssertEqual(b.bits, .f32, "vectors are converted")
            XCTAssertEqual(b.values, bias.f32)
            let s = try l.stacked(["lin.weight", "lin2.weight"], rows: [o, o], columns: c)
            XCTAssertEqual(s.bits, keep ? .f16 : .f32)
            XCTAssertEqual(s.values, lin.f32 + lin2.f32)
            let k = try l.shiftedConv("conv.weight", out: o, in: c, kernel: 3)
            XCTAssertEqual(k.bits, keep ? .f16 : .f32)
            XCTAssertEqual(k.values, Conv2D.packShifted(weight: conv.f32, outChannels: o, inChannels: c, kernel: (3, 3)))
        }
    }
}
