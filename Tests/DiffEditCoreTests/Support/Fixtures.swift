import Foundation
import XCTest
@testable import DiffEditCore

/// Access to the committed reference fixtures (Tests/Fixtures, made by
/// Tests/Reference/make_fixtures.py from diffusers/transformers).
enum Fixtures {
    static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    static func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }

    /// All records of a fixture stream, by name.
    static func records(_ relative: String) throws -> [String: TensorRecord] {
        let all = try TensorStream.readAll(path: path(relative))
        return Dictionary(all.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
    }

    /// One record; fails the test with a clear message if it is missing.
    static func record(_ relative: String, _ name: String, file: StaticString = #filePath, line: UInt = #line) throws -> TensorRecord {
        guard let r = try records(relative)[name] else {
            XCTFail("fixture \(relative) has no record '\(name)'", file: file, line: line)
            throw ToolError("missing fixture record \(name)")
        }
        return r
    }
}

/// Asserts two float arrays agree elementwise within `atol`, reporting the worst element.
func assertClose(_ actual: [Float], _ expected: [Float], atol: Float, _ label: String,
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(actual.count, expected.count, "\(label): element count", file: file, line: line)
    guard actual.count == expected.count else { return }
    var worst: Float = 0
    var at = 0
    for i in 0..<actual.count {
        let d = abs(actual[i] - expected[i])
        if !(d <= worst) { worst = d; at = i }  // NaN counts as worst
    }
    XCTAssert(worst <= atol, "\(label): max abs error \(worst) at \(at) (got \(actual[at]), want \(expected[at])) > \(atol)",
              file: file, line: line)
}

/// Path to a built tool in the same build folder as the test bundle.
func toolPath(_ name: String) -> String {
    var dir = Bundle.main.bundleURL
    for b in Bundle.allBundles where b.bundlePath.hasSuffix(".xctest") { dir = b.bundleURL.deletingLastPathComponent() }
    return dir.appendingPathComponent(name).path
}

/// Runs a built tool with stdin bytes; returns (status, stdout, stderr).
@discardableResult
func runTool(_ name: String, _ args: [String], stdin: [UInt8] = [], environment: [String: String]? = nil) throws -> (status: Int32, out: [UInt8], err: String) {
    try runProcess(toolPath(name), args, stdin: stdin, environment: environment)
}
