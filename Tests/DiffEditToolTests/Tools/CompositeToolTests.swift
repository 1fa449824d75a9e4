import Foundation
import XCTest
import DiffEditTestSupport
@testable import DiffEditCore

/// A raw netpbm image as bytes, written and parsed here without the code under test.
struct RawNetpbm: Equatable {
    var width: Int
    var height: Int
    var depth: Int
    var maxval: Int
    var tupleType: String  // "" for P5/P6
    var samples: [Int]

    var bytes: [UInt8] {
        var header: String
        switch (tupleType, depth) {
        case ("", 1): header = "P5\n\(width) \(height)\n\(maxval)\n"
        case ("", 3): header = "P6\n\(width) \(height)\n\(maxval)\n"
        default: header = "P7\nWIDTH \(width)\nHEIGHT \(height)\nDEPTH \(depth)\nMAXVAL \(maxval)\nTUPLTYPE \(tupleType)\nENDHDR\n"
        }
        var out = Array(header.utf8)
        for s in samples { if maxval > 255 { out += [UInt8(s >> 8), UInt8(s & 255)] } else { out.append(UInt8(s)) } }
        return out
    }

    /// Parses raw P5, P6 or P7 (no comments: what libnetpbm writes).
    static func parse(_ b: [UInt8]) throws -> RawNetpbm {
        var i = 0
        func token() -> String {
            while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x09 || b[i] == 0x0D { i += 1 }
            let s = i
            while i < b.count, !(b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x09 || b[i] == 0x0D) { i += 1 }
            return String(decoding: b[s..<i], as: UTF8.self)
        }
        let magic = token()
        var w = 0, h = 0, d = 0, m = 0, tuple = ""
        if magic == "P7" {
            while true {
                let key = token()
                if key == "ENDHDR" { break }
                let v = token()
                switch key {
                case "WIDTH": w = Int(v)!
                case "HEIGHT": h = Int(v)!
                case "DEPTH": d = Int(v)!
                case "MAXVAL": m = Int(v)!
                case "TUPLTYPE": tuple = v
                default: throw ToolError("unknown PAM key \(key)")
                }
            }
        } else if magic == "P5" || magic == "P6" {
            w = Int(token())!; h = Int(token())!; m = Int(token())!
            d = magic == "P5" ? 1 : 3
        } else { throw ToolError("not raw netpbm: \(magic)") }
        i += 1  // the one whitespace after the header
        let n = w * h * d, per = m > 255 ? 2 : 1
        guard b.count - i == n * per else { throw ToolError("raster is \(b.count - i) bytes, expected \(n * per)") }
        var s = [Int](repeating: 0, count: n)
        for k in 0..<n { s[k] = per == 2 ? Int(b[i + 2 * k]) << 8 | Int(b[i + 2 * k + 1]) : Int(b[i + k]) }
        return RawNetpbm(width: w, height: h, depth: d, maxval: m, tupleType: tuple, samples: s)
    }
}

/// `composite` end to end: every pixel the feathered mask does not reach is the original's, byte
/// for byte, in every format; the refusals.
final class CompositeToolTests: XCTestCase {
    /// Deterministic samples (an LCG), so a failure reproduces.
    static func noise(_ n: Int, maxval: Int, seed: UInt64) -> [Int] {
        var s = seed
        return (0..<n).map { _ in
            s = s &* 6364136223846793005 &+ 1442695040888963407
            return Int((s >> 33) % UInt64(maxval + 1))
        }
    }

    /// A 16×16 soft map with a blob and a lone cell.
    static func softMask() -> TensorRecord {
        var v = [Float](repeating: 0, count: 256)
        for y in 0..<16 { for x in 0..<16 {
            let d = (Float(x) - 6.3) * (Float(x) - 6.3) + (Float(y) - 9.1) * (Float(y) - 9.1)
            v[y * 16 + x] = max(0, min(1, 1.2 - d / 12))
        } }
        v[2 * 16 + 13] = 0.9
        return TensorRecord(name: "mask.soft", shape: [1, 1, 16, 16], floats: v)
    }

