import Foundation
import XCTest
@testable import DiffEditCore

/// Masks from outside (denoise --mask IMAGE), --dilate, and noise-diff-mask --soft-output.
final class MaskImportTests: XCTestCase {
    // MARK: area average

    /// The area average against a brute-force one: each pixel split into 64 × 64 sub-samples, each
    /// counted in the cell its centre falls in.
    func testAreaAverageMatchesSupersampling() {
        for (w, h, cw, ch) in [(6, 6, 4, 4), (7, 5, 3, 2), (64, 48, 16, 12), (5, 3, 16, 12), (1, 1, 3, 3), (50, 50, 16, 16)] {
            var plane = [Float](repeating: 0, count: w * h)
            var state: UInt32 = 12345
            for i in plane.indices { state = state &* 1_664_525 &+ 1_013_904_223; plane[i] = Float(state >> 8) / Float(1 << 24) }
            let got = MaskImport.reduce(plane, width: w, height: h, toWidth: cw, height: ch)
            let sub = 64
            var sum = [Double](repeating: 0, count: cw * ch), count = [Double](repeating: 0, count: cw * ch)
            for y in 0..<(h * sub) {
                for x in 0..<(w * sub) {
                    // Centre of the sub-sample in pixel units → the cell it lies in.
                    let px = (Double(x) + 0.5) / Double(sub), py = (Double(y) + 0.5) / Double(sub)
                    let cx = Int(px * Double(cw) / Double(w)), cy = Int(py * Double(ch) / Double(h))
                    sum[cy * cw + cx] += Double(plane[(y / sub) * w + x / sub])
                    count[cy * cw + cx] += 1
                }
            }
            let want = zip(sum, count).map { $0 / $1 }
            _ = assertClose(got, want, atol: 2e-3, "area average \(w)x\(h) → \(cw)x\(ch)")
        }
        // Whole blocks: the block mean exactly; the weights of every cell sum to 1.
        XCTAssertEqual(MaskImport.reduce([0, 1, 1, 1, 0, 0, 0, 1], width: 4, height: 2, toWidth: 2, height: 1), [0.25, 0.75])
        for (n, m) in [(6, 4), (7, 3), (3, 16), (64, 16)] {
            for cell in MaskImport.areaWeights(from: n, to: m) {
                XCTAssertEqual(cell.map(\.1).reduce(0, +), 1, accuracy: 1e-12)
            }
        }
    }

    // MARK: threshold at 0.5, at its edge

    /// Writes a binary-maxval PGM (maxval 255) and loads it as denoise --mask does.
    func loadMask(_ pixels: [UInt8], width: Int, height: Int, cells: (w: Int, h: Int)) throws -> [Float] {
        let dir = try temporaryDirectory(self)
        let file = dir.appendingPathComponent("m.pgm")
        try Data(Array("P5\n\(width) \(height)\n255\n".utf8) + pixels).write(to: file)
        return try MaskImport.load(file.path, folder: ModelFolder(root: Fixtures.path("sd1")), latentHeight: cells.h,
                                   latentWidth: cells.w, pictureSize: nil, allowNonfinite: false).data
    }

    /// Cells of 8 × 8 pixels with n of 64 white: edited exactly when n ≥ 32 (half or more), so
    /// 0.39, 0.41, 0.45, 0.48 keep and 0.5 edits. The expectation is counted, not computed by
    /// MaskImport: a threshold of 0.4, or > for ≥, fails here.
    func testBinaryCellsAreEditedFromHalfWhiteOn() throws {
        let counts = [0, 1, 25, 26, 27, 29, 30, 31, 32, 33, 40, 63, 64, 31, 32, 16]
        var pixels = [UInt8](repeating: 0, count: 32 * 32)
        for (cell, n) in counts.enumerated() {
            let cx = cell % 4, cy = cell / 4
            for k in 0..<n { pixels[(cy * 8 + k / 8) * 32 + cx * 8 + k % 8] = 255 }
        }
        let mask = try loadMask(pixels, width: 32, height: 32, cells: (4, 4))
        XCTAssertEqual(mask, counts.map { $0 >= 32 ? 1 : 0 })
    }

