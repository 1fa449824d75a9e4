import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// TorchGenerator against torch.Generator("cpu").manual_seed(s) + torch.randn / randint
/// (Tests/Fixtures/rng.tensor), bit for bit: tolerance 0, every float's bit pattern must match.
final class RandomTests: XCTestCase {
    static let seeds: [UInt64] = [0, 1, 42, (1 << 32) + 5]
    static let shapes: [[Int]] = [[1], [2], [3], [15], [16], [17], [31], [32], [33], [100], [256], [1, 4, 8, 8], [10, 4, 8, 6]]

    func name(_ shape: [Int]) -> String { shape.map(String.init).joined(separator: "x") }

    func assertBitEqual(_ got: [Float], _ want: TensorRecord, _ label: String,
                        file: StaticString = #filePath, line: UInt = #line) {
        let w = want.floats()
        XCTAssertEqual(got.count, w.count, "\(label): count", file: file, line: line)
        guard got.count == w.count else { return }
        if let i = (0..<got.count).first(where: { got[$0].bitPattern != w[$0].bitPattern }) {
            XCTFail("\(label): element \(i) is \(got[i]), torch gives \(w[i])", file: file, line: line)
        }
    }

    func testSingleDrawsMatchTorch() throws {
        let recs = try Fixtures.records("rng.tensor")
        var checked = 0
        for seed in Self.seeds {
            for shape in Self.shapes {
                let key = "rng.randn.s\(seed).\(name(shape))"
                guard let want = recs[key] else { XCTFail("fixture has no \(key)"); continue }
                let got = TorchGenerator(seed: seed).randn(shape: shape)
                XCTAssertEqual(got.shape, want.shape, key)
                assertBitEqual(got.data, want, key)
                checked += 1
            }
        }
        XCTAssertEqual(checked, 52)
    }

    /// Two draws from one generator continue the stream exactly.
    func testConsecutiveDrawsMatchTorch() throws {
        let recs = try Fixtures.records("rng.tensor")
        for seed: UInt64 in [0, 42] {
            for shape in [[1, 4, 8, 8], [10, 4, 8, 8], [10, 4, 8, 6], [17]] {
                let g = TorchGenerator(seed: seed)
                for tag in ["first", "second"] {
                    let key = "rng.randn2.s\(seed).\(name(shape)).\(tag)"
                    guard let want = recs[key] else { XCTFail("fixture has no \(key)"); continue }
                    assertBitEqual(g.randn(shape: shape).data, want, key)
                }
            }
        }
    }

    /// Small (scalar, cached second sample) and large (vectorised) draws interleaved.
    func testMixedSizesMatchTorch() throws {
        let recs = try Fixtures.records("rng.tensor")
        let g = TorchGenerator(seed: 0)
        for (i, n) in [5, 16, 3, 40, 1].enumerated() {
            let key = "rng.mixed.s0.\(i)"
            guard let want = recs[key] else { XCTFail("fixture has no \(key)"); continue }
            assertBitEqual(g.randn(count: n), want, key)
        }
    }

    func testFloat64DrawsMatchTorch() throws {
        let recs = try Fixtures.records("rng.tensor")
        for seed: UInt64 in [0, 42] {
            for n in [1, 15, 16, 17, 33, 100] {
                let key = "rng.randn.f64bits.s\(seed).\(n)"
                guard let rec = recs[key], rec.dtype == .i64 else { XCTFail("fixture has no i64 \(key)"); continue }
                let want: [UInt64] = rec.bytes.withUnsafeBytes { raw in
                    (0..<n).map { raw.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self) }
                }
                let got = TorchGenerator(seed: seed).randnDouble(count: n).map(\.bitPattern)
                XCTAssertEqual(got, want, key)
            }
        }
    }

    func testRandintMatchesTorch() throws {
        let recs = try Fixtures.records("rng.tensor")
        for seed: UInt64 in [0, 42] {
            func ints(_ key: String) -> [Int64] {
                guard let r = recs[key] else { XCTFail("fixture has no \(key)"); return [] }
                return r.bytes.withUnsafeBytes { raw in (0..<r.count).map { raw.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self) } }
            }
            XCTAssertEqual(TorchGenerator(seed: seed).randint(high: 4, count: 64), ints("rng.randint.s\(seed).high4"))
            XCTAssertEqual(TorchGenerator(seed: seed).randint(high: 3, count: 64), ints("rng.randint.s\(seed).high3"))
            let g = TorchGenerator(seed: seed)
            assertBitEqual(g.randn(shape: [1, 4, 8, 8]).data, try Fixtures.record("rng.tensor", "rng.randint.s\(seed).after_randn_1x4x8x8.randn"), "randn before randint")
            // One randint(4, (1,)) per call, as the pipeline's regulariser draws them.
            var drawn: [Int64] = []
            for _ in 0..<64 { drawn += g.randint(high: 4, count: 1) }
            XCTAssertEqual(drawn, ints("rng.randint.s\(seed).after_randn_1x4x8x8"))
        }
    }

    func testShapeAndEmptyDraw() {
        let t = TorchGenerator(seed: 7).randn(shape: [2, 4, 3, 5])
        XCTAssertEqual(t.shape, [2, 4, 3, 5])
        XCTAssertEqual(TorchGenerator(seed: 7).randn(count: 0), [])
        XCTAssertEqual(TorchGenerator(seed: 7).randn(shape: [2, 4, 3, 5]).data, t.data)
        XCTAssertNotEqual(TorchGenerator(seed: 8).randn(count: 20), TorchGenerator(seed: 7).randn(count: 20))
    }
}
