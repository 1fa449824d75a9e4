import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// examples/Makefile on a folder of two small images with the fixture model: everything is
/// built with -j2, intermediates are kept, and touching a prompt re-runs only what depends on it.
final class ExamplesTests: XCTestCase {
    static let repo = repositoryRoot

    func testMakefileBuildsAndRebuildsOnlyDependents() throws {
        try Fixtures.require("sd1")  // the fixture model the examples run with
        try requireCommands(["make", "pnmtopng", "pgmtoppm", "pngtopnm", "pamfile"])
        let dir = try temporaryDirectory(self)
        let bin = URL(fileURLWithPath: toolPath("denoise")).deletingLastPathComponent().path
        let makefile = Self.repo.appendingPathComponent("examples/Makefile").path
        let make = "make -f '\(makefile)' BIN='\(bin)' MODEL='\(Fixtures.path("sd1"))' STEPS=10"
        // Two images of different sizes (64×64 and 48 wide × 64 high).
        let setup = try sh("""
            cd '\(dir.path)' && mkdir images && cp '\(Fixtures.path("sd1/cat.ppm"))' images/cat.ppm &&
            cp '\(Fixtures.path("sd2/cat.ppm"))' images/narrow.ppm &&
            echo 'a photo of a cat' > src.txt && echo 'a photo of a tiger' > dst.txt
            """)
        XCTAssertEqual(setup.status, 0, setup.err)

        let first = try sh("cd '\(dir.path)' && \(make) -j2")
        XCTAssertEqual(first.status, 0, first.err)
        for name in ["cat", "narrow"] {
            for suffix in ["posterior", "mask", "inverted", "edited", "edited.png", "mask.png", "montage.png"] {
                XCTAssert(FileManager.default.fileExists(atPath: dir.appendingPathComponent("out/\(name).\(suffix)").path),
                          "out/\(name).\(suffix) kept")
            }
        }
        let montage = try sh("pngtopnm '\(dir.path)/out/narrow.montage.png' | { pamfile; cat > /dev/null; }")  // drain: pamfile stops after the header, and pipefail would see SIGPIPE
        XCTAssert(String(decoding: montage.out, as: UTF8.self).contains("144 by 64"), "input | mask | edit side by side: \(String(decoding: montage.out, as: UTF8.self))")
        XCTAssertEqual(try sh("cd '\(dir.path)' && \(make) -q").status, 0, "up to date after a build")

        // A new target caption: masks and edits are redone, the inversions and posteriors are not.
        func mtime(_ f: String) throws -> Date {
            try XCTUnwrap(try FileManager.default.attributesOfItem(atPath: dir.appendingPathComponent(f).path)[.modificationDate] as? Date)
        }
        let inverted = try mtime("out/cat.inverted"), src = try mtime("out/src.tensor")
        // Rewrite dst.txt until its modification time is newer than every output (what make
        // compares), instead of a fixed sleep: bounded (3000 tries 10 ms apart, beyond any
        // filesystem's timestamp granularity), usually one try on a nanosecond filesystem.
        let outputs = try FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("out").path)
        let newest = try outputs.map { try mtime("out/\($0)") }.max() ?? .distantPast
        var newer = false
        for _ in 0..<3000 {
            try Data("a photo of a dog\n".utf8).write(to: dir.appendingPathComponent("dst.txt"))
            if try mtime("dst.txt") > newest { newer = true; break }
            usleep(10_000)
        }
        XCTAssertTrue(newer, "dst.txt never got a modification time newer than the outputs")
        XCTAssertEqual(try sh("cd '\(dir.path)' && \(make) -q").status, 1, "out of date after the prompt changed")
        let plan = String(decoding: try sh("cd '\(dir.path)' && \(make) -n").out, as: UTF8.self)
        XCTAssert(plan.contains("noise-diff-mask"), plan)
        XCTAssert(plan.contains("denoise"), plan)
        XCTAssert(plan.contains("dst.tensor"), plan)
        XCTAssertFalse(plan.contains("invert "), "the inversion does not depend on the target caption:\n\(plan)")
        XCTAssertFalse(plan.contains("vae-encode"), plan)
        XCTAssertFalse(plan.contains("> out/src.tensor"), plan)
        let second = try sh("cd '\(dir.path)' && \(make) -j2")
        XCTAssertEqual(second.status, 0, second.err)
        XCTAssertEqual(try mtime("out/cat.inverted"), inverted)
        XCTAssertEqual(try mtime("out/src.tensor"), src)
        XCTAssertEqual(try sh("cd '\(dir.path)' && \(make) -q").status, 0)

