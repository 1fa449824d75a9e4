import DiffEditCore
import Foundation
import XCTest

/// Helpers for the Reliability*Tests: hostile inputs built in memory, and the one check every
/// refusal must pass.
public enum Hostile {
    public static var sd1: String { Fixtures.path("sd1") }
    public static var sd2: String { Fixtures.path("sd2") }

    /// The bytes of a stream of records.
    public static func stream(_ records: [TensorRecord]) -> [UInt8] { records.flatMap(TensorStream.encode) }

    public static func f32(_ name: String, _ shape: [Int], fill: Float = 0.1, metadata: [String: String] = [:]) -> TensorRecord {
        TensorRecord(name: name, shape: shape, floats: [Float](repeating: fill, count: shape.reduce(1, *)), metadata: metadata)
    }

    /// A raw PPM of the given size (noise-free grey ramp).
    public static func ppm(width: Int, height: Int) -> [UInt8] {
        var out = Array("P6\n\(width) \(height)\n255\n".utf8)
        for i in 0..<(width * height * 3) { out.append(UInt8(truncatingIfNeeded: i * 7)) }
        return out
    }

    /// vae-encode's posterior of the fixture cat (made once per test process).
    nonisolated(unsafe) private static var cache: [String: [UInt8]] = [:]
    public static func posterior(model: String = sd1) throws -> [UInt8] {
        if let c = cache["post" + model] { return c }
        let r = try runTool("vae-encode", ["--model", model, Fixtures.path("sd1/cat.ppm")])
        guard r.status == 0 else { throw ToolError("vae-encode failed: \(r.err)") }
        cache["post" + model] = r.out
        return r.out
    }

    /// Embeddings of one prompt from tokenize | encode-text with `model`, written to `dir`.
    public static func embeddingsFile(_ dir: URL, model: String = sd1, prompt: String = "a cat") throws -> String {
        let key = "emb" + model + prompt
        if cache[key] == nil {
            let r = try sh("tokenize --model '\(model)' '\(prompt)' | encode-text --model '\(model)'")
            guard r.status == 0 else { throw ToolError("encode-text failed: \(r.err)") }
            cache[key] = r.out
        }
        let f = dir.appendingPathComponent("emb-\(UUID().uuidString).tensor")
        try Data(cache[key]!).write(to: f)
        return f.path
    }

    public static func write(_ bytes: [UInt8], _ dir: URL, _ name: String) throws -> String {
        let f = dir.appendingPathComponent(name)
        try Data(bytes).write(to: f)
        return f.path
    }

    /// A copy of a fixture model in `dir` whose files the test may break.
    public static func modelCopy(_ dir: URL, from: String = sd1) throws -> URL {
        let m = dir.appendingPathComponent("model-\(UUID().uuidString)")
        try FileManager.default.copyItem(atPath: from, toPath: m.path)
        return m
    }

    /// Rewrites a JSON config with `edit`.
    public static func editConfig(_ file: URL, _ edit: (inout [String: Any]) -> Void) throws {
        var obj = try JSONSerialization.jsonObject(with: Data(contentsOf: file)) as! [String: Any]
        edit(&obj)
        try JSONSerialization.data(withJSONObject: obj).write(to: file)
    }

    /// A safetensors file from a raw header and data.
    public static func safetensors(header: [UInt8], data: [UInt8], declaredLength: UInt64? = nil) -> [UInt8] {
        var out = [UInt8]()
        withUnsafeBytes(of: (declaredLength ?? UInt64(header.count)).littleEndian) { out += $0 }
        return out + header + data
    }
}

/// A refusal as the brief defines it: exit status 1 (not a signal, not a trap), exactly one line
/// on stderr of the form `tool: problem — what to do`, containing every `contains` fragment.
public func assertRefused(_ r: (status: Int32, out: [UInt8], err: String), tool: String, contains: [String] = [],
                   file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(r.status, 1, "\(tool) should exit 1; stderr: \(r.err)", file: file, line: line)
    let lines = r.err.split(separator: "\n", omittingEmptySubsequences: true)
    XCTAssertEqual(lines.count, 1, "\(tool) should print one line, got: \(r.err)", file: file, line: line)
    XCTAssertTrue(r.err.hasPrefix("\(tool): "), "no '\(tool): ' prefix: \(r.err)", file: file, line: line)
    XCTAssertTrue(r.err.contains(" — "), "no ' — what to do' part: \(r.err)", file: file, line: line)
    for c in contains { XCTAssertTrue(r.err.contains(c), "'\(c)' missing from: \(r.err)", file: file, line: line) }
}

/// A library-level refusal: a ToolError of the same form (without the tool prefix).
public func assertToolError<T>(_ body: @autoclosure () throws -> T, contains: [String] = [],
                        file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertThrowsError(try body(), file: file, line: line) { e in
        guard let t = e as? ToolError else { return XCTFail("not a ToolError: \(e)", file: file, line: line) }
        XCTAssertTrue(t.message.contains(" — "), "no ' — what to do' part: \(t.message)", file: file, line: line)
        XCTAssertFalse(t.message.contains("\n"), "multi-line: \(t.message)", file: file, line: line)
        for c in contains { XCTAssertTrue(t.message.contains(c), "'\(c)' missing from: \(t.message)", file: file, line: line) }
    }
}
