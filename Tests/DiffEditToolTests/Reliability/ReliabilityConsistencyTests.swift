import DiffEditCore
import Foundation
import XCTest
import DiffEditTestSupport

/// Inputs made with another model, size or schedule are found from metadata and refused with a
/// message naming the option to fix (or, where two models may share the part, a warning).
final class ReliabilityConsistencyTests: XCTestCase {
    func testEmbeddingsAndPosteriorsFromAnotherModel() throws {
        let dir = try temporaryDirectory(self)
        let emb1 = try Hostile.embeddingsFile(dir)
        let emb2 = try Hostile.embeddingsFile(dir, model: Hostile.sd2)
        let post1 = try Hostile.posterior()
        let post2 = try Hostile.posterior(model: Hostile.sd2)
        let sd1 = Hostile.sd1
        assertRefused(try runTool("noise-diff-mask", ["--model", sd1, "--source", emb2, "--target", emb1], stdin: post1),
                      tool: "noise-diff-mask", contains: ["--source", "--model"])
        assertRefused(try runTool("noise-diff-mask", ["--model", sd1, "--source", emb1, "--target", emb1, "--target-negative", emb2], stdin: post1),
                      tool: "noise-diff-mask", contains: ["--target-negative"])
        assertRefused(try runTool("invert", ["--model", sd1, "--prompt", emb1], stdin: post2),
                      tool: "invert", contains: ["posterior", "--model"])
        assertRefused(try runTool("invert", ["--model", sd1, "--prompt", emb2], stdin: post1),
                      tool: "invert", contains: ["--prompt", "--model"])
    }

    func testVaeDecodeWarnsOnLatentsOfAnotherModel() throws {
        let post1 = try Hostile.posterior()
        let r = try runTool("vae-decode", ["--model", Hostile.sd2], stdin: post1)
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("warning: the latents were made with model") && r.err.contains("--model"), r.err)
        let q = try runTool("vae-decode", ["--model", Hostile.sd2, "-q"], stdin: post1)
        XCTAssertEqual(q.err, "")
        let same = try runTool("vae-decode", ["--model", Hostile.sd1], stdin: post1)
        XCTAssertEqual(same.err, "")
    }

    /// Identical source and target captions (issue 14, item 8): diffusers gives a mask of the
    /// whole image; so does noise-diff-mask — exactly, not a random mask from rounding — with a
    /// warning on stderr (silenced by -q), and its soft map is 1 everywhere instead of 0/0 = NaN.
    func testIdenticalCaptionsWarnAndMaskTheWholeImage() throws {
        let dir = try temporaryDirectory(self)
        let emb = try Hostile.embeddingsFile(dir)
        let post = try Hostile.posterior()
        let args = ["--model", Hostile.sd1, "--source", emb, "--target", emb, "--steps", "10", "--maps", "2"]
        let r = try runTool("noise-diff-mask", args, stdin: post)
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.err.split(separator: "\n").count, 1, r.err)
        XCTAssertTrue(r.err.hasPrefix("noise-diff-mask: warning: the source and target captions are the same") && r.err.contains(" — "), r.err)
        let mask = try TensorStreamReader(pipeReader(r.out)).readAll()[0]
        XCTAssertEqual(mask.shape, [1, 1, 8, 8])
        XCTAssertEqual(mask.floats(), [Float](repeating: 1, count: 64))
        let soft = try runTool("noise-diff-mask", args + ["--soft", "-q"], stdin: post)
        XCTAssertEqual(soft.status, 0, soft.err)
        XCTAssertEqual(soft.err, "")
        XCTAssertEqual(try TensorStreamReader(pipeReader(soft.out)).readAll()[0].floats(), [Float](repeating: 1, count: 64))
        // Different captions: no warning.
        let other = try Hostile.embeddingsFile(dir, prompt: "a dog")
        let d = try runTool("noise-diff-mask", ["--model", Hostile.sd1, "--source", emb, "--target", other, "--steps", "10", "--maps", "2"], stdin: post)
        XCTAssertEqual(d.status, 0, d.err)
        XCTAssertFalse(d.err.contains("warning"), d.err)
    }

    func testDenoiseRefusesMismatchedStackAndMask() throws {
        let dir = try temporaryDirectory(self)
        let emb = try Hostile.embeddingsFile(dir)
        let post = try Hostile.posterior()
        let inv = try runTool("invert", ["--model", Hostile.sd1, "--prompt", emb, "--steps", "4", "-q"], stdin: post)
        XCTAssertEqual(inv.status, 0, inv.err)
        // A mask of another latent size, and one from another model.
        let wrongSize = try Hostile.write(Hostile.stream([Hostile.f32("mask", [1, 1, 4, 4], fill: 1)]), dir, "m4.tensor")
        assertRefused(try runTool("denoise", ["--model", Hostile.sd1, "--prompt", emb, "--mask", wrongSize], stdin: inv.out),
                      tool: "denoise", contains: ["--mask", "same image"])
        let otherModel = try Hostile.write(Hostile.stream([Hostile.f32("mask", [1, 1, 8, 8], fill: 1,
            metadata: ["model": Hostile.sd2, "model.fingerprint": "0123456789abcdef"])]), dir, "m2.tensor")
        assertRefused(try runTool("denoise", ["--model", Hostile.sd1, "--prompt", emb, "--mask", otherModel], stdin: inv.out),
                      tool: "denoise", contains: ["--mask", "--model"])
        // A schedule that differs from the inversion's.
        let mask = try Hostile.write(Hostile.stream([Hostile.f32("mask", [1, 1, 8, 8], fill: 1)]), dir, "m.tensor")
        assertRefused(try runTool("denoise", ["--model", Hostile.sd1, "--prompt", emb, "--mask", mask, "--steps", "7"], stdin: inv.out),
                      tool: "denoise", contains: ["--steps"])
        // The stack decoded with another model's scheduler.
        assertRefused(try runTool("denoise", ["--model", Hostile.sd2, "--prompt", emb, "--mask", mask], stdin: inv.out),
                      tool: "denoise", contains: ["--model"])
    }
}
