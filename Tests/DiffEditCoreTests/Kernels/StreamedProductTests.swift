import CKernels
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// The streamed product (gemm_stream.c, `WeightMatrix.stream`): every level this CPU runs, the
/// three weight formats, fused segments, odd sizes that leave partial tiles and vector tails,
/// K split into several chunks, beta 0 and 1, and the layouts of its callers — against the
/// same product in double precision; and the layers that use it against the BLAS path.
final class StreamedProductTests: XCTestCase {
    func random(_ n: Int, seed: UInt64) -> [Float] { TorchGenerator(seed: seed).randn(count: n) }

    /// f16 and bf16 bits of values that both formats hold exactly (multiples of 1/64 in ±4).
    func weights(_ n: Int, seed: UInt64) -> (values: [Float], f16: [UInt16], bf16: [UInt16]) {
        let v = random(n, seed: seed).map { (max(-4, min(4, $0)) * 64).rounded() / 64 }
        return (v, v.map { Float16($0).bitPattern }, v.map { UInt16($0.bitPattern >> 16) })
    }

    func testStreamedProductMatchesDouble() {
        // (m, n, k): partial row and column tiles, K below one vector, K with a tail, K over many chunks.
        for (m, n, k) in [(37, 5, 7), (50, 13, 100), (64, 128, 1290), (33, 1, 16), (70, 40, 3000)] {
            let (w, w16, wb16) = weights(m * k, seed: UInt64(m * 7 + n))
            let x = random(n * k, seed: 3)
            let c0 = random(m * n, seed: 4)
            var want = [Double](repeating: 0, count: m * n)
            for i in 0..<m { for j in 0..<n {
                var s = 0.0
                for l in 0..<k { s += Double(w[i * k + l]) * Double(x[j * k + l]) }
                want[i * n + j] = s
            } }
            let tol = 2e-6 * Double(k).squareRoot() * 8
            for level in 0...Int(diffedit_stream_level()) {
                for (bits, raw) in [(Int32(0), w.withUnsafeBytes { Array($0) }), (1, w16.withUnsafeBytes { Array($0) }),
                                    (2, wb16.withUnsafeBytes { Array($0) })] {
                    for beta in [Float(0), 1] {
                        // C(i, j) at out[j·m + i] (Linear's layout) with X(j, l) = x[j·k + l].
                        var out = [Float](repeating: 0, count: m * n)
                        for i in 0..<m { for j in 0..<n { out[j * m + i] = c0[i * n + j] } }
                        var scratch = [Float](repeating: .nan, count: diffedit_gemm_stream_scratch(n, k))
                        raw.withUnsafeBytes { wp in
                            diffedit_gemm_stream(Int32(level), m, n, k, wp.baseAddress!, k, bits, x, k, 1, beta, &out, 1, m, &scratch)
                        }
                        var got = [Float](repeating: 0, count: m * n)
                        for i in 0..<m { for j in 0..<n { got[i * n + j] = out[j * m + i] } }
                        let expect = (0..<(m * n)).map { want[$0] + Double(beta) * Double(c0[$0]) }
                        assertClose(got, expect, atol: tol, "m \(m) n \(n) k \(k) level \(level) bits \(bits) beta \(beta)")
                    }
                }
            }
        }
    }

    /// Linear (all three forms) and the small-image convolution with the streamed product against
    /// the same layers on the BLAS (streamColumns 0), on f16 weights stored in two segments.
    func testLayersMatchTheBLASPath() {
        let (b, hw, cin, cout) = (2, 6, 48, 40)
        let (w, w16, _) = weights(cout * cin, seed: 9)
        _ = w
        let bias = random(cout, seed: 10), x = random(b * hw * cin, seed: 11), residual = random(b * cout * hw, seed: 12)
        func run(_ stream: Bool) -> [[Float]] {
            let ctx = ComputeContext()
            ctx.policy.streamColumns = stream ? 1 << 20 : 0
            var outs = [[Float]]()
            w16.withUnsafeBytes { raw in
                let half = cout / 2 * cin * 2
                let weight = WeightMatrix(raw: raw.baseAddress!, bits: .f16,
                                          segments: .init(bases: [raw.baseAddress!, raw.baseAddress! + half], rows: [cout / 2, cout - cout / 2]))
                x.withUnsafeBufferPointer { xp in bias.withUnsafeBufferPointer { bp in residual.withUnsafeBufferPointer { rp in
                    var o1 = [Float](repeating: 0, count: b * hw * cout)
                    o1.withUnsafeMutableBufferPointer {
                        Linear.forward(ctx, x: xp.baseAddress!, rows: b * hw, inFeatures: cin, weight: weight, bias: bp.baseAddress!,
                                       outFeatures: cout, out: $0.baseAddress!)
                    }
                    var o2 = [Float](repeating: 0, count: b * hw * cout)
                    o2.withUnsafeMutableBufferPointer {
                        Linear.fromChannels(ctx, x: xp.baseAddress!, images: b, pixels: hw, inFeatures: cin, weight: weight,
                                            bias: bp.baseAddress!, outFeatures: cout, out: $0.baseAddress!)
                    }
                    var o3 = [Float](repeating: 0, count: b * cout * hw)
                    o3.withUnsafeMutableBufferPointer {
                        Linear.toChannels(ctx, tokens: xp.baseAddress!, images: b, pixels: hw, inFeatures: cin, weight: weight,
                                          bias: bp.baseAddress!, outFeatures: cout, residual: rp.baseAddress!, out: $0.baseAddress!)
                    }
                    outs = [o1, o2, o3]
                } } }
            }
            // A 3×3 convolution of 2 × 3×2 images on the small-image path.
            let cw = random(cout * 8 * 9, seed: 13)
            let conv = Conv2D.forwardSmall(Tensor(shape: [b, 8, 3, 2], data: random(b * 8 * 6, seed: 14)), weight: cw, bias: bias,
                                           outChannels: cout, kernel: (3, 3), padding: .same(1), context: ctx)
            return outs + [conv.data]
        }
        let streamed = run(true), blas = run(false)
        for (i, name) in ["forward", "fromChannels", "toChannels", "conv small"].enumerated() {
            assertClose(streamed[i], blas[i].map(Double.init), atol: 2e-5, "\(name): streamed against the BLAS")
        }
    }
}