    /// The pixels a mask reaches: within distance < feather of an inside pixel (brute force over
    /// the mask's border pixels — the nearest inside pixel to an outside one is on the border).
    static func reached(_ mask: [Bool], width w: Int, height h: Int, feather: Int) -> [Bool] {
        var out = mask
        guard feather > 0 else { return out }
        var disc: [(Int, Int)] = []
        for dy in -feather...feather { for dx in -feather...feather where dx * dx + dy * dy < feather * feather { disc.append((dx, dy)) } }
        for y in 0..<h { for x in 0..<w where mask[y * w + x] {
            let border = [(1, 0), (-1, 0), (0, 1), (0, -1)].contains { dx, dy in
                let (xx, yy) = (x + dx, y + dy)
                return xx < 0 || yy < 0 || xx >= w || yy >= h || !mask[yy * w + xx]
            }
            guard border else { continue }
            for (dx, dy) in disc {
                let (xx, yy) = (x + dx, y + dy)
                if xx >= 0 && yy >= 0 && xx < w && yy < h { out[yy * w + xx] = true }
            }
        } }
        return out
    }

    func testUnreachedPixelsAreTheOriginalsInEveryFormat() throws {
        try requireCommands(["pamfile"])
        let dir = try temporaryDirectory(self)
        let maskPath = try Hostile.write(TensorStream.encode(Self.softMask()), dir, "soft.tensor")
        let (w, h) = (333, 517)
        let formats: [(depth: Int, maxval: Int, tuple: String)] = [
            (3, 255, ""), (3, 65535, ""), (1, 255, ""), (1, 65535, ""), (4, 255, "RGB_ALPHA"), (4, 65535, "RGB_ALPHA"), (3, 255, "RGB"),
        ]
        var cases = 0
        for (k, f) in formats.enumerated() {
            for region in [nil, PixelBox(x: 101, y: 203, width: 151, height: 150)] {
                // Noise over a quarter of the levels, and three quarters more on the ellipse where
                // the soft map's blob is above 0.5 (2.9 cells around cell (6.8, 9.6) of the region):
                // the refinement, on by default, has an edge to follow (on noise alone it would
                // smooth the blob away, leaving nothing to test).
                let box = region ?? PixelBox(x: 0, y: 0, width: w, height: h)
                let (cw, ch) = (Double(box.width) / 16, Double(box.height) / 16)
                let noise = Self.noise(w * h * f.depth, maxval: f.maxval / 4, seed: UInt64(k))
                let samples = noise.indices.map { i -> Int in
                    let (x, y) = ((i / f.depth) % w, (i / f.depth) / w)
                    let (u, v) = ((Double(x - box.x) + 0.5) / cw - 6.8, (Double(y - box.y) + 0.5) / ch - 9.6)
                    return noise[i] + (u * u + v * v < 2.9 * 2.9 ? f.maxval * 3 / 4 : 0)
                }
                let original = RawNetpbm(width: w, height: h, depth: f.depth, maxval: f.maxval, tupleType: f.tuple, samples: samples)
                let origPath = try Hostile.write(original.bytes, dir, "orig\(k).pam")
                // A white edit, 8 or 16 bits: where the weight is 1 the output is the original's maxval.
                let editMax = k % 2 == 0 ? 65535 : 255
                let edit = RawNetpbm(width: 64, height: 64, depth: 3, maxval: editMax, tupleType: "",
                                     samples: [Int](repeating: editMax, count: 64 * 64 * 3))
                let feather = k == 0 && region == nil ? nil : 5
                let maskOut = dir.appendingPathComponent("pixels\(k)-\(region == nil).pgm").path
                var args = ["--original", origPath, "--mask", maskPath, "--mask-output", maskOut]
                if let feather { args += ["--feather", "\(feather)"] }
                if let region { args += ["--region", region.description] }
                // The refinement at its defaults (guided by the original and the edit), off, and
                // guided by the original alone: the exactness holds for each.
                if k == 1 { args += ["--refine", "0"] }
                if k == 2 { args += ["--refine", "9", "--refine-eps", "0.001", "--refine-guide", "original"] }
                let r = try runTool("composite", args, stdin: edit.bytes)
                XCTAssertEqual(r.status, 0, r.err)
                guard r.status == 0 else { continue }
                let out = try RawNetpbm.parse(r.out)
                XCTAssertEqual([out.width, out.height, out.depth, out.maxval], [w, h, f.depth, f.maxval])
                XCTAssertEqual(out.tupleType, f.tuple, "tuple type of case \(k)")
                let pixels = try RawNetpbm.parse(Array(try Data(contentsOf: URL(fileURLWithPath: maskOut))))
                XCTAssertEqual([pixels.width, pixels.height, pixels.depth], [w, h, 1])
                // The mask within the region, and nothing outside it.
                var inside = [Bool](repeating: false, count: box.width * box.height)
                for y in 0..<h { for x in 0..<w where pixels.samples[y * w + x] != 0 {
                    XCTAssertTrue(box.contains(PixelBox(x: x, y: y, width: 1, height: 1)), "mask pixel (\(x), \(y)) outside the region")
                    inside[(y - box.y) * box.width + x - box.x] = true
                } }
                XCTAssertTrue(inside.contains(true), "case \(k) region \(region?.description ?? "-"): empty pixel mask")
                // Default feather: half a mask cell, 333/16/2 = 10.4, rounded = 10.
                let reach = Self.reached(inside, width: box.width, height: box.height, feather: feather ?? 10)
                var same = 0, changed = 0
                for y in 0..<h {
                    for x in 0..<w {
                        let inBox = x >= box.x && y >= box.y && x < box.x + box.width && y < box.y + box.height
                        let p = (y * w + x) * f.depth
                        let reachedHere = inBox && reach[(y - box.y) * box.width + x - box.x]
                        if !reachedHere {
                            if Array(out.samples[p..<(p + f.depth)]) != Array(original.samples[p..<(p + f.depth)]) {
                                XCTFail("case \(k) region \(region?.description ?? "-"): pixel (\(x), \(y)) is not reached but changed")
                                return
                            }
                            same += 1
                        } else if inBox && inside[(y - box.y) * box.width + x - box.x] {
                            // Weight 1: the white edit at the original's maxval; alpha as it was.
                            for c in 0..<min(f.depth, 3) where f.depth != 2 { XCTAssertEqual(out.samples[p + c], f.maxval) }
                            if f.depth == 4 { XCTAssertEqual(out.samples[p + 3], original.samples[p + 3], "alpha kept") }
                            changed += 1
                        }
                    }
                }
                XCTAssertGreaterThan(same, 0)
                XCTAssertGreaterThan(changed, 0)
                cases += 1
            }
        }
        XCTAssertEqual(cases, 14)
    }