    /// Uniform grey cells: 127/255 (0.498) keeps, 128/255 (0.502) edits; 102/255 (0.4) keeps.
    func testGreyCellsAreThresholdedAtHalf() throws {
        let levels: [UInt8] = [0, 102, 115, 127, 128, 140, 200, 255, 127]
        var pixels = [UInt8](repeating: 0, count: 24 * 24)
        for (cell, v) in levels.enumerated() {
            let cx = cell % 3, cy = cell / 3
            for y in 0..<8 { for x in 0..<8 { pixels[(cy * 8 + y) * 24 + cx * 8 + x] = v } }
        }
        XCTAssertEqual(try loadMask(pixels, width: 24, height: 24, cells: (3, 3)), levels.map { 2 * Int($0) >= 255 ? 1 : 0 })
    }

    /// A mask stretched to 1.5 pixels per cell: each cell averages 2/3 and 1/3 of its pixels
    /// per axis. The expectation is the exact rational mean of the 3 × 3 sub-pixels of the
    /// image doubled (each pixel 2 × 2), edited when 2·sum ≥ 9·255 (never a tie: 9·255 is odd).
    func testStretchedMaskCellsAreExactAreaAverages() throws {
        var state: UInt32 = 7
        var seen = Set<Float>()
        for _ in 0..<20 {
            var pixels = [UInt8](repeating: 0, count: 6 * 6)
            for i in pixels.indices { state = state &* 1_664_525 &+ 1_013_904_223; pixels[i] = UInt8(96 + (state >> 24) % 64) }
            var want: [Float] = []
            for cy in 0..<4 {
                for cx in 0..<4 {
                    var sum = 0
                    for y in (cy * 3)..<(cy * 3 + 3) { for x in (cx * 3)..<(cx * 3 + 3) { sum += Int(pixels[(y / 2) * 6 + x / 2]) } }
                    want.append(2 * sum >= 9 * 255 ? 1 : 0)
                }
            }
            XCTAssertEqual(try loadMask(pixels, width: 6, height: 6, cells: (4, 4)), want)
            seen.formUnion(want)
        }
        XCTAssertEqual(seen, [0, 1], "cells on both sides of the threshold, or this test proves nothing")
    }

    // MARK: dilation

    func testDilationIsASquareOfSide2NPlus1ClippedAtTheBorder() {
        var plane = [Float](repeating: 0, count: 49)
        plane[3 * 7 + 3] = 1
        let one = MaskDilation.dilate(Tensor(shape: [1, 1, 7, 7], data: plane), cells: 1).data
        for y in 0..<7 { for x in 0..<7 { XCTAssertEqual(one[y * 7 + x], abs(y - 3) <= 1 && abs(x - 3) <= 1 ? 1 : 0, "(\(x), \(y))") } }
        let two = MaskDilation.dilate(Tensor(shape: [1, 1, 7, 7], data: plane), cells: 2).data
        XCTAssertEqual(two.reduce(0, +), 25)
        XCTAssertEqual(MaskDilation.dilate(Tensor(shape: [1, 1, 7, 7], data: plane), cells: 0).data, plane)
        // A corner cell; two planes of a batch, each on its own.
        var corner = [Float](repeating: 0, count: 2 * 49)
        corner[0] = 1
        let c = MaskDilation.dilate(Tensor(shape: [2, 1, 7, 7], data: corner), cells: 2).data
        XCTAssertEqual(c[0..<49].reduce(0, +), 9)
        XCTAssertEqual(c[49..<98].reduce(0, +), 0)
        XCTAssertEqual(MaskDilation.dilate(Tensor(shape: [1, 1, 7, 7], data: plane), cells: 64).data.reduce(0, +), 49)
    }

    // MARK: through the tools

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