        // A failing step leaves no partial target behind (.DELETE_ON_ERROR with pipefail).
        XCTAssertEqual(try sh("cd '\(dir.path)' && printf 'P6\\n7 7\\n255\\n' > images/bad.ppm && head -c 147 /dev/zero >> images/bad.ppm").status, 0)
        let bad = try sh("cd '\(dir.path)' && \(make) out/bad.posterior")
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("out/bad.posterior").path))
    }

    /// The settings: each target depends on the model and the settings that shape it (a stamp per
    /// value), so GUIDANCE re-runs the mask, the inversion and the edit but not the encodings,
    /// NEGATIVE only the edit, another MODEL everything, and going back to an earlier value re-runs
    /// too. PNG and JPEG inputs are converted with netpbm; two inputs of one name are refused.
    func testMakefileSettingsRerunWhatTheyShapeAndPNGAndJPEGInputs() throws {
        try Fixtures.require("sd1")
        try requireCommands(["make", "pnmtopng", "pnmtojpeg", "pngtopnm", "jpegtopnm", "ppmtoppm", "pamfile"])
        let dir = try temporaryDirectory(self)
        let bin = URL(fileURLWithPath: toolPath("denoise")).deletingLastPathComponent().path
        let makefile = Self.repo.appendingPathComponent("examples/Makefile").path
        let otherModel = dir.appendingPathComponent("same-model-elsewhere").path
        let make = "env -u DIFFEDIT_MODEL make -f '\(makefile)' BIN='\(bin)' MODEL='\(Fixtures.path("sd1"))' STEPS=4"
        let setup = try sh("""
            cd '\(dir.path)' && mkdir images && pnmtopng '\(Fixtures.path("sd1/cat.ppm"))' > images/cat.png &&
            pnmtojpeg '\(Fixtures.path("sd2/cat.ppm"))' > images/narrow.jpg && ln -s '\(Fixtures.path("sd1"))' '\(otherModel)' &&
            echo 'a photo of a cat' > src.txt && echo 'a photo of a tiger' > dst.txt
            """)
        XCTAssertEqual(setup.status, 0, setup.err)
        func run(_ args: String) throws -> (status: Int32, out: String, err: String) {
            let r = try sh("cd '\(dir.path)' && \(make) \(args)")
            return (r.status, String(decoding: r.out, as: UTF8.self), r.err)
        }
        func tools(_ plan: String) -> Set<String> {
            Set(plan.split(separator: "\n").compactMap { line in
                ["vae-encode", "tokenize", "noise-diff-mask", "invert", "denoise", "vae-decode"].first { line.hasPrefix($0 + " ") }
            })
        }
        func mtime(_ f: String) throws -> Date {
            try XCTUnwrap(try FileManager.default.attributesOfItem(atPath: dir.appendingPathComponent(f).path)[.modificationDate] as? Date)
        }
        let first = try run("-j2")
        XCTAssertEqual(first.status, 0, first.err)
        for name in ["cat", "narrow"] {
            for suffix in ["input.ppm", "posterior", "mask", "inverted", "edited", "montage.png"] {
                XCTAssert(FileManager.default.fileExists(atPath: dir.appendingPathComponent("out/\(name).\(suffix)").path), "out/\(name).\(suffix)")
            }
        }
        let montage = try sh("pngtopnm '\(dir.path)/out/narrow.montage.png' | { pamfile; cat > /dev/null; }")
        XCTAssert(String(decoding: montage.out, as: UTF8.self).contains("144 by 64"), String(decoding: montage.out, as: UTF8.self))
        XCTAssertEqual(try run("-q").status, 0, "up to date after a build")
        // No defaults file in the fixture model: denoise gets the source caption as negative.
        XCTAssertTrue(first.out.contains("--negative 'out/src.tensor'"), first.out)

        let guidance = try run("-n GUIDANCE=5")
        XCTAssertEqual(tools(guidance.out), ["noise-diff-mask", "invert", "denoise", "vae-decode"], guidance.out)
        XCTAssertTrue(guidance.out.contains("--guidance '5'"), guidance.out)
        let posterior = try mtime("out/cat.posterior"), mask = try mtime("out/cat.mask")
        let second = try run("-j2 GUIDANCE=5")
        XCTAssertEqual(second.status, 0, second.err)
        XCTAssertEqual(try mtime("out/cat.posterior"), posterior, "the encoding does not depend on the guidance")
        XCTAssertNotEqual(try mtime("out/cat.mask"), mask)
        XCTAssertEqual(try TensorStream.readAll(path: dir.appendingPathComponent("out/cat.edited").path)[0].metadata["guidance"], "5.0")
        XCTAssertEqual(try run("-q GUIDANCE=5").status, 0)
        let back = try run("-n")
        XCTAssertEqual(tools(back.out), ["noise-diff-mask", "invert", "denoise", "vae-decode"], "back to the default guidance: \(back.out)")

        let negative = try run("-n GUIDANCE=5 NEGATIVE=empty")
        XCTAssertEqual(tools(negative.out), ["tokenize", "denoise", "vae-decode"], negative.out)
        // The empty prompt's embedding, written to a temporary and renamed to out/empty.tensor.
        XCTAssertTrue(negative.out.contains("tokenize '' | encode-text > \"$tmp\""), negative.out)
        XCTAssertTrue(negative.out.contains("mv -f \"$tmp\" 'out/empty.tensor'"), negative.out)
        let model = try run("-n GUIDANCE=5 MODEL='\(otherModel)'")
        XCTAssertEqual(tools(model.out), ["vae-encode", "tokenize", "noise-diff-mask", "invert", "denoise", "vae-decode"], model.out)
        let badNegative = try run("-n NEGATIVE=target")
        XCTAssertNotEqual(badNegative.status, 0)
        XCTAssertTrue(badNegative.err.contains("NEGATIVE=target: give source, empty or model"), badNegative.err)

        XCTAssertEqual(try sh("cp '\(Fixtures.path("sd1/cat.ppm"))' '\(dir.path)/images/cat.ppm'").status, 0)
        let duplicate = try run("-n")
        XCTAssertNotEqual(duplicate.status, 0)
        XCTAssertTrue(duplicate.err.contains("images has several images named cat"), duplicate.err)
    }

    /// With no MODEL and no $DIFFEDIT_MODEL the Makefile leaves the model to the tools, which use
    /// the bundled demo model and its defaults file: `make` on the demo scene (as a PNG) gives a
    /// clean edit, not noise.
    func testMakefileDefaultsToTheToolsModelAndEditsTheDemoScene() throws {
        try requireCommands(["make", "pnmtopng", "pngtopnm", "ppmtoppm"])
        let dir = try temporaryDirectory(self)
        let bin = URL(fileURLWithPath: toolPath("denoise")).deletingLastPathComponent().path
        let makefile = Self.repo.appendingPathComponent("examples/Makefile").path
        let make = "env -u DIFFEDIT_MODEL make -f '\(makefile)' BIN='\(bin)'"
        let r = try sh("""
            cd '\(dir.path)' && mkdir images && pnmtopng '\(DemoScene.scene)' > images/scene.png &&
            echo '\(DemoScene.source)' > src.txt && echo '\(DemoScene.target)' > dst.txt &&
            \(make) -n > plan.txt && \(make) -j2
            """)
        XCTAssertEqual(r.status, 0, r.err)
        let plan = try String(contentsOf: dir.appendingPathComponent("plan.txt"), encoding: .utf8)
        XCTAssertFalse(plan.contains("--model") || plan.contains("--guidance") || plan.contains("--negative"), plan)
        let edited = try TensorStream.readAll(path: dir.appendingPathComponent("out/scene.edited").path)[0]
        XCTAssertEqual(edited.metadata["model"], DemoScene.model)
        XCTAssertEqual(edited.metadata["guidance"], "3.0", "the demo model's defaults file")
        try DemoModelTests.checkShowcaseEdit(dir.appendingPathComponent("out/scene.edited.ppm").path)
    }

    /// examples.sh runs to completion with the fixture model and writes the pictures it promises.
    func testExamplesScriptRuns() throws {
        try Fixtures.require("sd1")  // the fixture model the examples run with
        try requireCommands(["pnmtopng", "pgmtoppm"])
        let dir = try temporaryDirectory(self)
        let bin = URL(fileURLWithPath: toolPath("denoise")).deletingLastPathComponent().path
        let r = try sh("BIN='\(bin)' OUT='\(dir.path)/out' MODEL='\(Fixtures.path("sd1"))' STEPS=10 '\(Self.repo.path)/examples.sh'")
        XCTAssertEqual(r.status, 0, r.err)
        for f in ["input.png", "mask.png", "edited.png", "composited.png", "montage.png", "inverted.tensor", "mask.tensor", "edited.tensor"] {
            XCTAssert(FileManager.default.fileExists(atPath: "\(dir.path)/out/\(f)"), "examples.sh wrote out/\(f)")
        }
        // input | reconstruction | mask | edit | paper edit | pixel mask | pasted back: 7 × 64.
        let montage = try sh("pamfile '\(dir.path)/out/montage.ppm'")
        XCTAssert(String(decoding: montage.out, as: UTF8.self).contains("448 by 64"), String(decoding: montage.out, as: UTF8.self))
    }

    /// examples.sh METHOD=ledits: LEDITS++ through the same tools (no mask stage: the implicit
    /// masks come from the edit), with the fixture model whose UNet has cross-attention at a
    /// quarter of the latent (diffusers' attention grid).
    func testExamplesScriptRunsLEdits() throws {
        try Fixtures.require("sd1-ledits")
        try requireCommands(["pnmtopng", "pgmtoppm"])
        let dir = try temporaryDirectory(self)
        let bin = URL(fileURLWithPath: toolPath("denoise")).deletingLastPathComponent().path
        let r = try sh("BIN='\(bin)' OUT='\(dir.path)/out' MODEL='\(Fixtures.path("sd1-ledits"))' IMAGE='\(Fixtures.path("sd1-ledits/cat.ppm"))' METHOD=ledits STEPS=4 '\(Self.repo.path)/examples.sh'")
        XCTAssertEqual(r.status, 0, r.err)
        for f in ["ledits.tensor", "ledits-masks.tensor", "edited.tensor", "mask.png", "edited.png", "composited.png", "montage.png"] {
            XCTAssert(FileManager.default.fileExists(atPath: "\(dir.path)/out/\(f)"), "examples.sh METHOD=ledits wrote out/\(f)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir.path)/out/inverted.tensor"), "no DDIM inversion")
        let stack = try TensorStream.readAll(path: "\(dir.path)/out/ledits.tensor")
        XCTAssertEqual(stack.map(\.name), ["ledits.start", "ledits.noise"])
        XCTAssertEqual(stack[1].shape, [1, 4, 4, 8, 8], "STEPS=4 noise maps")
        // input | reconstruction | mask | edit | pixel mask | pasted back: 6 × 64.
        let montage = try sh("pamfile '\(dir.path)/out/montage.ppm'")
        XCTAssert(String(decoding: montage.out, as: UTF8.self).contains("384 by 64"), String(decoding: montage.out, as: UTF8.self))
        let bad = try sh("BIN='\(bin)' OUT='\(dir.path)/bad' METHOD=sdedit '\(Self.repo.path)/examples.sh'")
        XCTAssertNotEqual(bad.status, 0)
        XCTAssert(bad.err.contains("METHOD=sdedit: give diffedit or ledits"), bad.err)
    }

    /// examples/Makefile METHOD=ledits: the inversion, the edit and its implicit masks per image
    /// (NAME.ledits, NAME.edited, NAME.mask), the montage; a new target caption re-runs the edit
    /// and not the inversion (which takes no caption); METHOD=diffedit afterwards re-runs the edit.
    /// A scratch folder for examples/Makefile — images/cat.ppm (the fixture model's picture),
    /// src.txt "a photo of a cat" and dst.txt `target` — and the make command for the fixture
    /// model `model` with `settings`.
    func makeFolder(model: String, target: String, settings: String) throws -> (dir: URL, make: String) {
        try requireCommands(["make", "pnmtopng", "pgmtoppm", "pamfile"])
        let dir = try temporaryDirectory(self)
        let bin = URL(fileURLWithPath: toolPath("denoise")).deletingLastPathComponent().path
        let makefile = Self.repo.appendingPathComponent("examples/Makefile").path
        let setup = try sh("""
            cd '\(dir.path)' && mkdir images && cp '\(Fixtures.path("\(model)/cat.ppm"))' images/cat.ppm &&
            echo 'a photo of a cat' > src.txt && echo '\(target)' > dst.txt
            """)
        XCTAssertEqual(setup.status, 0, setup.err)
        return (dir, "make -f '\(makefile)' BIN='\(bin)' MODEL='\(Fixtures.path(model))' \(settings)")
    }

    func testMakefileLEdits() throws {
        try Fixtures.require("sd1-ledits")
        let (dir, make) = try makeFolder(model: "sd1-ledits", target: "a photo of a tiger", settings: "STEPS=4 METHOD=ledits")
        let bin = URL(fileURLWithPath: toolPath("denoise")).deletingLastPathComponent().path
        let makefile = Self.repo.appendingPathComponent("examples/Makefile").path
        let first = try sh("cd '\(dir.path)' && \(make)")
        XCTAssertEqual(first.status, 0, first.err)
        for suffix in ["posterior", "ledits", "edited", "mask", "mask.png", "edited.png", "montage.png"] {
            XCTAssert(FileManager.default.fileExists(atPath: dir.appendingPathComponent("out/cat.\(suffix)").path), "out/cat.\(suffix) kept")
        }
        let masks = try TensorStream.readAll(path: dir.appendingPathComponent("out/cat.mask").path)
        XCTAssertEqual(masks.map(\.name), ["mask", "masks"])
        XCTAssertEqual(try sh("cd '\(dir.path)' && \(make) -q").status, 0, "up to date after a build")
        try Data("a photo of a dog\n".utf8).write(to: dir.appendingPathComponent("dst.txt"))
        let touch = try sh("cd '\(dir.path)' && touch -d '+2 seconds' dst.txt")
        XCTAssertEqual(touch.status, 0, touch.err)
        let plan = String(decoding: try sh("cd '\(dir.path)' && \(make) -n").out, as: UTF8.self)
        XCTAssert(plan.contains("denoise --method ledits"), plan)
        XCTAssertFalse(plan.contains("invert "), "the LEDITS++ inversion takes no caption:\n\(plan)")
        XCTAssertFalse(plan.contains("noise-diff-mask"), plan)
        let diffedit = String(decoding: try sh("cd '\(dir.path)' && make -f '\(makefile)' BIN='\(bin)' MODEL='\(Fixtures.path("sd1-ledits"))' STEPS=4 -n").out, as: UTF8.self)
        XCTAssert(diffedit.contains("noise-diff-mask") && diffedit.contains("invert --quiet --prompt"), diffedit)
        let bad = try sh("cd '\(dir.path)' && make -f '\(makefile)' BIN='\(bin)' METHOD=sdedit -n")
        XCTAssertNotEqual(bad.status, 0)
        XCTAssert(bad.err.contains("METHOD=sdedit: give diffedit or ledits"), bad.err)
    }

    /// LORA and EMBEDDING in the Makefile: every tool that runs the text encoder or the UNet gets
    /// them (the outputs record the adapters), the captions can name an embedding's token, and a new
    /// scale re-runs what the LoRA shapes but not the VAE's encoding.
    func testMakefileLoRAAndEmbedding() throws {
        let lora = Fixtures.path("lora/sd1/detail-kohya.safetensors")
        let embedding = Fixtures.path("textual-inversion/sd1/cat-toy.safetensors")
        let (dir, make) = try makeFolder(model: "sd1", target: "a photo of a <cat-toy>",
                                         settings: "STEPS=4 EMBEDDING='\(embedding)'")
        let first = try sh("cd '\(dir.path)' && \(make) LORA='\(lora):0.5'")
        XCTAssertEqual(first.status, 0, first.err)
        for file in ["dst.tensor", "cat.mask", "cat.inverted", "cat.edited"] {
            let r = try XCTUnwrap(try TensorStream.readAll(path: dir.appendingPathComponent("out/\(file)").path).first)
            XCTAssertEqual(r.metadata["lora"], "\(lora):0.5", file)
        }
        let dst = try XCTUnwrap(try TensorStream.readAll(path: dir.appendingPathComponent("out/dst.tensor").path).first)
        XCTAssertEqual(dst.metadata["textual_inversion.tokens"], "[\"<cat-toy>\"]")
        XCTAssertEqual(try sh("cd '\(dir.path)' && \(make) LORA='\(lora):0.5' -q").status, 0, "up to date after a build")
        let plan = String(decoding: try sh("cd '\(dir.path)' && \(make) LORA='\(lora):0.25' -n").out, as: UTF8.self)
        for tool in ["encode-text", "noise-diff-mask", "invert --quiet", "denoise --quiet"] {
            XCTAssert(plan.contains(tool) && plan.contains("--lora '\(lora):0.25'"), "\(tool) re-runs with the new scale:\n\(plan)")
        }
        XCTAssertFalse(plan.contains("vae-encode"), "the posterior does not depend on the LoRA:\n\(plan)")
        let missing = try sh("cd '\(dir.path)' && \(make) LORA=nowhere.safetensors -n")
        XCTAssertNotEqual(missing.status, 0)
        XCTAssert(missing.err.contains("LORA/EMBEDDING names nowhere.safetensors, which does not exist"), missing.err)
    }

    /// examples/photo.sh on the demo scene at 4× and 5× (a 320×256 photo: not square, not the
    /// model's size): the edit comes back at the photo's size and depth, and every changed pixel
    /// lies within the feather (one mask cell of the region, bounded here by the region's width over
    /// 16) of the pixel mask it wrote (photo.mask.pgm) — the rest is the photo, byte for byte.
    func testPhotoScriptEditsAtThePhotosResolutionAndKeepsTheRest() throws {
        try requireCommands(["pamscale", "pamcut", "pamfile", "pnmtopng"])
        let dir = try temporaryDirectory(self)
        let bin = URL(fileURLWithPath: toolPath("denoise")).deletingLastPathComponent().path
        let photo = dir.appendingPathComponent("photo.ppm").path
        XCTAssertEqual(try sh("pamscale -xsize 320 -ysize 256 '\(DemoScene.scene)' > '\(photo)'").status, 0)
        let work = dir.appendingPathComponent("work").path
        let r = try sh("BIN='\(bin)' WORK='\(work)' '\(Self.repo.path)/examples/photo.sh' '\(photo)' '\(DemoScene.source)' '\(DemoScene.target)'")
        XCTAssertEqual(r.status, 0, r.err)
        let original = try RawNetpbm.parse(try [UInt8](Data(contentsOf: URL(fileURLWithPath: photo))))
        let edited = try RawNetpbm.parse(r.out)
        XCTAssertEqual([edited.width, edited.height, edited.depth, edited.maxval], [320, 256, 3, 255])
        let mask = try RawNetpbm.parse(try [UInt8](Data(contentsOf: URL(fileURLWithPath: work + "/photo.mask.pgm"))))
        XCTAssertEqual([mask.width, mask.height], [320, 256])
        var (x0, y0, x1, y1) = (Int.max, Int.max, -1, -1)
        for y in 0..<256 { for x in 0..<320 where mask.samples[y * 320 + x] > 0 {
            x0 = min(x0, x); y0 = min(y0, y); x1 = max(x1, x); y1 = max(y1, y)
        } }
        XCTAssertGreaterThan(x1, x0, "the pixel mask is empty")
        // The region is at most the photo's height (square, inside the photo): a cell ≤ 256/16 px.
        let feather = 256 / 16 + 1
        var changed = 0, outside = 0
        for y in 0..<256 { for x in 0..<320 {
            let k = (y * 320 + x) * 3
            guard original.samples[k..<(k + 3)] != edited.samples[k..<(k + 3)] else { continue }
            changed += 1
            if x < x0 - feather || x > x1 + feather || y < y0 - feather || y > y1 + feather { outside += 1 }
        } }
        XCTAssertGreaterThan(changed, 100, "the edit changed the photo")
        XCTAssertEqual(outside, 0, "\(outside) pixels changed beyond the feathered mask's box")
        // `make photos` runs the same recipe per image of a folder: the same picture.
        let folder = dir.appendingPathComponent("folder")
        try FileManager.default.createDirectory(at: folder.appendingPathComponent("images"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: photo, toPath: folder.appendingPathComponent("images/big.ppm").path)
        try (DemoScene.source + "\n").write(to: folder.appendingPathComponent("src.txt"), atomically: true, encoding: .utf8)
        try (DemoScene.target + "\r\n").write(to: folder.appendingPathComponent("dst.txt"), atomically: true, encoding: .utf8)
        let m = try sh("cd '\(folder.path)' && make -s -f '\(Self.repo.path)/examples/Makefile' BIN='\(bin)' photos")
        XCTAssertEqual(m.status, 0, m.err)
        XCTAssertEqual(try [UInt8](Data(contentsOf: folder.appendingPathComponent("out/big.photo.ppm"))), r.out)
        XCTAssert(FileManager.default.fileExists(atPath: folder.appendingPathComponent("out/big.photo.png").path))
    }
}
