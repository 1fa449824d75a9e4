import Foundation
import XCTest
@testable import DiffEditCore

/// The bundled demo model and its showcase scene (demo/scenes/red-circle.ppm), for tests of the
/// tools' behaviour on a model that makes pictures rather than noise.
public enum DemoScene {
    public static let repo = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
    public static var model: String { repo.appendingPathComponent("demo/model").path }
    public static var scene: String { repo.appendingPathComponent("demo/scenes/red-circle.ppm").path }
    public static let source = "a red circle on a striped white background"
    public static let target = "a blue circle on a striped white background"

    /// Writes src.tensor, dst.tensor and posterior.tensor (the scene's) into `dir`, made with the
    /// demo model (once per test process, then copied).
    nonisolated(unsafe) private static var cache: [String: [UInt8]] = [:]
    public static func prepare(_ dir: URL) throws {
        if cache.isEmpty {
            for (name, script) in [("src.tensor", "tokenize '\(source)' | encode-text --model '\(model)'"),
                                   ("dst.tensor", "tokenize '\(target)' | encode-text --model '\(model)'"),
                                   ("posterior.tensor", "vae-encode --model '\(model)' '\(scene)'")] {
                let r = try sh(script)
                guard r.status == 0 else { throw ToolError("\(script) failed: \(r.err)") }
                cache[name] = r.out
            }
        }
        for (name, bytes) in cache { try Data(bytes).write(to: dir.appendingPathComponent(name)) }
    }

    /// A model folder in `dir` that is the demo model (its entries linked, so the fingerprint is
    /// the same) with `defaults` as its diffedit_defaults.json, or without one when nil.
    public static func modelCopy(_ dir: URL, defaults: String?) throws -> String {
        let m = dir.appendingPathComponent("model-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: m, withIntermediateDirectories: true)
        for entry in try FileManager.default.contentsOfDirectory(atPath: model) where entry != ModelDefaults.fileName {
            try FileManager.default.createSymbolicLink(atPath: m.appendingPathComponent(entry).path,
                                                       withDestinationPath: model + "/" + entry)
        }
        if let defaults { try Data(defaults.utf8).write(to: m.appendingPathComponent(ModelDefaults.fileName)) }
        return m.path
    }

    /// The one record of a tensor stream file.
    public static func record(_ path: String, _ name: String? = nil, file: StaticString = #filePath, line: UInt = #line) throws -> TensorRecord {
        let all = try TensorStream.readAll(path: path)
        guard let r = name.map({ n in all.first { $0.name == n } }) ?? all.first else {
            XCTFail("\(path) has no record \(name ?? "")", file: file, line: line)
            throw ToolError("missing record")
        }
        return r
    }
}
