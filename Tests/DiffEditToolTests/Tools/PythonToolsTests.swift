import Foundation
import XCTest
import DiffEditTestSupport

/// The Python side (`python/diffedit_tools`: the stream reader and writer and the edit's command
/// lines that bench/ and demo/ share) tested by its own unittest suite, against the tools built
/// for this test run. Every test must run: a skip here would hide a missing tool.
final class PythonToolsTests: XCTestCase {
    func testPythonModuleUnitTests() throws {
        try requireCommands(["python3"])
        let repo = repositoryRoot
        let bin = URL(fileURLWithPath: toolPath("tensor")).deletingLastPathComponent().path
        let r = try sh("cd '\(repo.path)' && DIFFEDIT_BIN='\(bin)' python3 -m unittest discover -s python/tests 2>&1")
        let out = String(decoding: r.out, as: UTF8.self)
        XCTAssertEqual(r.status, 0, out)
        XCTAssertTrue(out.contains("\nOK"), out)
        XCTAssertFalse(out.contains("skipped"), "a Python test was skipped: \(out)")
    }
}
