import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// noise-diff-mask, invert and denoise end to end as shell pipelines of the built tools, with
/// the prompts, options and seed of the fixtures, compared with diffusers' results.
final class DiffEditToolTests: XCTestCase {
    struct Case {
        let key: String
        let model: String
        let steps: Int
        let source: String
        let target: String
        let refs: [String: TensorRecord]
    }

    func fixtureCase(_ key: String) throws -> Case { try Self.fixtureCase(key) }

    /// `ref`: the pipeline's records (default: the fixture model's own, `K/ref/diffedit.tensor`).
    static func fixtureCase(_ key: String, ref: String? = nil) throws -> Case {
        let ref = ref ?? "\(key)/ref/diffedit.tensor"
        try Fixtures.require(ref)  // committed: a missing one fails, never skips
        let refs = try Fixtures.records(ref)
        let json = try XCTUnwrap(refs["diffedit.mask"]?.metadata["args_json"])
        let args = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        return Case(key: key, model: Fixtures.path(key), steps: try XCTUnwrap(args["num_inference_steps"] as? Int),
                    source: try XCTUnwrap(args["source_prompt"] as? String),
                    target: try XCTUnwrap(args["target_prompt"] as? String), refs: refs)
    }

    func read(_ url: URL, _ name: String) throws -> TensorRecord { try Self.read(url, name) }

    static func read(_ url: URL, _ name: String) throws -> TensorRecord {
        let all = try TensorStream.readAll(path: url.path)
        return try XCTUnwrap(all.first { $0.name == name }, "\(url.lastPathComponent) has no record \(name)")
    }

    func run(_ script: String, in dir: URL, file: StaticString = #filePath, line: UInt = #line) throws -> String {
        try Self.run(script, in: dir, file: file, line: line)
    }

    static func run(_ script: String, in dir: URL, file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let r = try sh("cd '\(dir.path)' && " + script)
        XCTAssertEqual(r.status, 0, "\(script)\n\(r.err)", file: file, line: line)
        return r.err
    }

    func testPipelineOfToolsMatchesDiffusers() throws {
        for key in ["sd1", "sd2"] {
            let c = try fixtureCase(key)
            try Self.checkToolPipeline(c, model: c.model, label: key, dir: try temporaryDirectory(self))
        }
    }

