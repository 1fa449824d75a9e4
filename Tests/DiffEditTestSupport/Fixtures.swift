import Foundation
import XCTest
@testable import DiffEditCore

/// Access to the committed reference fixtures (Tests/Fixtures, made by
/// Tests/Reference/make_fixtures.py from diffusers/transformers).
/// The repository's root folder (this file is Tests/DiffEditCoreTests/Support/Fixtures.swift), so
/// that test files at any depth of Tests/DiffEditCoreTests find man/, Sources/ and Tests/Fixtures.
public let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

public enum Fixtures {
    public static let root: URL = repositoryRoot.appendingPathComponent("Tests/Fixtures")

    public static func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }

    /// A fixture pipeline (sd1, sd2) as a model: its folder, or (`singleFile`) the single-file
    /// checkpoint in LDM layout made of it (SingleFileFixtures).
    public static func model(_ key: String, singleFile: Bool = false) throws -> ModelFolder {
        try ModelFolder(root: singleFile ? SingleFileFixtures.path(key) : path(key))
    }

    /// Fails the test (and throws) when a committed fixture file or folder is missing: the
    /// fixtures are part of the repository, so a missing one is a broken checkout, never a reason
    /// to skip.
    public static func require(_ relative: String, file: StaticString = #filePath, line: UInt = #line) throws {
        guard FileManager.default.fileExists(atPath: path(relative)) else {
            XCTFail("fixture Tests/Fixtures/\(relative) is missing (it is committed; restore it with git checkout)", file: file, line: line)
            throw ToolError("missing fixture \(relative)")
        }
    }

    /// All records of a fixture stream, by name.
    public static func records(_ relative: String, file: StaticString = #filePath, line: UInt = #line) throws -> [String: TensorRecord] {
        try require(relative, file: file, line: line)
        let all = try TensorStream.readAll(path: path(relative))
        return Dictionary(all.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
    }

    /// One record; fails the test with a clear message if it is missing.
    /// The 640 prompts of prompts.json the tokenizer and text-encoder fixtures were made from.
    public static let promptCount = 640

    public static func prompts() throws -> [String] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path("prompts.json")))
        let p = try JSONSerialization.jsonObject(with: data) as! [String]
        XCTAssertEqual(p.count, promptCount, "prompts.json changed size: rename the parity tests")
        return p
    }

    /// The token ids (and their prompts) the text-encoder fixture of `pipeline` was made from.
    public static func referenceIDs(_ pipeline: String) throws -> (ids: [Int32], n: Int, prompts: [String]) {
        let r = try record("\(pipeline)/ref/text.tensor", "text.ids")
        let prompts = try JSONSerialization.jsonObject(with: Data(r.metadata["prompts_json"]!.utf8)) as! [String]
        XCTAssertEqual(r.shape, [prompts.count, 77])
        return (try r.int32s(), r.shape[0], prompts)
    }

    /// The tokenizer of fixture pipeline `key`.
    public static func tokenizer(_ key: String) throws -> CLIPTokenizer { try CLIPTokenizer(folder: model(key)) }

    /// The VAE of fixture pipeline `key` and its reference records (vae.tensor).
    public static func vae(_ key: String) throws -> (vae: AutoencoderKL, refs: [String: TensorRecord]) {
        let ref = "\(key)/ref/vae.tensor"
        try require(ref)  // committed: a missing one fails, never skips
        return (try AutoencoderKL(folder: model(key)), try records(ref))
    }

    /// Record `name` of already-read reference records; a missing one fails the test.
    public static func ref(_ refs: [String: TensorRecord], _ name: String, file: StaticString = #filePath, line: UInt = #line) throws -> TensorRecord {
        guard let r = refs[name] else {
            XCTFail("fixture has no record '\(name)'", file: file, line: line)
            throw ToolError("missing fixture record \(name)")
        }
        return r
    }

    public static func record(_ relative: String, _ name: String, file: StaticString = #filePath, line: UInt = #line) throws -> TensorRecord {
        guard let r = try records(relative, file: file, line: line)[name] else {
            XCTFail("fixture \(relative) has no record '\(name)'", file: file, line: line)
            throw ToolError("missing fixture record \(name)")
        }
        return r
    }
}

/// Path to a built tool in the same build folder as the test bundle.
public func toolPath(_ name: String) -> String {
    var dir = Bundle.main.bundleURL
    for b in Bundle.allBundles where b.bundlePath.hasSuffix(".xctest") { dir = b.bundleURL.deletingLastPathComponent() }
    return dir.appendingPathComponent(name).path
}

/// Runs a built tool with stdin bytes; returns (status, stdout, stderr).
@discardableResult
public func runTool(_ name: String, _ args: [String], stdin: [UInt8] = [], environment: [String: String]? = nil) throws -> (status: Int32, out: [UInt8], err: String) {
    try runProcess(toolPath(name), args, stdin: stdin, environment: environment)
}
