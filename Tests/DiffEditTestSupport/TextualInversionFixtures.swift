import Foundation
import XCTest
@testable import DiffEditCore

/// The textual-inversion fixtures (Tests/Fixtures/textual-inversion, made by
/// Tests/Reference/fixtures_textual_inversion.py with diffusers' load_textual_inversion).
public enum TextualInversionFixtures {
    public static let folder = "textual-inversion"

    /// One model's reference: its `--embedding` arguments (absolute paths), the prompts, what
    /// maybe_convert_prompt made of them, diffusers' ids [n, 77], added tokens and first id, and
    /// the text encoder's last hidden state.
    public struct Reference {
        public let arguments: [String]
        public let prompts: [String]
        public let converted: [String]
        public let ids: [Int32]
        public let count: Int
        public let tokens: [String]
        public let firstID: Int
        public let lastHidden: TensorRecord
    }

    public static func reference(_ key: String) throws -> Reference {
        let ids = try Fixtures.record("\(folder)/ref.tensor", "\(key).ids")
        func strings(_ name: String) throws -> [String] {
            let text = try XCTUnwrap(ids.metadata[name], "\(key).ids has no \(name)")
            return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String], name)
        }
        return Reference(
            arguments: try strings("embeddings_json").map { Fixtures.path("\(folder)/\($0)") },
            prompts: try strings("prompts_json"), converted: try strings("converted_json"),
            ids: try ids.int32s(), count: ids.shape[0], tokens: try strings("tokens_json"),
            firstID: try XCTUnwrap(Int(ids.metadata["first_id"] ?? "")),
            lastHidden: try Fixtures.record("\(folder)/ref.tensor", "\(key).last_hidden"))
    }

    /// The path of a committed embedding file, e.g. `file("sd1", "inkwash")`.
    public static func file(_ key: String, _ stem: String) -> String { Fixtures.path("\(folder)/\(key)/\(stem).safetensors") }
}

/// Writes a safetensors file of one or more tensors with the given values (f32 written as F32,
/// F16 or BF16 by `dtype`; "I32" writes the values as integers).
public func writeSafeTensors(_ url: URL, _ tensors: [(name: String, shape: [Int], values: [Float])], dtype: String = "F32") throws {
    var header = "{"
    var data = [UInt8]()
    for (k, t) in tensors.enumerated() {
        precondition(t.shape.reduce(1, *) == t.values.count)
        let begin = data.count
        for v in t.values {
            switch dtype {
            case "F16": withUnsafeBytes(of: Float16(v).bitPattern.littleEndian) { data += $0 }
            case "BF16": withUnsafeBytes(of: UInt16(v.bitPattern >> 16).littleEndian) { data += $0 }
            case "I32": withUnsafeBytes(of: Int32(v).littleEndian) { data += $0 }
            default: withUnsafeBytes(of: v.bitPattern.littleEndian) { data += $0 }
            }
        }
        let name = t.name.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
        header += (k > 0 ? "," : "") + "\"\(name)\":{\"dtype\":\"\(dtype)\",\"shape\":\(t.shape),\"data_offsets\":[\(begin),\(data.count)]}"
    }
    header += "}"
    var out = [UInt8]()
    withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { out.append(contentsOf: $0) }
    out += Array(header.utf8) + data
    try Data(out).write(to: url)
}