    /// A PGM mask image instead of a stream; a grey original takes the edit's luma; plain PPM
    /// input comes out raw with the same samples where unreached; a 16-bit edit into 8 bits.
    func testMaskImageGreyOriginalAndFeatherZero() throws {
        let dir = try temporaryDirectory(self)
        let (w, h) = (40, 30)
        let original = RawNetpbm(width: w, height: h, depth: 1, maxval: 255, tupleType: "", samples: [Int](repeating: 100, count: w * h))
        let orig = try Hostile.write(original.bytes, dir, "grey.pgm")
        // Mask image 8×6: the left half white.
        var m = [Int](repeating: 0, count: 48)
        for y in 0..<6 { for x in 0..<4 { m[y * 8 + x] = 255 } }
        let mask = try Hostile.write(RawNetpbm(width: 8, height: 6, depth: 1, maxval: 255, tupleType: "", samples: m).bytes, dir, "m.pgm")
        // Edit: pure red, 16 bits: luma 0.299 · 255 = 76.2 → 76.
        let edit = RawNetpbm(width: 16, height: 12, depth: 3, maxval: 65535, tupleType: "",
                             samples: (0..<(16 * 12)).flatMap { _ in [65535, 0, 0] })
        let r = try runTool("composite", ["--original", orig, "--mask", mask, "--feather", "0"], stdin: edit.bytes)
        XCTAssertEqual(r.status, 0, r.err)
        let out = try RawNetpbm.parse(r.out)
        XCTAssertEqual(out.depth, 1)
        // Bilinear of a half-white 8-wide mask to 40 columns: above 0.5 for x < 20 exactly.
        for y in 0..<h { for x in 0..<w { XCTAssertEqual(out.samples[y * w + x], x < 20 ? 76 : 100, "(\(x), \(y))") } }
    }

