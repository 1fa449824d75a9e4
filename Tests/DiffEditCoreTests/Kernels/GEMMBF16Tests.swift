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
}
