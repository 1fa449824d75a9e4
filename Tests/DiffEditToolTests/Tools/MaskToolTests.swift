import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// Masks through the built tools: denoise taking grey image masks of any size, noise-diff-mask's --dilate and --soft-output, and the refusals of bad mask images.
final class MaskToolTests: XCTestCase {
    /// Runs noise-diff-mask and invert (8 steps) on the demo scene into `dir`.
    func prepare(_ dir: URL) throws {
        try DemoScene.prepare(dir)
        let r = try sh("""
            cd '\(dir.path)' && export DIFFEDIT_MODEL='\(DemoScene.model)'
            noise-diff-mask --source src.tensor --target dst.tensor --maps 2 < posterior.tensor > mask.tensor
            invert --prompt src.tensor --steps 8 < posterior.tensor > inverted.tensor
            """)
        XCTAssertEqual(r.status, 0, r.err)
    }

    /// noise-diff-mask's mask as a PGM at 1×, 2×, 4× and 8× the latent size, and as a PBM, edits
    /// exactly as the mask tensor does; a stretched PGM whose size is not a multiple of the grid
    /// too, when its area average keeps every cell on its side of 0.5.
    func testDenoiseTakesAGreyImageMaskOfAnySize() throws {
        try requireCommands(["pgmtopbm", "pamscale"])
        let dir = try temporaryDirectory(self)
        try prepare(dir)
        var script = "cd '\(dir.path)' && export DIFFEDIT_MODEL='\(DemoScene.model)'\n"
        script += "denoise --mask mask.tensor --prompt dst.tensor < inverted.tensor > ref.tensor\n"
        for k in [1, 2, 4, 8] {
            script += "tensor to-image --range 0:1 --scale \(k) mask.tensor > m\(k).pgm\n"
            script += "denoise --mask m\(k).pgm --prompt dst.tensor < inverted.tensor > e\(k).tensor\n"
        }
        script += "pgmtopbm -threshold -value 0.5 m4.pgm > m4.pbm && denoise --mask m4.pbm --prompt dst.tensor < inverted.tensor > pbm.tensor\n"
        let r = try sh(script)
        XCTAssertEqual(r.status, 0, r.err)
        let ref = try DemoScene.record("\(dir.path)/ref.tensor")
        let mask = try DemoScene.record("\(dir.path)/mask.tensor").floats()
        XCTAssertTrue(mask.contains(0) && mask.contains(1), "the mask must have both values, or this test proves nothing")
        for name in ["e1", "e2", "e4", "e8", "pbm"] {
            XCTAssertEqual(try DemoScene.record("\(dir.path)/\(name).tensor").floats(), ref.floats(), "\(name): an image mask edits as the tensor does")
        }
        // The loaded mask itself, at a size that is no multiple of the grid (stretched to 50×50):
        // each cell is the area average, thresholded at 0.5.
        XCTAssertEqual(try sh("cd '\(dir.path)' && pamscale -width 50 -height 50 -filter box m4.pgm > m50.pgm").status, 0)
        let loaded = try MaskImport.load("\(dir.path)/m50.pgm", folder: ModelFolder(root: DemoScene.model),
                                         latentHeight: 16, latentWidth: 16, pictureSize: (64, 64), allowNonfinite: false)
        let image = try NetpbmImage.readAll(try ByteReader(path: "\(dir.path)/m50.pgm"))[0]
        let average = MaskImport.reduce(image.samples, width: 50, height: 50, toWidth: 16, height: 16)
        XCTAssertEqual(loaded.shape, [1, 1, 16, 16])
        XCTAssertEqual(loaded.data, average.map { $0 >= 0.5 ? 1 : 0 })
        let differing = zip(loaded.data, mask).filter { $0 != $1 }.count
        XCTAssertLessThanOrEqual(differing, 8, "a stretched copy of the mask should come back nearly the same")
    }