    func testRefusals() throws {
        let dir = try temporaryDirectory(self)
        let d = dir.path
        let orig = try Hostile.write(RawNetpbm(width: 30, height: 20, depth: 3, maxval: 255, tupleType: "",
                                               samples: [Int](repeating: 9, count: 1800)).bytes, dir, "o.ppm")
        let edit = RawNetpbm(width: 16, height: 16, depth: 3, maxval: 255, tupleType: "", samples: [Int](repeating: 200, count: 768)).bytes
        let good = try Hostile.write(TensorStream.encode(Self.softMask()), dir, "m.tensor")
        _ = try Hostile.write(TensorStream.encode(TensorRecord(name: "mask", shape: [1, 1, 4, 8], floats: [Float](repeating: 1, count: 32))), dir, "wide.tensor")
        _ = try Hostile.write(TensorStream.encode(TensorRecord(name: "latents", shape: [1, 1, 4, 4], floats: [Float](repeating: 1, count: 16))), dir, "latents.tensor")
        _ = try Hostile.write(TensorStream.encode(TensorRecord(name: "mask.soft", shape: [1, 1, 4, 4], floats: [0, .nan] + [Float](repeating: 1, count: 14))), dir, "nan.tensor")
        _ = try Hostile.write(TensorStream.encode(TensorRecord(name: "mask.soft", shape: [1, 1, 4, 4], floats: [Float](repeating: 1, count: 16),
                                                               metadata: ["region": "0,0,10,10", "region.of": "30x20"])), dir, "cut.tensor")
        let cases: [([String], [UInt8], [String])] = [
            (["--original", orig, "--mask", good, "--region", "20,10,11,10"], edit, ["--region 20,10,11,10 is not inside the 30x20 original"]),
            (["--original", orig, "--mask", good, "--region", "1,2,3"], edit, ["--region '1,2,3' is not X,Y,W,H"]),
            (["--original", orig, "--mask", "\(d)/wide.tensor"], edit, ["--mask", "not the shape of the 16x16 edit"]),
            (["--original", orig, "--mask", good], [], ["stdin: empty input"]),
            (["--original", orig, "--mask", "\(d)/latents.tensor"], edit, ["has no record 'mask' or 'mask.soft'"]),
            (["--original", orig, "--mask", "\(d)/nan.tensor"], edit, ["NaN"]),
            (["--original", orig, "--mask", "\(d)/cut.tensor"], edit, ["was cut from the region 0,0,10,10", "give --region 0,0,10,10"]),
            (["--original", orig, "--mask", good, "--mask-output", orig], edit, ["--mask-output", "is the input \(orig)"]),
            (["--original", "-", "--mask", good], edit, ["--original and EDITED each read stdin"]),
            (["--original", orig, "--mask", good, "--threshold", "1"], edit, ["--threshold 1 is out of range: --threshold takes a number from 0, below 1"]),
            (["--original", orig, "--mask", good, "--feather", "-1"], edit, ["--feather -1 is out of range"]),
            (["--original", orig, "--mask", good, "--refine", "-1"], edit, ["--refine -1 is out of range"]),
            (["--original", orig, "--mask", good, "--refine-eps", "0"], edit, ["--refine-eps 0 is out of range"]),
        ]
        for (args, stdin, fragments) in cases {
            let r = try runTool("composite", args, stdin: stdin)
            assertRefused(r, tool: "composite", contains: fragments)
            XCTAssertEqual(r.out, [], "\(args) wrote output")
        }
        // With the right --region, the cut mask is taken.
        let ok = try runTool("composite", ["--original", orig, "--mask", "\(d)/cut.tensor", "--region", "0,0,10,10"], stdin: edit)
        XCTAssertEqual(ok.status, 0, ok.err)
    }

