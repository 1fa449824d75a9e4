import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// `--scheduler dpm` and `denoise --eta` through the built tools, against diffusers' results in
/// Tests/Fixtures/{sd1,sd2}/ref/schedulers.tensor, and the refusals that go with them.
extension DiffEditToolTests {
    func steps(of r: TensorRecord) throws -> Int {
        let args = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(try XCTUnwrap(r.metadata["args_json"]).utf8)) as? [String: Any])
        return try XCTUnwrap(args["num_inference_steps"] as? Int)
    }

    func testDPMPipelineOfToolsMatchesDiffusers() throws {
        for key in ["sd1", "sd2"] {
            let c = try fixtureCase(key)
            let refs = try Fixtures.records("\(key)/ref/schedulers.tensor")
            let want = try XCTUnwrap(refs["dpm.edited.latents"])
            let dir = try temporaryDirectory(self)
            let m = "--model '\(c.model)'"
            let s = "--steps \(try steps(of: want)) --scheduler dpm"
            let err = try run("""
                tokenize \(m) '\(c.source)' | encode-text \(m) > src.tensor
                tokenize \(m) '\(c.target)' | encode-text \(m) > tgt.tensor
                vae-encode \(m) < '\(c.model)/cat.ppm' > post.tensor
                noise-diff-mask \(m) --source src.tensor --target tgt.tensor \(s) --seed 0 < post.tensor > mask.tensor
                noise-diff-mask \(m) --source src.tensor --target tgt.tensor \(s) --seed 0 --threshold-ratio 2.1 < post.tensor > dense.tensor
                invert \(m) --prompt src.tensor \(s) --seed 0 < post.tensor > inv.tensor
                denoise \(m) --mask dense.tensor --prompt tgt.tensor --negative src.tensor < inv.tensor > edit.tensor
                denoise \(m) --mask dense.tensor --prompt tgt.tensor --negative src.tensor --scheduler dpm < inv.tensor > edit2.tensor
                vae-decode \(m) < edit.tensor > edit.ppm
                """, in: dir)
            XCTAssertEqual(err, "", key)
            let mask = try read(dir.appendingPathComponent("mask.tensor"), "mask")
            XCTAssertEqual(mask.floats(), try XCTUnwrap(refs["dpm.mask"]).floats(), "\(key) DPM mask")
            XCTAssertEqual(mask.metadata["scheduler"], "dpm")
            XCTAssertEqual(mask.metadata["timestep"], "\(try XCTUnwrap(refs["dpm.mask.timestep"]).int32s()[0])", "\(key) DPM encode timestep")
            XCTAssertEqual(try read(dir.appendingPathComponent("dense.tensor"), "mask").floats(),
                           try XCTUnwrap(refs["dpm.mask.dense"]).floats(), "\(key) DPM dense mask")
            let inv = try read(dir.appendingPathComponent("inv.tensor"), "inverted")
            XCTAssertEqual(inv.metadata["scheduler"], "dpm", "invert records its scheduler in the stack")
            let ci = assertClose(inv.floats(), try XCTUnwrap(refs["dpm.inverted"]).floats(), atol: Tolerance.editedFromImage, "\(key) DPM inverted (tools)")
            let edited = try read(dir.appendingPathComponent("edit.tensor"), "latents")
            XCTAssertEqual(edited.metadata["scheduler"], "dpm", "denoise takes the stack's scheduler")
            XCTAssertEqual(try read(dir.appendingPathComponent("edit2.tensor"), "latents").floats(), edited.floats(), "explicit --scheduler dpm")
            let ce = assertClose(edited.floats(), want.floats(), atol: Tolerance.editedFromImage, "\(key) DPM edited latents (tools)")
            let image = try XCTUnwrap(try NetpbmImage.readAll(try ByteReader(path: dir.appendingPathComponent("edit.ppm").path)).first)
            let cu = assertClose(image.samples.map { ($0 * 255).rounded() }, try XCTUnwrap(refs["dpm.edited.u8"]).floats(), atol: 1,
                                 "\(key) DPM 8-bit image within ±1")
            print("\(key) DPM tools: inverted max err \(ci.maxAbsError), edited max err \(ce.maxAbsError), u8 worst \(cu.maxAbsError)")
        }
    }

    func testEtaThroughDenoiseMatchesDiffusers() throws {
        for key in ["sd1", "sd2"] {
            let c = try fixtureCase(key)
            let refs = try Fixtures.records("\(key)/ref/schedulers.tensor")
            let dir = try temporaryDirectory(self)
            let m = "--model '\(c.model)'"
            let s = "--steps \(c.steps)"
            _ = try run("""
                tokenize \(m) '\(c.source)' | encode-text \(m) > src.tensor
                tokenize \(m) '\(c.target)' | encode-text \(m) > tgt.tensor
                vae-encode \(m) < '\(c.model)/cat.ppm' > post.tensor
                noise-diff-mask \(m) --source src.tensor --target tgt.tensor \(s) --seed 0 --threshold-ratio 2.1 < post.tensor > dense.tensor
                invert \(m) --prompt src.tensor \(s) --seed 0 < post.tensor > inv.tensor
                denoise \(m) --mask dense.tensor --prompt tgt.tensor --negative src.tensor --eta 0.5 --seed 0 < inv.tensor > eta05.tensor
                denoise \(m) --mask dense.tensor --prompt tgt.tensor --negative src.tensor --eta 1 < inv.tensor > eta1.tensor
                denoise \(m) --mask dense.tensor --prompt tgt.tensor --negative src.tensor --eta 1 --seed 7 < inv.tensor > eta1s7.tensor
                """, in: dir)
            XCTAssertEqual(try read(dir.appendingPathComponent("dense.tensor"), "mask").floats(), try XCTUnwrap(refs["eta.mask"]).floats(), key)
            for (file, eta) in [("eta05", "0.5"), ("eta1", "1.0")] {
                let got = try read(dir.appendingPathComponent("\(file).tensor"), "latents")
                XCTAssertEqual(got.metadata["eta"], eta)
                XCTAssertEqual(got.metadata["seed"], "0")
                let ce = assertClose(got.floats(), try XCTUnwrap(refs["eta-\(eta).edited.latents"]).floats(), atol: Tolerance.editedFromImage,
                                     "\(key) denoise --eta \(eta) (tools)")
                print("\(key) denoise --eta \(eta) tools: edited max err \(ce.maxAbsError)")
            }
            let other = try read(dir.appendingPathComponent("eta1s7.tensor"), "latents").floats()
            XCTAssertGreaterThan(closeness(other, try read(dir.appendingPathComponent("eta1.tensor"), "latents").floats(), atol: 0).maxAbsError, 0.01,
                                 "--seed chooses η's noise")
        }
    }

    func testSchedulerAndEtaRefusals() throws {
        let c = try fixtureCase("sd1")
        let dir = try temporaryDirectory(self)
        let m = "--model '\(c.model)'"
        _ = try run("""
            tokenize \(m) '\(c.source)' | encode-text \(m) > src.tensor
            tokenize \(m) '\(c.target)' | encode-text \(m) > tgt.tensor
            vae-encode \(m) < '\(c.model)/cat.ppm' > post.tensor
            noise-diff-mask \(m) --source src.tensor --target tgt.tensor --steps 10 --maps 2 < post.tensor > mask.tensor
            invert \(m) --prompt src.tensor --steps 10 < post.tensor > ddim.tensor
            invert \(m) --prompt src.tensor --steps 10 --scheduler dpm < post.tensor > dpm.tensor
            """, in: dir)
        XCTAssertEqual(try read(dir.appendingPathComponent("ddim.tensor"), "inverted").metadata["scheduler"], "ddim")
        // A stack that names a scheduler this denoise does not know.
        var records = try TensorStream.readAll(path: dir.appendingPathComponent("ddim.tensor").path)
        records[0].metadata["scheduler"] = "euler"
        try Data(records.flatMap(TensorStream.encode)).write(to: dir.appendingPathComponent("euler.tensor"))
        // One made before --scheduler existed (no key): DDIM.
        records[0].metadata["scheduler"] = nil
        try Data(records.flatMap(TensorStream.encode)).write(to: dir.appendingPathComponent("old.tensor"))

        func refused(_ script: String, _ phrase: String, file: StaticString = #filePath, line: UInt = #line) throws {
            assertRefused(try sh("cd '\(dir.path)' && " + script), tool: "denoise", contains: [phrase], file: file, line: line)
        }
        let d = "denoise \(m) --mask mask.tensor --prompt tgt.tensor"
        try refused("\(d) --scheduler dpm < ddim.tensor > /dev/null", "--scheduler dpm differs from the scheduler the stack was inverted with (ddim)")
        try refused("\(d) --scheduler ddim < dpm.tensor > /dev/null", "--scheduler ddim differs from the scheduler the stack was inverted with (dpm)")
        try refused("\(d) < euler.tensor > /dev/null", "names scheduler 'euler'")
        try refused("\(d) --eta 0.5 < dpm.tensor > /dev/null", "--eta 0.5 applies to the DDIM scheduler only")
        for bad in ["1.5", "-0.25", "nan", "inf"] {
            try refused("\(d) --eta=\(bad) < ddim.tensor > /dev/null", "--eta takes")
        }
        let ok = try sh("cd '\(dir.path)' && \(d) --scheduler ddim < old.tensor > old-edit.tensor && \(d) < ddim.tensor > edit.tensor")
        XCTAssertEqual(ok.status, 0, ok.err)
        XCTAssertEqual(try read(dir.appendingPathComponent("old-edit.tensor"), "latents").floats(),
                       try read(dir.appendingPathComponent("edit.tensor"), "latents").floats(), "a stack without the key is a DDIM stack")
        let r = try sh("cd '\(dir.path)' && invert \(m) --prompt src.tensor --scheduler euler < post.tensor > /dev/null")
        XCTAssertNotEqual(r.status, 0)
        XCTAssert(r.err.contains("--scheduler"), r.err)
    }
}
