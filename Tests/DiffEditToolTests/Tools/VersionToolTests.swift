import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// --version of the built tools.
final class VersionToolTests: XCTestCase {
    /// Every tool's --version names the kernel; a kernel the user sets is the one that runs.
    func testVersionNamesTheKernel() throws {
        for tool in ["tensor", "tokenize", "encode-text", "vae-encode", "vae-decode", "noise-diff-mask", "invert",
                     "denoise", "composite", "unet-bench"] {
            let r = try runTool(tool, ["--version"])
            let out = String(decoding: r.out, as: UTF8.self)
            XCTAssertEqual(r.status, 0, tool)
            XCTAssertTrue(out.contains("kernel "), "\(tool) --version: \(out)")
        }
        var env = ProcessInfo.processInfo.environment
        env["OPENBLAS_CORETYPE"] = "Haswell"
        let r = try runTool("denoise", ["--version"], environment: env)
        XCTAssertTrue(String(decoding: r.out, as: UTF8.self).contains("kernel Haswell (OPENBLAS_CORETYPE=Haswell)"))
    }
}
