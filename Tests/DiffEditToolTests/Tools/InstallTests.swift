import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// `make install PREFIX=…` (the top-level Makefile), with the tests' own build (BIN=, no release
/// build): tools, man pages and the demo model land where the tools and man look for them, and
/// the man page's EXAMPLES edit the installed demo scene cleanly as they are written.
final class InstallTests: XCTestCase {
    static let repo = DemoScene.repo

    /// The first EXAMPLES block of a man page, as shell text (roff escapes undone).
    static func firstExample(_ page: String) throws -> String {
        let text = try String(contentsOfFile: repo.appendingPathComponent(page).path, encoding: .utf8)
        guard let examples = text.range(of: ".SH EXAMPLES"),
              let start = text.range(of: ".EX\n", range: examples.upperBound..<text.endIndex),
              let end = text.range(of: ".EE", range: start.upperBound..<text.endIndex) else {
            throw ToolError("\(page) has no .EX block under EXAMPLES")
        }
        return String(text[start.upperBound..<end.lowerBound])
            .replacingOccurrences(of: "\\-", with: "-").replacingOccurrences(of: "\\e", with: "\\")
    }

    func testMakeInstallIntoAPrefixAndRunTheManPageExample() throws {
        try requireCommands(["make", "pngtopnm", "pnmtopng", "mandoc"])
        let dir = try temporaryDirectory(self)
        let prefix = dir.appendingPathComponent("prefix with space").path
        let bin = URL(fileURLWithPath: toolPath("denoise")).deletingLastPathComponent().path
        let install = try sh("make -C '\(Self.repo.path)' install PREFIX='\(prefix)' BIN='\(bin)'")
        XCTAssertEqual(install.status, 0, install.err)
        let fm = FileManager.default
        for tool in ["tensor", "tokenize", "encode-text", "vae-encode", "vae-decode", "noise-diff-mask", "invert", "denoise", "composite", "unet-bench"] {
            XCTAssertTrue(fm.isExecutableFile(atPath: "\(prefix)/bin/\(tool)"), "bin/\(tool)")
        }
        for f in ["share/man/man1/denoise.1", "share/man/man1/tensor.1", "share/man/man1/composite.1", "share/man/man5/diffedit-tensor.5",
                  "share/man/man5/diffedit-defaults.5", "share/diffedit/model/model_index.json",
                  "share/diffedit/model/diffedit_defaults.json", "share/diffedit/model/unet/diffusion_pytorch_model.safetensors",
                  "share/diffedit/scenes/red-circle.ppm", "share/diffedit/examples/Makefile"] {
            XCTAssertTrue(fm.fileExists(atPath: "\(prefix)/\(f)"), f)
        }
        let lint = try sh("mandoc -Tlint -Wwarning '\(prefix)'/share/man/man*/*")
        XCTAssertEqual(lint.status, 0, lint.err + String(decoding: lint.out, as: UTF8.self))

        // denoise(1)'s first example, verbatim, with the installed tools and nothing else: no
        // --model, no $DIFFEDIT_MODEL, so the installed demo model and its defaults file.
        let example = try Self.firstExample("man/man1/denoise.1")
        XCTAssertFalse(example.contains("--guidance") || example.contains("--negative") || example.contains("--model"), example)
        let work = dir.appendingPathComponent("work")
        try fm.createDirectory(at: work, withIntermediateDirectories: true)
        let r = try runProcess("/bin/bash", ["-c", "set -euo pipefail; cd '\(work.path)'; cp '\(prefix)/share/diffedit/scenes/red-circle.ppm' .\n" + example],
                               stdin: [], environment: ["PATH": "\(prefix)/bin:/usr/bin:/bin", "HOME": dir.path])
        XCTAssertEqual(r.status, 0, r.err)
        let posterior = try TensorStream.readAll(path: work.appendingPathComponent("scene.posterior").path)[0]
        XCTAssertEqual(posterior.metadata["model"], "\(prefix)/share/diffedit/model", "the installed demo model")
        XCTAssertEqual(try sh("cd '\(work.path)' && pngtopnm blue-circle.png > blue-circle.ppm").status, 0)
        try DemoModelTests.checkShowcaseEdit(work.appendingPathComponent("blue-circle.ppm").path)
        // The other stage pages' first examples run as written too, on the same installed files.
        for page in ["man/man1/noise-diff-mask.1", "man/man1/invert.1"] {
            let r = try runProcess("/bin/bash", ["-c", "set -euo pipefail; cd '\(work.path)'\n" + (try Self.firstExample(page))],
                                   stdin: [], environment: ["PATH": "\(prefix)/bin:/usr/bin:/bin", "HOME": dir.path])
            XCTAssertEqual(r.status, 0, "\(page): \(r.err)")
        }

        let uninstall = try sh("make -C '\(Self.repo.path)' uninstall PREFIX='\(prefix)'")
        XCTAssertEqual(uninstall.status, 0, uninstall.err)
        XCTAssertFalse(fm.fileExists(atPath: "\(prefix)/bin/denoise"))
        XCTAssertFalse(fm.fileExists(atPath: "\(prefix)/share/diffedit"))
        XCTAssertFalse(fm.fileExists(atPath: "\(prefix)/share/man/man1/denoise.1"))
        // Refusals: no PREFIX; a BIN without the tools.
        XCTAssertNotEqual(try sh("make -C '\(Self.repo.path)' install PREFIX= BIN='\(bin)'").status, 0)
        let noTools = try sh("make -C '\(Self.repo.path)' install PREFIX='\(prefix)' BIN='\(dir.path)'")
        XCTAssertNotEqual(noTools.status, 0)
        XCTAssertTrue(noTools.err.contains("is missing — build first"), noTools.err)
    }
}
