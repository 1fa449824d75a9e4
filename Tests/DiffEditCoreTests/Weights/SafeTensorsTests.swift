import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// The safetensors reader on good files (f32/f16/bf16 values) and on hostile ones: each
/// malformed file must give a ToolError naming what is wrong, never a crash.
final class SafeTensorsTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = try temporaryDirectory(self)
    }

    /// Writes a safetensors file from a header given as raw bytes, optionally lying about its
    /// length, followed by `data`.
    func write(_ name: String, header: [UInt8], declaredLength: UInt64? = nil, data: [UInt8]) throws -> String {
        var bytes = [UInt8]()
        var n = (declaredLength ?? UInt64(header.count)).littleEndian
        withUnsafeBytes(of: &n) { bytes.append(contentsOf: $0) }
        bytes += header + data
        let url = dir.appendingPathComponent(name)
        try Data(bytes).write(to: url)
        return url.path
    }

    func write(_ name: String, json: String, data: [UInt8]) throws -> String {
        try write(name, header: Array(json.utf8), data: data)
    }

    /// Writes a well-formed safetensors file of F16 entries (name, shape, bit patterns) to `path`.
    static func writeF16(_ path: String, _ entries: [(String, [Int], [UInt16])]) throws {
        var fields: [String] = [], data = [UInt8](), offset = 0
        for (name, shape, bits) in entries {
            fields.append("\"\(name)\":{\"dtype\":\"F16\",\"shape\":\(shape),\"data_offsets\":[\(offset),\(offset + 2 * bits.count)]}")
            for b in bits { data += [UInt8(b & 0xff), UInt8(b >> 8)] }
            offset += 2 * bits.count
        }
        var header = Array(("{" + fields.joined(separator: ",") + "}").utf8)
        while header.count % 8 != 0 { header.append(0x20) }
        var bytes = [UInt8]()
        var n = UInt64(header.count).littleEndian
        withUnsafeBytes(of: &n) { bytes.append(contentsOf: $0) }
        try Data(bytes + header + data).write(to: URL(fileURLWithPath: path))
    }

    /// Asserts that opening `path` throws a ToolError whose message contains every fragment.
    func assertRejects(_ path: String, _ fragments: [String], file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try SafeTensorsFile(path: path)
            XCTFail("\(path) was accepted", file: file, line: line)
        } catch let e as ToolError {
            for f in fragments {
                XCTAssertTrue(e.message.contains(f), "message '\(e.message)' lacks '\(f)'", file: file, line: line)
            }
            XCTAssertFalse(e.message.contains("\n"), "one-line message", file: file, line: line)
        } catch {
            XCTFail("threw \(error), not a ToolError", file: file, line: line)
        }
    }

    func testReadsF32F16BF16AndMetadata() throws {
        let values: [Float] = [1.5, -2, 0.25, 65504]
        var data = values.withUnsafeBytes { Array($0) }
        for v in values { withUnsafeBytes(of: HalfFloat.floatToF16(v).littleEndian) { data += $0 } }
        for v in values { withUnsafeBytes(of: HalfFloat.floatToBF16(v).littleEndian) { data += $0 } }
        let path = try write("ok.safetensors", json: """
            {"__metadata__":{"format":"pt"},
             "a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},
             "b":{"dtype":"F16","shape":[4],"data_offsets":[16,24]},
             "c":{"dtype":"BF16","shape":[1,4],"data_offsets":[24,32]}}
            """, data: data)
        let f = try SafeTensorsFile(path: path)
        XCTAssertEqual(f.names, ["a", "b", "c"])
        XCTAssertEqual(f.metadata, ["format": "pt"])
        XCTAssertEqual(try f.floats(f.entries["a"]!), values)
        XCTAssertEqual(try f.floats(f.entries["b"]!), values)
        XCTAssertEqual(try f.floats(f.entries["c"]!), [1.5, -2, 0.25, 65536])  // bf16 rounds 65504 up
        let store = WeightStore(component: "text_encoder", file: f)
        XCTAssertEqual(try store.load("b", shape: [4]), values)
        XCTAssertThrowsError(try store.load("zzz", shape: [4])) { e in
            XCTAssertTrue("\(e)".contains("missing weight 'zzz'"), "\(e)")
        }
        XCTAssertThrowsError(try store.load("a", shape: [4])) { e in
            XCTAssertTrue("\(e)".contains("weight 'a' has shape [2, 2]"), "\(e)")
        }
    }

    func testHeaderLengthPastEndOfFile() throws {
        let path = try write("h.safetensors", header: Array("{}".utf8), declaredLength: 1_000, data: [])
        assertRejects(path, ["header length 1000", "past the end"])
        let huge = try write("h2.safetensors", header: Array("{}".utf8), declaredLength: UInt64.max, data: [])
        assertRejects(huge, ["past the end"])
    }

    func testFileShorterThanTheLengthField() throws {
        let url = dir.appendingPathComponent("short.safetensors")
        try Data([1, 2, 3]).write(to: url)
        assertRejects(url.path, ["too short"])
    }

    func testOffsetsOutOfRange() throws {
        let path = try write("o.safetensors", json: #"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                             data: [UInt8](repeating: 0, count: 8))
        assertRejects(path, ["'a'", "runs past the 8 data bytes"])
        let reversed = try write("r.safetensors", json: #"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}"#,
                                 data: [UInt8](repeating: 0, count: 8))
        assertRejects(reversed, ["'a'", "bad data_offsets"])
        let negative = try write("n.safetensors", json: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}"#,
                                 data: [UInt8](repeating: 0, count: 8))
        assertRejects(negative, ["'a'", "bad data_offsets"])
    }

    func testOverlappingOffsets() throws {
        let path = try write("ov.safetensors", json: """
            {"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}
            """, data: [UInt8](repeating: 0, count: 12))
        assertRejects(path, ["'a'", "'b'", "overlap"])
    }

    func testUnknownDType() throws {
        let path = try write("d.safetensors", json: #"{"a":{"dtype":"F8_E4M3X","shape":[2],"data_offsets":[0,2]}}"#,
                             data: [0, 0])
        assertRejects(path, ["'a'", "unknown dtype 'F8_E4M3X'"])
    }

    func testShapeTimesDTypeDisagreesWithByteCount() throws {
        let path = try write("s.safetensors", json: #"{"a":{"dtype":"F16","shape":[3,2],"data_offsets":[0,8]}}"#,
                             data: [UInt8](repeating: 0, count: 8))
        assertRejects(path, ["'a'", "holds 8 bytes", "needs 12"])
        let overflow = try write("s2.safetensors",
                                 json: #"{"a":{"dtype":"F32","shape":[1099511627775,1099511627775,1099511627775],"data_offsets":[0,8]}}"#,
                                 data: [UInt8](repeating: 0, count: 8))
        assertRejects(overflow, ["'a'", "absurd shape"])
        let fractional = try write("s3.safetensors", json: #"{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}"#,
                                   data: [UInt8](repeating: 0, count: 4))
        assertRejects(fractional, ["'a'", "bad dimension"])
    }

    func testNonJSONHeader() throws {
        let path = try write("j.safetensors", json: "{\"a\": [1, 2", data: [])
        assertRejects(path, ["not valid JSON"])
        let array = try write("j2.safetensors", json: "[1, 2]", data: [])
        assertRejects(array, ["not a JSON object"])
        let entry = try write("j3.safetensors", json: #"{"a": 3}"#, data: [])
        assertRejects(entry, ["'a'", "not an object"])
    }

    func testNonUTF8Header() throws {
        let header: [UInt8] = Array(#"{"a"#.utf8) + [0xFF, 0xFE] + Array(#"":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}"#.utf8)
        let path = try write("u.safetensors", header: header, data: [])
        assertRejects(path, ["not UTF-8"])
    }

    func testHeaderTooLarge() throws {
        // The declared length fits inside the file, so only the size limit can refuse it.
        let n = SafeTensorsFile.maxHeaderBytes + 16
        let header = Array("{}".utf8) + [UInt8](repeating: 0x20, count: n - 2)
        let path = try write("big.safetensors", header: header, data: [])
        assertRejects(path, ["past the limit"])
    }

    func testNotARegularFile() throws {
        assertRejects(dir.path, ["is a directory, not a file to read"])
        assertRejects(dir.appendingPathComponent("absent.safetensors").path, ["cannot open"])
    }
}
