import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// The `tensor` executable end to end.
final class TensorToolTests: XCTestCase {
    let sample = TensorStream.encode(TensorRecord(name: "latents", shape: [1, 4, 2, 3],
                                                  floats: (0..<24).map { Float($0) / 4 - 2 }, metadata: ["seed": "3"]))
        + TensorStream.encode(TensorRecord(name: "mask", shape: [1, 1, 2, 3], floats: [0, 1, 1, 0, 0, 1]))
        + TensorStream.encode(TensorRecord(name: "ids", shape: [1, 4], int32s: [49406, 320, 2368, 49407]))

    func testHeadAndStats() throws {
        let head = try runTool("tensor", ["head"], stdin: sample)
        XCTAssertEqual(head.status, 0, head.err)
        let text = String(decoding: head.out, as: UTF8.self)
        XCTAssertTrue(text.contains("[0] latents f32 [1, 4, 2, 3] 96 bytes\n    seed=3\n[1] mask f32"), text)
        XCTAssertTrue(text.contains("[2] ids i32 [1, 4] 16 bytes"), text)
        let stats = try runTool("tensor", ["stats", "-"], stdin: sample)
        XCTAssertEqual(stats.status, 0, stats.err)
        let lines = String(decoding: stats.out, as: UTF8.self).split(separator: "\n")
        XCTAssertEqual(lines.count, 4)
        guard lines.count == 4 else { return }  // (the count assertion above has failed)
        XCTAssertEqual(lines[1].split(separator: "\t").map(String.init),
                       ["0", "latents", "f32", "1x4x2x3", "-2", "3.75", "0.875", "1.73055", "0", "0"])  // population std: 0.25·√((24²−1)/12)
    }

    func testStatsCountsNonFinite() throws {
        let r = TensorStream.encode(TensorRecord(name: "x", shape: [4], floats: [1, .nan, .infinity, 3]))
        let stats = try runTool("tensor", ["stats"], stdin: r)
        XCTAssertEqual(stats.status, 0, stats.err)
        let lines = String(decoding: stats.out, as: UTF8.self).split(separator: "\n")
        XCTAssertEqual(lines.count, 2, "header and one row")
        guard lines.count == 2 else { return }  // (the count assertion above has failed)
        let row = lines[1].split(separator: "\t")
        XCTAssertEqual(row.count, 10)
        XCTAssertEqual(Array(row[4...]).map(String.init), ["1", "3", "2", "1", "1", "1"])
    }

    func testPickByNameAndIndex() throws {
        let byName = try runTool("tensor", ["pick", "--name", "mask"], stdin: sample)
        let byIndex = try runTool("tensor", ["pick", "--index", "1"], stdin: sample)
        XCTAssertEqual(byName.status, 0, byName.err)
        XCTAssertEqual(byIndex.status, 0, byIndex.err)
        XCTAssertEqual(byName.out, byIndex.out)
        XCTAssertEqual(try decodeAll(byName.out).map(\.name), ["mask"])
        let missing = try runTool("tensor", ["pick", "--name", "nope"], stdin: sample)
        XCTAssertEqual(missing.status, 1)
        XCTAssertEqual(missing.err, "tensor: stdin has no record named 'nope' (it has: latents, mask, ids) — choose one of those with --name, or one by position with --index\n")
    }