    /// Every tool in a shell pipeline with `model` (the fixture folder, or a single file made of it)
    /// on the fixture's image, prompts and options, against diffusers' results. `adapters`: options
    /// given to the tools that run the text encoder or the UNet (--lora).
    static func checkToolPipeline(_ c: Case, model: String, label: String, dir: URL, adapters: String = "") throws {
        let cat = Fixtures.path("\(c.key)/cat.ppm")
        let v = "--model '\(model)'"  // the VAE's tools
        let m = adapters.isEmpty ? v : "\(v) \(adapters)"
        let s = "--steps \(c.steps)"
        let started = Date()
        let err = try run("""
            tokenize \(v) '\(c.source)' | encode-text \(m) > src.tensor
            tokenize \(v) '\(c.target)' | encode-text \(m) > tgt.tensor
            vae-encode \(v) < '\(cat)' | noise-diff-mask \(m) --source src.tensor --target tgt.tensor \(s) --seed 0 > mask.tensor
            vae-encode \(v) < '\(cat)' > post.tensor
            noise-diff-mask \(m) --source src.tensor --target tgt.tensor \(s) --seed 0 --threshold-ratio 2.1 --batch 6 < post.tensor > dense.tensor
            invert \(m) --prompt src.tensor \(s) --seed 0 < post.tensor > inv.tensor
            invert \(m) --prompt src.tensor \(s) --seed 0 --reg-steps 2 < post.tensor > invreg.tensor
            denoise \(m) --mask mask.tensor --prompt tgt.tensor --negative src.tensor < inv.tensor > edit.tensor
            denoise \(m) --mask dense.tensor --prompt tgt.tensor --negative src.tensor < inv.tensor > dense-edit.tensor
            vae-decode \(v) < edit.tensor > edit.ppm
            vae-decode \(v) < dense-edit.tensor > dense-edit.ppm
            """, in: dir)
        print("\(label): tool pipeline (debug build, 2 masks, 2 inversions, 2 edits) took \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
        XCTAssertEqual(err, "", "\(label): tools in a pipeline write nothing on stderr without --progress")

        // The embeddings tokenize | encode-text make are the ones the pipeline used.
        let embeds = try XCTUnwrap(c.refs["diffedit.mask.embeds"]).tensor()  // [src, "", tgt, ""]
        let inner = embeds.count / 4
        assertClose(try read(dir.appendingPathComponent("src.tensor"), "embeddings").floats(), Array(embeds.data[0..<inner]), atol: Tolerance.textEmbeddings, "\(label) source embeddings")
        assertClose(try read(dir.appendingPathComponent("tgt.tensor"), "embeddings").floats(), Array(embeds.data[(2 * inner)..<(3 * inner)]), atol: Tolerance.textEmbeddings, "\(label) target embeddings")

        let mask = try read(dir.appendingPathComponent("mask.tensor"), "mask")
        XCTAssertEqual(mask.shape, [1, 1] + Array(try XCTUnwrap(c.refs["diffedit.mask"]).shape.dropFirst()), label)
        XCTAssertEqual(mask.floats(), try XCTUnwrap(c.refs["diffedit.mask"]).floats(), "\(label) mask (fixture margin ≥ 0.0027 from the threshold)")
        XCTAssertEqual(try read(dir.appendingPathComponent("dense.tensor"), "mask").floats(),
                       try XCTUnwrap(c.refs["diffedit.mask.dense"]).floats(), "\(label) dense mask (--batch 6)")

        let inv = try read(dir.appendingPathComponent("inv.tensor"), "inverted")
        XCTAssertEqual(inv.shape, try XCTUnwrap(c.refs["diffedit.inverted"]).shape)
        let invErr = assertClose(inv.floats(), try XCTUnwrap(c.refs["diffedit.inverted"]).floats(), atol: Tolerance.editedFromImage, "\(label) inverted (tools)").maxAbsError
        assertClose(try read(dir.appendingPathComponent("inv.tensor"), "inverted.clean").floats(),
                    try XCTUnwrap(c.refs["diffedit.invert.image_latents"]).floats(), atol: 1e-4, "\(label) inverted.clean")
        let invReg = try read(dir.appendingPathComponent("invreg.tensor"), "inverted")
        assertClose(invReg.floats(), try XCTUnwrap(c.refs["diffedit.inverted.reg"]).floats(), atol: Tolerance.editedFromImage, "\(label) inverted.reg (tools)")

        for (file, suffix) in [("edit", ""), ("dense-edit", ".dense")] {
            let edited = try read(dir.appendingPathComponent("\(file).tensor"), "latents").floats()
            let want = try XCTUnwrap(c.refs["diffedit.edited\(suffix).latents"]).floats()
            let ce = assertClose(edited, want, atol: Tolerance.editedFromImage, "\(label)\(suffix) edited latents (tools)")
            let image = try XCTUnwrap(try NetpbmImage.readAll(try ByteReader(path: dir.appendingPathComponent("\(file).ppm").path)).first,
                                      "\(file).ppm holds no image")
            let u8 = try XCTUnwrap(c.refs["diffedit.edited\(suffix).u8"]).floats()
            let got = image.samples.map { ($0 * 255).rounded() }
            // Every sample within ±1 of diffusers' 8-bit image (vae-decode maps a NaN to 0, so the
            // latents above are what rules NaN out).
            let cu = assertClose(got, u8, atol: 1, "\(label)\(suffix) 8-bit image within ±1")
            print("\(label)\(suffix) tools: inverted max err \(invErr), edited max err \(ce.maxAbsError), u8 worst \(cu.maxAbsError) levels, \(cu.failures) of \(u8.count) samples off by more than 1")
        }
    }

    func testMaskOptionsAndRefusals() throws {
        let c = try fixtureCase("sd1")
        let other = try fixtureCase("sd2")
        let dir = try temporaryDirectory(self)
        let m = "--model '\(c.model)'"
        _ = try run("""
            tokenize \(m) '\(c.source)' | encode-text \(m) > src.tensor
            tokenize \(m) '\(c.target)' | encode-text \(m) > tgt.tensor
            tokenize --model '\(other.model)' '\(c.target)' | encode-text --model '\(other.model)' > tgt2.tensor
            vae-encode \(m) < '\(c.model)/cat.ppm' > post.tensor
            vae-encode --model '\(other.model)' < '\(other.model)/cat.ppm' > post2.tensor
            noise-diff-mask \(m) --source src.tensor --target tgt.tensor --steps 10 --maps 2 < post.tensor > mask.tensor
            noise-diff-mask \(m) --source src.tensor --target tgt.tensor --steps 10 --maps 2 --image-size < post.tensor > big.tensor
            noise-diff-mask \(m) --source src.tensor --target tgt.tensor --steps 10 --maps 2 --soft < post.tensor > soft.tensor
            invert \(m) --prompt src.tensor --steps 10 < post.tensor > inv.tensor
            tensor to-image --range 0:1 big.tensor > big.pgm
            vae-encode \(m) < '\(other.model)/cat.ppm' | noise-diff-mask \(m) --source src.tensor --target tgt.tensor --steps 10 --maps 2 > narrow.tensor
            """, in: dir)
        XCTAssertEqual(try read(dir.appendingPathComponent("big.tensor"), "mask").shape, [1, 1, 64, 64])
        let small = try read(dir.appendingPathComponent("mask.tensor"), "mask").floats()
        let big = try read(dir.appendingPathComponent("big.tensor"), "mask").floats()
        XCTAssertEqual(big[9 * 64 + 17], small[1 * 8 + 2], "nearest upscaling by 8")
        let soft = try read(dir.appendingPathComponent("soft.tensor"), "mask.soft").floats()
        XCTAssertEqual(soft.map { $0 <= 0.5 ? Float(0) : 1 }, small, "--soft thresholds to the mask")
        XCTAssert(try sh("head -c 2 '\(dir.path)/big.pgm'").out == Array("P5".utf8), "a mask renders as a PGM")

        func refused(_ script: String, _ phrase: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let r = try sh("cd '\(dir.path)' && " + script)
            XCTAssertEqual(r.status, 1, "\(script) should fail", file: file, line: line)
            XCTAssert(r.err.contains(phrase), "\(script): stderr '\(r.err)' lacks '\(phrase)'", file: file, line: line)
            XCTAssertEqual(r.err.split(separator: "\n").count, 1, "one line on stderr", file: file, line: line)
        }
        try refused("denoise \(m) --mask mask.tensor --prompt tgt.tensor --steps 20 < inv.tensor > /dev/null", "--steps 20 differs")
        try refused("denoise \(m) --mask mask.tensor --prompt tgt.tensor --strength 0.5 < inv.tensor > /dev/null", "--strength 0.5 differs")
        try refused("denoise \(m) --mask big.tensor --prompt tgt.tensor < inv.tensor > /dev/null", "--image-size")
        try refused("denoise \(m) --mask narrow.tensor --prompt tgt.tensor < inv.tensor > /dev/null", "--mask is 6x8 but the latents are 8x8")
        try refused("denoise \(m) --mask mask.tensor --prompt tgt2.tensor < inv.tensor > /dev/null", "--prompt was made with model")
        try refused("denoise --model '\(other.model)' --mask mask.tensor --prompt tgt2.tensor < inv.tensor > /dev/null", "the inverted stack on stdin was made with model")
        try refused("noise-diff-mask \(m) --source src.tensor --target tgt.tensor < post2.tensor > /dev/null", "the posterior on stdin was made with model")
        try refused("invert \(m) --prompt src.tensor < src.tensor > /dev/null", "expected the image posterior")
        try refused("noise-diff-mask \(m) --source src.tensor --target tgt.tensor --encode-strength 0 < post.tensor > /dev/null", "--encode-strength")

        // Progress on request only, on stderr; --quiet wins.
        let p = try sh("cd '\(dir.path)' && invert \(m) --prompt src.tensor --steps 10 --progress < post.tensor > /dev/null")
        XCTAssertEqual(p.status, 0)
        XCTAssert(p.err.contains("inversion step 8/8"), "progress lines: \(p.err)")
        XCTAssert(p.err.contains("eta"), p.err)
        let q = try sh("cd '\(dir.path)' && invert \(m) --prompt src.tensor --steps 10 --progress --quiet < post.tensor > /dev/null")
        XCTAssertEqual(q.err, "")
    }

    /// The EXAMPLES of the three man pages run as written: the demo-scene ones with the bundled
    /// demo model (no $DIFFEDIT_MODEL) and red-circle.ppm in the working directory, the Stable
    /// Diffusion one with the fixture model in place of ~/models/sd15 and its cat.ppm, the
    /// hand-drawn-mask one with the scene's true mask as drawn.png.
    func testManPageExamplesRun() throws {
        let c = try fixtureCase("sd1")
        let manDir = repositoryRoot.appendingPathComponent("man/man1")
        try requireCommands(["pnmtopng", "pngtopnm", "ppmtopgm"])
        // The three pages' examples are independent: run at once (each mostly starts tools on tiny inputs).
        let pages = ["noise-diff-mask", "invert", "denoise"]
        let scripts: [String] = try pages.map { page in
            let text = try String(contentsOf: manDir.appendingPathComponent("\(page).1"), encoding: .utf8)
            guard let examples = text.components(separatedBy: ".SH EXAMPLES").last?.components(separatedBy: ".SH SEE ALSO").first else {
                XCTFail("\(page).1 has no EXAMPLES"); return ""
            }
            var blocks: [String] = []
            var current: [String]?
            for line in examples.split(separator: "\n", omittingEmptySubsequences: false) {
                if line == ".EX" { current = [] } else if line == ".EE" { blocks.append(current!.joined(separator: "\n")); current = nil }
                else if current != nil { current!.append(String(line)) }
            }
            XCTAssertFalse(blocks.isEmpty, page)
            return blocks.joined(separator: "\n")
                .replacingOccurrences(of: "\\-", with: "-").replacingOccurrences(of: "\\e", with: "\\")
        }
        let dirs = try pages.map { _ in try temporaryDirectory(self) }
        let results = concurrently(Array(zip(scripts, dirs)), width: pages.count) { script, dir in
            let setup = "set -e; cd '\(dir.path)'; cp '\(c.model)/cat.ppm' '\(DemoScene.scene)' .; unset DIFFEDIT_MODEL; "
                + "pnmtopng '\(DemoScene.repo.path)/demo/scenes/red-circle.mask.pgm' > drawn.png\n"
            return try sh(setup + script.replacingOccurrences(of: "~/models/sd15", with: c.model))
        }
        for (k, result) in results.enumerated() {
            let r = try result.get()
            XCTAssertEqual(r.status, 0, "\(pages[k]).1 EXAMPLES failed:\n\(scripts[k])\n\(r.err)")
        }
    }
}
