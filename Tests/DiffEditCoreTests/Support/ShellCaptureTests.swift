import Foundation
import XCTest
import DiffEditTestSupport

/// The child-process capture of Support/Shell.swift: complete stdout and stderr, hang guard.
final class ShellCaptureTests: XCTestCase {
    /// A child that exits at once: its stderr must be captured every time (the old capture could
    /// return before its stderr reader thread had started, giving "" — which passed `err == ""`).
    func testStderrOfAQuickChildIsAlwaysComplete() throws {
        for i in 0..<200 {
            let r = try runProcess("/bin/sh", ["-c", "echo out; echo err$0 >&2", "\(i)"], stdin: [], environment: nil)
            XCTAssertEqual(r.status, 0)
            XCTAssertEqual(String(decoding: r.out, as: UTF8.self), "out\n")
            XCTAssertEqual(r.err, "err\(i)\n", "run \(i)")
        }
    }

    /// Large output on both pipes at once, and stdin the child reads only partly.
    func testBothPipesAreReadToEOF() throws {
        let r = try runProcess("/bin/sh", ["-c", "head -c 100 >/dev/null; head -c 3000000 /dev/zero; head -c 2000000 /dev/zero >&2"],
                               stdin: [UInt8](repeating: 1, count: 5_000_000), environment: nil)
        XCTAssertEqual(r.status, 0)
        XCTAssertEqual(r.out.count, 3_000_000)
        XCTAssertEqual(r.err.utf8.count, 2_000_000)
    }

    /// The hang guard kills a stuck child and says so on stderr (it decides nothing by speed:
    /// the child would sleep for ten minutes).
    func testHangGuardKillsAStuckChild() throws {
        let r = try runProcess("/bin/sleep", ["600"], stdin: [], environment: nil, hangGuard: 1)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("hang guard"), r.err)
    }
}