    /// Hostile masks: one line, status 1, nothing written.
    func testDenoiseRefusesBadMaskImages() throws {
        let dir = try temporaryDirectory(self)
        try prepare(dir)
        let d = dir.path
        let stack = [UInt8](try Data(contentsOf: dir.appendingPathComponent("inverted.tensor")))
        func refuse(_ maskBytes: [UInt8], _ name: String, _ fragments: [String], extra: [String] = []) throws {
            let path = try Hostile.write(maskBytes, dir, name)
            let r = try runTool("denoise", ["--model", DemoScene.model, "--mask", path, "--prompt", "\(d)/dst.tensor"] + extra, stdin: stack)
            assertRefused(r, tool: "denoise", contains: fragments)
            XCTAssertTrue(r.out.isEmpty, "\(name): wrote \(r.out.count) bytes")
        }
        let grey64 = Array("P5\n64 64\n255\n".utf8) + [UInt8](repeating: 255, count: 64 * 64)
        try refuse(Hostile.ppm(width: 64, height: 64), "colour.ppm", ["--mask", "must be grey (PGM) or black and white (PBM)", "ppmtopgm"])
        try refuse(Array("P5\n64 32\n255\n".utf8) + [UInt8](repeating: 255, count: 64 * 32), "wide.pgm",
                   ["64x32", "not the shape of the encoded picture, 64x64", "pamscale -width 64 -height 64"])
        try refuse(Array(grey64.prefix(500)), "truncated.pgm", ["--mask", "truncated.pgm", "bad netpbm image"])
        try refuse(Array("P5\n0 64\n255\n".utf8), "empty-size.pgm", ["--mask", "empty-size.pgm"])
        try refuse(Array("P5\n64 64\n".utf8), "no-maxval.pgm", ["--mask", "no-maxval.pgm"])
        try refuse(grey64 + grey64, "two.pgm", ["2 masks for 1 images"])
        try refuse(Array("P7\nWIDTH 4\nHEIGHT 4\nDEPTH 2\nMAXVAL 255\nTUPLTYPE GRAYSCALE_ALPHA\nENDHDR\n".utf8) + [UInt8](repeating: 255, count: 32),
                   "alpha.pam", ["2 samples per pixel"])
        try refuse(Array("P5\n99999 99999\n255\n".utf8), "huge.pgm", ["--mask"])
        try refuse([], "empty.tensor", ["--mask", "empty input"])
        try refuse(Array("P9 not an image\n".utf8), "p9.pgm", ["--mask", "not a tensor stream"])
        // --dilate outside 0…64.
        try refuse(grey64, "ok-65.pgm", ["--dilate 65 is out of range: --dilate takes an integer from 0 to 64"], extra: ["--dilate", "65"])
        try refuse(grey64, "ok-neg.pgm", ["--dilate -1 is out of range: --dilate takes an integer from 0 to 64"], extra: ["--dilate", "-1"])
        let nd = try runTool("noise-diff-mask", ["--model", DemoScene.model, "--source", "\(d)/src.tensor", "--target", "\(d)/dst.tensor", "--dilate", "100"],
                             stdin: [UInt8](try Data(contentsOf: dir.appendingPathComponent("posterior.tensor"))))
        assertRefused(nd, tool: "noise-diff-mask", contains: ["--dilate 100 is out of range: --dilate takes an integer from 0 to 64"])
    }

    /// --dilate: noise-diff-mask's dilated mask is MaskDilation of its plain mask, and denoise
    /// --dilate N with the plain mask edits as the dilated mask does.
    func testDilateInBothToolsAgrees() throws {
        let dir = try temporaryDirectory(self)
        try prepare(dir)
        let r = try sh("""
            cd '\(dir.path)' && export DIFFEDIT_MODEL='\(DemoScene.model)'
            noise-diff-mask --source src.tensor --target dst.tensor --maps 2 --dilate 1 < posterior.tensor > mask1.tensor
            denoise --mask mask1.tensor --prompt dst.tensor < inverted.tensor > a.tensor
            denoise --mask mask.tensor --dilate 1 --prompt dst.tensor < inverted.tensor > b.tensor
            denoise --mask mask.tensor --prompt dst.tensor < inverted.tensor > plain.tensor
            """)
        XCTAssertEqual(r.status, 0, r.err)
        let plain = try DemoScene.record("\(dir.path)/mask.tensor"), dilated = try DemoScene.record("\(dir.path)/mask1.tensor")
        XCTAssertEqual(dilated.floats(), MaskDilation.dilate(plain.tensor(), cells: 1).data)
        XCTAssertEqual(dilated.metadata["dilate"], "1")
        XCTAssertGreaterThan(Double(dilated.metadata["fraction_ones"] ?? "0") ?? 0, Double(plain.metadata["fraction_ones"] ?? "1") ?? 1)
        let a = try DemoScene.record("\(dir.path)/a.tensor"), b = try DemoScene.record("\(dir.path)/b.tensor")
        XCTAssertEqual(a.floats(), b.floats())
        XCTAssertEqual(b.metadata["mask.dilate"], "1")
        XCTAssertNotEqual(a.floats(), try DemoScene.record("\(dir.path)/plain.tensor").floats(), "dilation must change the edit")
    }

