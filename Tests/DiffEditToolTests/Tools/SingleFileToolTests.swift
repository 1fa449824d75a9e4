import Foundation
import XCTest
import DiffEditCore
import DiffEditTestSupport

/// The tool pipeline with --model FILE.safetensors (the single-file checkpoint made of a fixture
/// pipeline, SingleFileFixtures), checked as DiffEditToolTests checks the folder.
extension DiffEditToolTests {
    /// tokenize, encode-text, vae-encode, noise-diff-mask, invert (with and without regularisation),
    /// denoise and vae-decode with --model FILE.safetensors, as for the folder.
    func testPipelineOfToolsFromTheFileMatchesDiffusers() throws {
        for key in ["sd1", "sd2"] {
            let c = try Self.fixtureCase(key)
            try Self.checkToolPipeline(c, model: SingleFileFixtures.path(key), label: "\(key) single file",
                                                    dir: try temporaryDirectory(self))
        }
    }

    /// $DIFFEDIT_MODEL may name the file; unet-bench times its UNet.
    func testEnvironmentVariableAndUNetBenchTakeAFile() throws {
        let file = try SingleFileFixtures.path("sd2")
        var env = ProcessInfo.processInfo.environment
        env["DIFFEDIT_MODEL"] = file
        let viaEnv = try runTool("tokenize", ["a photo of a dog!"], environment: env)
        let viaOption = try runTool("tokenize", ["--model", file, "a photo of a dog!"])
        XCTAssertEqual(viaEnv.status, 0, viaEnv.err)
        XCTAssertEqual(viaEnv.out, viaOption.out)
        let ids = try TensorStreamReader(ByteReader(fd: -1, label: "tokenize")).readAllFromBytes(viaOption.out)[0]
        XCTAssertEqual(ids.metadata["pad_id"], "0")
        XCTAssertEqual(ids.metadata["model"], file)
        let bench = try runTool("unet-bench", ["--model", file, "--height", "8", "--width", "6", "--tokens", "77", "--runs", "1"])
        XCTAssertEqual(bench.status, 0, bench.err)
    }

    /// Streams made with the file carry its identity: the folder's tools refuse them, the file's
    /// take them; the identity survives a second opening.
    func testProvenanceNamesTheFile() throws {
        let file = try Fixtures.model("sd1", singleFile: true), folder = try Fixtures.model("sd1")
        XCTAssertEqual(DiffEditIO.modelFingerprint(file), DiffEditIO.modelFingerprint(try Fixtures.model("sd1", singleFile: true)))
        XCTAssertEqual(DiffEditIO.modelFingerprint(file), DiffEditIO.modelFingerprint(try ModelFolder(root: file.root)))
        XCTAssertNotEqual(DiffEditIO.modelFingerprint(file), DiffEditIO.modelFingerprint(folder))
        XCTAssertNotEqual(DiffEditIO.modelFingerprint(file), DiffEditIO.modelFingerprint(try Fixtures.model("sd2", singleFile: true)))
        XCTAssertNotEqual(DiffEditSupport.schedulerFingerprint(try Fixtures.model("sd1", singleFile: true)), DiffEditSupport.schedulerFingerprint(try Fixtures.model("sd2", singleFile: true)))
        let post = try runTool("vae-encode", ["--model", file.root, Fixtures.path("sd1/cat.ppm")])
        XCTAssertEqual(post.status, 0, post.err)
        let dir = try temporaryDirectory(self)
        let emb = try Hostile.embeddingsFile(dir, model: file.root)
        let ok = try runTool("invert", ["--model", file.root, "--prompt", emb, "--steps", "2"], stdin: post.out)
        XCTAssertEqual(ok.status, 0, ok.err)
        let refused = try runTool("invert", ["--model", folder.root, "--prompt", emb, "--steps", "2"], stdin: post.out)
        assertRefused(refused, tool: "invert", contains: ["was made with model \(file.root)"])
    }
}
