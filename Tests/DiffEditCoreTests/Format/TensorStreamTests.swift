import XCTest
import Foundation
@testable import DiffEditCore
import DiffEditTestSupport

final class TensorStreamTests: XCTestCase {
    func roundTrip(_ records: [TensorRecord]) throws -> [TensorRecord] {
        let bytes = records.flatMap { TensorStream.encode($0) }
        return try decodeStream(bytes)
    }

    func testRoundTripSeveralRecordsThroughAPipe() throws {
        let a = TensorRecord(name: "latents", shape: [1, 4, 3, 5], floats: (0..<60).map { Float($0) * 0.5 - 3 },
                             metadata: ["seed": "7", "prompt": "a cat\nwith \\ slash", "a.b-c_d": ""])
        let b = TensorRecord(name: "ids", shape: [2, 77], int32s: (0..<154).map { Int32($0) })
        let c = TensorRecord(name: "scalar", shape: [], floats: [42])
        let d = TensorRecord(name: "empty", shape: [0, 3], floats: [])
        let back = try roundTrip([a, b, c, d])
        XCTAssertEqual(back, [a, b, c, d])
    }

    func testEncodingIsAlignedAndDeterministic() {
        let r = TensorRecord(name: "x", shape: [3], floats: [1, 2, 3], metadata: ["z": "1", "a": "2", "m": "3"])
        let bytes = TensorStream.encode(r)
        XCTAssertEqual(bytes.count % 64, 0)
        XCTAssertEqual(bytes, TensorStream.encode(r))
        let text = String(decoding: bytes.prefix(64), as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\nshape=3\na=2\nm=3\nz=1\n\n"), text)
        // Data begins at a multiple of 64.
        XCTAssertEqual(Array(bytes[64..<68]), Array(withUnsafeBytes(of: Float(1)) { Array($0) }))
    }

    func expectError(_ bytes: [UInt8], _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try decodeStream(bytes), file: file, line: line) { e in
            let m = (e as? ToolError)?.message ?? "\(e)"
            XCTAssertTrue(m.contains(fragment), "message '\(m)' lacks '\(fragment)'", file: file, line: line)
        }
    }

    func testHostileStreams() {
        let good = TensorStream.encode(TensorRecord(name: "x", shape: [2, 8], floats: Array(repeating: 1, count: 16)))
        expectError(Array(good.prefix(good.count - 10)), "truncated")
        expectError(Array(good.prefix(20)), "truncated")
        expectError(Array("NOT-A-TENSOR\n".utf8), "not a tensor stream")
        expectError(Array("DIFFEDIT-TENSOR 9\nname=x\n".utf8), "unsupported format version")
        expectError(Array("DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\nshape=4611686018427387904\n\n".utf8), "limit")
        expectError(Array("DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\nshape=1048576 1048576 1048576 1048576\n\n".utf8), "overflows")
        expectError(Array("DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\nshape=-1 4\n\n".utf8), "bad dimension")
        expectError(Array("DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\nshape=two\n\n".utf8), "bad dimension")
        expectError(Array("DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\nshape=1 1 1 1 1 1 1 1 1\n\n".utf8), "rank 9")
        expectError(Array("DIFFEDIT-TENSOR 1\nname=x\ndtype=q4\nshape=1\n\n".utf8), "unknown dtype")
        expectError(Array("DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\nshape=1\n".utf8), "truncated")
        expectError(Array("DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\n\n".utf8), "no shape")
        expectError(good + Array("garbage\n".utf8), "trailing garbage")
        expectError(Array("DIFFEDIT-TENSOR 1\n".utf8) + Array(repeating: UInt8(ascii: "a"), count: 2 << 20), "longer than")
    }

    func testEmptyInputIsAnEmptyStream() throws {
        XCTAssertEqual(try decodeStream([]), [])
    }

    func testCommentsAndUnknownKeysAreAccepted() throws {
        var text = "DIFFEDIT-TENSOR 1\n# made by hand\nname=h\nfuture.key=whatever\ndtype=i32\nshape=2\n\n"
        text += String(repeating: "\n", count: (64 - text.utf8.count % 64) % 64)
        var bytes = Array(text.utf8)
        bytes += [1, 0, 0, 0, 2, 0, 0, 0] + Array(repeating: 0, count: 56)
        let r = try decodeStream(bytes)
        XCTAssertEqual(r.count, 1)
        XCTAssertEqual(try r[0].int32s(), [1, 2])
        XCTAssertEqual(r[0].metadata["future.key"], "whatever")
    }
}