    /// --soft-output: the mask on stdout and the soft map in FILE, from one run, each identical to
    /// its own run; refusals for a FILE that is an input, stdout or '-', or in a missing folder.
    func testSoftOutputWritesMaskAndMapFromOneRun() throws {
        let dir = try temporaryDirectory(self)
        try DemoScene.prepare(dir)
        let d = dir.path
        let base = "noise-diff-mask --model '\(DemoScene.model)' --source src.tensor --target dst.tensor --maps 2"
        let r = try sh("""
            cd '\(d)'
            \(base) --soft-output both-soft.tensor < posterior.tensor > both-mask.tensor
            \(base) < posterior.tensor > mask.tensor
            \(base) --soft < posterior.tensor > soft.tensor
            """)
        XCTAssertEqual(r.status, 0, r.err)
        let mask = try TensorStream.readAll(path: "\(d)/both-mask.tensor"), soft = try TensorStream.readAll(path: "\(d)/both-soft.tensor")
        XCTAssertEqual(mask.map(\.name), ["mask"])
        XCTAssertEqual(soft.map(\.name), ["mask.soft"])
        let refMask = try DemoScene.record("\(d)/mask.tensor"), refSoft = try DemoScene.record("\(d)/soft.tensor")
        XCTAssertEqual(mask[0].floats(), refMask.floats())
        XCTAssertEqual(mask[0].metadata, refMask.metadata)
        XCTAssertEqual(soft[0].floats(), refSoft.floats())
        XCTAssertEqual(soft[0].metadata, refSoft.metadata)
        XCTAssertTrue(Set(refSoft.floats()).count > 2, "the soft map must not be binary, or this test proves nothing")
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: d).contains { $0.hasSuffix(".tmp") }, "no temporary left")
        // denoise picks the record named mask, so the two files joined in one stream (soft map
        // first) still edit as the mask alone does.
        let joined = try sh("""
            cd '\(d)' && export DIFFEDIT_MODEL='\(DemoScene.model)'
            invert --prompt src.tensor --steps 4 < posterior.tensor > inverted.tensor
            cat both-soft.tensor both-mask.tensor > joined.tensor
            denoise --mask joined.tensor --prompt dst.tensor < inverted.tensor > e-joined.tensor
            denoise --mask both-mask.tensor --prompt dst.tensor < inverted.tensor > e-mask.tensor
            """)
        XCTAssertEqual(joined.status, 0, joined.err)
        XCTAssertEqual(try DemoScene.record("\(d)/e-joined.tensor").floats(), try DemoScene.record("\(d)/e-mask.tensor").floats())

        let posterior = [UInt8](try Data(contentsOf: dir.appendingPathComponent("posterior.tensor")))
        let args = ["--model", DemoScene.model, "--source", "\(d)/src.tensor", "--target", "\(d)/dst.tensor"]
        for (option, fragments) in [(["--soft-output", "\(d)/src.tensor"], ["is the input \(d)/src.tensor"]),
                                    (["--soft-output", "-"], ["--soft-output needs a file name"]),
                                    (["--soft-output", "\(d)/no/such/dir/soft.tensor"], ["cannot write in '\(d)/no/such/dir'"]),
                                    (["--soft-output", d], ["is a directory"]),
                                    (["--soft", "--soft-output", "\(d)/x.tensor"], ["--soft and --soft-output"])] {
            assertRefused(try runTool("noise-diff-mask", args + option, stdin: posterior), tool: "noise-diff-mask", contains: fragments)
        }
        XCTAssertEqual([UInt8](try Data(contentsOf: dir.appendingPathComponent("src.tensor"))).count > 0, true, "the input is intact")
        // The posterior given as a named input, and FILE is the posterior; FILE is standard output.
        let same = try sh("cd '\(d)' && \(base) --soft-output posterior.tensor posterior.tensor > out.tensor")
        assertRefused(same, tool: "noise-diff-mask", contains: ["is the input posterior.tensor"])
        XCTAssertEqual([UInt8](try Data(contentsOf: dir.appendingPathComponent("posterior.tensor"))), posterior, "the input is untouched")
        let stdout = try sh("cd '\(d)' && \(base) --soft-output o.tensor < posterior.tensor > o.tensor")
        assertRefused(stdout, tool: "noise-diff-mask", contains: ["is standard output"])
        let stdin = try sh("cd '\(d)' && cp posterior.tensor p2.tensor && \(base) --soft-output p2.tensor < p2.tensor > o2.tensor")
        assertRefused(stdin, tool: "noise-diff-mask", contains: ["is standard input"])
        XCTAssertEqual([UInt8](try Data(contentsOf: dir.appendingPathComponent("p2.tensor"))), posterior)
    }
}