    /// tensor bbox and tensor cut through the tool.
    func testTensorBBoxAndCut() throws {
        let dir = try temporaryDirectory(self)
        // A 16×8 mask of a 320×160 picture (20 pixels a cell): cells x 4...5, y 3.
        var v = [Float](repeating: 0, count: 128)
        for x in 4...5 { v[3 * 16 + x] = 1 }
        let mask = try Hostile.write(TensorStream.encode(TensorRecord(name: "mask", shape: [1, 1, 8, 16], floats: v, metadata: ["model.fingerprint": "abc"])), dir, "m.tensor")
        func bbox(_ args: [String]) throws -> String {
            let r = try runTool("tensor", ["bbox"] + args + [mask])
            XCTAssertEqual(r.status, 0, r.err)
            return String(decoding: r.out, as: UTF8.self)
        }
        // Tight box: x 80..<120, y 60..<80 in a 320×160 picture (20×10 pixels a cell).
        XCTAssertEqual(try bbox(["--size", "320x160", "--margin", "0", "--aspect", "2:1"]), "80 60 40 20\n")
        XCTAssertEqual(try bbox(["--size", "320x160", "--margin", "10"]), "70 40 60 60\n")
        XCTAssertEqual(try bbox(["--size", "320x160"]), "40 10 120 120\n")  // default margin: two cells (40 px)
        XCTAssertEqual(try bbox(["--margin", "0"]), "4 3 2 2\n")  // the mask's own size: 2×1 cells grown to 2×2 about y 3.5
        XCTAssertEqual(try bbox(["--size", "320x160", "--margin", "1000"]), "80 0 160 160\n")  // shrunk to fit
        let empty = try Hostile.write(TensorStream.encode(TensorRecord(name: "mask.soft", shape: [1, 1, 4, 4], floats: [Float](repeating: 0.5, count: 16))), dir, "e.tensor")
        let r = try runTool("tensor", ["bbox", empty])
        XCTAssertEqual(r.status, 3, r.err)
        XCTAssertEqual(r.err.split(separator: "\n").count, 1, r.err)
        XCTAssertTrue(r.err.contains("empty"), r.err)
        XCTAssertEqual(r.out, [])
        // tensor cut: the whole picture at the mask's size is the mask; a known box.
        let whole = try runTool("tensor", ["cut", "--box", "0,0,320,160", "--size", "320x160", "--to", "16x8", mask])
        XCTAssertEqual(whole.status, 0, whole.err)
        let wr = try TensorStream.readAll(path: try Hostile.write(whole.out, dir, "w.tensor"))[0]
        XCTAssertEqual(wr.name, "mask")
        XCTAssertEqual(wr.floats(), v)
        XCTAssertEqual(wr.metadata["model.fingerprint"], "abc")
        XCTAssertEqual(wr.metadata["region"], "0,0,320,160")
        XCTAssertEqual(wr.metadata["latent.width"], "16")
        let part = try runTool("tensor", ["cut", "--box", "80,60,40,20", "--size", "320x160", "--to", "2x1", mask])
        XCTAssertEqual(part.status, 0, part.err)
        let partRecord = try TensorStream.readAll(path: try Hostile.write(part.out, dir, "p.tensor"))[0]
        XCTAssertEqual(partRecord.floats(), [1, 1])
        // The box spans 2×1 of the whole mask's cells; composite counts its default refinement
        // radius in those (four cells of 20 px over a 40-px region: 80 px), not in the cut's.
        XCTAssertEqual(partRecord.metadata["region.cells"], "2.0x1.0")
        let big = try runTool("tensor", ["cut", "--box", "80,60,40,20", "--size", "320x160", "--to", "64x32", mask])
        XCTAssertEqual(big.status, 0, big.err)
        let bigCut = try Hostile.write(big.out, dir, "big.tensor")
        let photo = try Hostile.write(RawNetpbm(width: 320, height: 160, depth: 3, maxval: 255, tupleType: "",
                                                samples: [Int](repeating: 90, count: 320 * 160 * 3)).bytes, dir, "photo.ppm")
        let edit = RawNetpbm(width: 64, height: 32, depth: 3, maxval: 255, tupleType: "", samples: [Int](repeating: 200, count: 64 * 32 * 3))
        let pasted = try runTool("composite", ["-v", "--original", photo, "--mask", bigCut, "--region", "80,60,40,20"], stdin: edit.bytes)
        XCTAssertEqual(pasted.status, 0, pasted.err)
        XCTAssertTrue(pasted.err.contains("radius 80 px"), pasted.err)
        let outside = try runTool("tensor", ["cut", "--box", "300,0,40,20", "--size", "320x160", "--to", "2x2", mask])
        assertRefused(outside, tool: "tensor", contains: ["--box 300,0,40,20 is not inside"])
    }
}
