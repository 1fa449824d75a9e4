import XCTest
@testable import DiffEditCore

/// TorchGenerator against torch.Generator("cpu").manual_seed(s) + torch.randn, bit for bit
/// (tolerance 0: every float's bit pattern must be equal).
final class RandomTests: XCTestCase {
    static let seeds: [UInt64] = [0, 1, 42, (1 << 32) + 5]
    static let sizes = [1, 2, 3, 15, 16, 17, 31, 32, 33, 100, 256, 4 * 8 * 8, 10 * 4 * 8 * 6]

    func records() throws -> [String: TensorRecord] {
        let scratch = "/tmp/unetref/rng.tensor"
        if FileManager.default.fileExists(atPath: scratch) {
            let all = try TensorStream.readAll(path: scratch)
            return Dictionary(all.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        }
        return try Fixtures.records("rng.tensor")
    }

    func assertBitEqual(_ got: [Float], _ want: [Float], _ label: String,
                        file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, want.count, "\(label): count", file: file, line: line)
        guard got.count == want.count else { return }
        if let i = (0..<got.count).first(where: { got[$0].bitPattern != want[$0].bitPattern }) {
            XCTFail("\(label): element \(i) is \(got[i]), torch gives \(want[i])", file: file, line: line)
        }
    }

    func testSingleDrawsMatchTorch() throws {
        let recs = try records()
        for seed in Self.seeds {
            for n in Self.sizes {
                let name = "seed\(seed)/n\(n)"
                guard let want = recs[name] else { XCTFail("no record \(name)"); continue }
                assertBitEqual(TorchGenerator(seed: seed).randn(count: n), want.floats(), name)
            }
        }
    }

    /// Consecutive randn calls continue the stream, including the cached second sample of the
    /// scalar path (sizes < 16) surviving across a vectorised draw.
    func testConsecutiveDrawsMatchTorch() throws {
        let recs = try records()
        let sequence = [3, 1, 20, 5, 1, 1, 17, 2, 16]
        for seed in Self.seeds {
            let g = TorchGenerator(seed: seed)
            for (i, n) in sequence.enumerated() {
                let name = "seed\(seed)/seq\(i)/n\(n)"
                guard let want = recs[name] else { XCTFail("no record \(name)"); continue }
                assertBitEqual(g.randn(count: n), want.floats(), name)
            }
        }
    }

    func testShapeAndEmptyDraw() {
        let t = TorchGenerator(seed: 7).randn(shape: [2, 4, 3, 5])
        XCTAssertEqual(t.shape, [2, 4, 3, 5])
        XCTAssertEqual(t.count, 120)
        XCTAssertEqual(TorchGenerator(seed: 7).randn(count: 0), [])
        // Same seed, same draw.
        XCTAssertEqual(TorchGenerator(seed: 7).randn(shape: [2, 4, 3, 5]).data, t.data)
    }
}