    /// What numpy.save writes for a C-order float32 array (format 1.0 as numpy ≥ 1.22 and 2.x write
    /// it: the dict, 21 − digits(shape[0]) spaces of growth room, padding to a 64-byte boundary,
    /// "\n"). Checked once against numpy 2.4.6's output byte for byte; kept in Swift because
    /// `swift test` must not need Python (README: Python is only for regenerating fixtures, and
    /// scripts/setup-debian.sh does not install numpy), so a numpy run here could never be a
    /// required check in CI.
    static func numpySave(shape: [Int], _ values: [Float]) -> [UInt8] {
        let shapeText = "(" + shape.map(String.init).joined(separator: ", ") + (shape.count == 1 ? ",)" : ")")
        var header = "{'descr': '<f4', 'fortran_order': False, 'shape': \(shapeText), }"
        header += String(repeating: " ", count: shape.isEmpty ? 0 : 21 - String(shape[0]).count)
        header += String(repeating: " ", count: 64 - (10 + header.utf8.count + 1) % 64) + "\n"
        var out: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0]
        out += [UInt8(header.utf8.count & 0xFF), UInt8(header.utf8.count >> 8)]
        out += Array(header.utf8)
        for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { out += $0 } }
        return out
    }

    func testNPYRoundTripIsByteExactAndNumpyCompatible() throws {
        let dir = try temporaryDirectory(self)
        let values = (0..<24).map { Float($0) / 4 - 2 }
        let npy = try runTool("tensor", ["to-npy", "--name", "latents"], stdin: sample)
        XCTAssertEqual(npy.status, 0, npy.err)
        // The bytes numpy.save writes for the same array (header layout and data).
        XCTAssertEqual(npy.out, Self.numpySave(shape: [1, 4, 2, 3], values), "to-npy differs from numpy.save's bytes")
        XCTAssertEqual(npy.out.count, 128 + 24 * 4)
        try Data(npy.out).write(to: dir.appendingPathComponent("x.npy"))
        let back = try runTool("tensor", ["from-npy", "--name", "latents", "--meta", "seed=3", dir.appendingPathComponent("x.npy").path])
        XCTAssertEqual(back.status, 0, back.err)
        // Exactly the first record of `sample`, byte for byte (not merely a prefix of it).
        let first = TensorStream.encode(TensorRecord(name: "latents", shape: [1, 4, 2, 3], floats: values, metadata: ["seed": "3"]))
        XCTAssertEqual(Array(sample.prefix(first.count)), first, "test setup: sample starts with this record")
        XCTAssertEqual(back.out, first)
    }

    func testNPYRoundTripOfAFixtureIsByteExact() throws {
        let fixture = Fixtures.path("sd1/ref/vae.tensor")
        XCTAssertTrue(FileManager.default.fileExists(atPath: fixture), "fixture \(fixture) is missing")
        let first = try runTool("tensor", ["pick", "--index", "0", fixture])
        XCTAssertEqual(first.status, 0, first.err)
        let record = try XCTUnwrap(try decodeAll(first.out).first, "tensor pick wrote no record")
        let r = try sh("tensor to-npy --index 0 \(fixture) | tensor from-npy --name '\(record.name)' \(record.metadata.map { "--meta '\($0.key)=\($0.value)'" }.joined(separator: " "))")
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertFalse(r.out.isEmpty)
        XCTAssertEqual(r.out, first.out)
    }

    func testCompareExitStatus() throws {
        let dir = try temporaryDirectory(self)
        let a = dir.appendingPathComponent("a.tensor"), b = dir.appendingPathComponent("b.tensor")
        try Data(TensorStream.encode(TensorRecord(name: "x", shape: [3], floats: [1, 2, 3]))).write(to: a)
        try Data(TensorStream.encode(TensorRecord(name: "x", shape: [3], floats: [1, 2.01, 3]))).write(to: b)
        let same = try runTool("tensor", ["compare", a.path, a.path])
        XCTAssertEqual(same.status, 0)
        let differ = try runTool("tensor", ["compare", a.path, b.path])
        XCTAssertEqual(differ.status, 1)
        XCTAssertTrue(String(decoding: differ.out, as: UTF8.self).contains("FAIL"))
        let loose = try runTool("tensor", ["compare", "--atol", "0.02", a.path, b.path])
        XCTAssertEqual(loose.status, 0)
        let rel = try runTool("tensor", ["compare", "--atol", "0", "--rtol", "0.006", a.path, b.path])
        XCTAssertEqual(rel.status, 0)
    }

    func testMaskRendersAsBlackAndWhitePGM() throws {
        let img = try runTool("tensor", ["to-image", "--name", "mask", "--range", "0:1"], stdin: sample)
        XCTAssertEqual(img.status, 0, img.err)
        XCTAssertEqual(img.out, Array("P5\n3 2\n255\n".utf8) + [0, 255, 255, 0, 0, 255])
        let big = try sh("tensor to-image --name latents --tile --scale 4 | { pamfile; cat > /dev/null; }", stdin: sample)
        XCTAssertEqual(big.status, 0, big.err)
        XCTAssertTrue(String(decoding: big.out, as: UTF8.self).contains("PGM raw, 48 by 8"), String(decoding: big.out, as: UTF8.self) + big.err)
    }

    func testImageToTensorAndBack() throws {
        let r = try sh("ppmmake rgb:10/80/f0 5 3 | tensor from-image | tensor to-image --rgb | pnmtopng | pngtopnm | { pamfile; cat > /dev/null; }")  // drain: pamfile stops after the header, and pipefail would see SIGPIPE
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(String(decoding: r.out, as: UTF8.self).contains("PPM raw, 5 by 3  maxval 255"))
        let same = try sh("ppmmake rgb:10/80/f0 5 3 > a.ppm; tensor from-image a.ppm | tensor to-image --rgb | cmp - a.ppm; s=$?; rm a.ppm; exit $s")
        XCTAssertEqual(same.status, 0, same.err)
    }

    func testBadInputGivesOneLineAndNonZeroStatus() throws {
        let cases: [([String], [UInt8], String)] = [
            (["head"], Array("hello\n".utf8), "not a tensor stream"),
            (["stats"], Array(sample.prefix(100)), "truncated"),
            (["head"], Array("DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\nshape=4611686018427387904 4\n\n".utf8), "overflows"),
            (["head"], Array("DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\nshape=-3\n\n".utf8), "bad dimension"),
            (["head"], Array("DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\nshape=1\n".utf8), "truncated"),
            (["pick"], [], "empty stream"),
            (["from-image"], [], "empty input"),
            (["from-npy"], Array("not npy".utf8), "not a .npy file"),
        ]
        for (args, input, fragment) in cases {
            let r = try runTool("tensor", args, stdin: input)
            XCTAssertEqual(r.status, 1, "\(args): \(r.err)")
            XCTAssertTrue(r.err.hasPrefix("tensor: ") && r.err.contains(fragment), "\(args): \(r.err)")
            XCTAssertEqual(r.err.filter { $0 == "\n" }.count, 1, r.err)
        }
    }

    func testRefusesBinaryOutputToATerminal() throws {
        var master: Int32 = 0, slave: Int32 = 0
        // Linux always offers ptys (/dev/ptmx); without one the refusal cannot be tested, which is a failure.
        guard openpty(&master, &slave, nil, nil, nil) == 0 else { return XCTFail("openpty failed (errno \(errno)): no pty to test terminal refusals") }
        defer { close(master) }
        for args in [["pick"], ["to-npy"], ["to-image", "--name", "mask"]] {
            let r = try runWithTerminalOutput(toolPath("tensor"), args, stdin: sample, tty: slave)
            XCTAssertEqual(r.status, 1, "\(args)")
            XCTAssertTrue(r.err.contains("refusing to write binary"), r.err)
        }
        close(slave)
    }

    func decodeAll(_ bytes: [UInt8]) throws -> [TensorRecord] {
        let dir = try temporaryDirectory(self)
        let f = dir.appendingPathComponent("s.tensor")
        try Data(bytes).write(to: f)
        return try TensorStream.readAll(path: f.path)
    }
}

/// Every man page passes `mandoc -Tlint -Wwarning` and has the sections a man page needs.
final class ManPageTests: XCTestCase {
    func testManPagesLintCleanAndHaveTheSections() throws {
        let man = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("man")
        var pages: [String] = []
        for section in ["man1", "man5"] {
            let dir = man.appendingPathComponent(section)
            for f in try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() {
                pages.append(dir.appendingPathComponent(f).path)
            }
        }
        XCTAssertGreaterThanOrEqual(pages.count, 2)
        let lint = try sh("mandoc -Tlint -Wwarning " + pages.joined(separator: " "))
        XCTAssertEqual(lint.status, 0, "mandoc: " + String(decoding: lint.out, as: UTF8.self) + lint.err)
        for page in pages {
            let text = try String(contentsOfFile: page, encoding: .utf8)
            let needed = page.contains("/man5/") ? ["NAME", "SYNOPSIS", "DESCRIPTION", "EXAMPLES", "SEE ALSO"]
                : ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "EXAMPLES", "SEE ALSO"]
            for s in needed {
                XCTAssertTrue(text.contains(".SH \(s)") || text.contains(".SH \"\(s)\"") || text.contains(".Sh \(s)"), "\(page) lacks \(s)")
            }
        }
    }
}
