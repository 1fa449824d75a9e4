import DiffEditCore
import Foundation
import XCTest
import DiffEditTestSupport

/// Hostile tensor streams fed to every tool that reads one: each must be refused with one line
/// `tool: problem — what to do` and exit status 1, never a trap or a hang.
final class ReliabilityStreamTests: XCTestCase {
    let latents = Hostile.stream([Hostile.f32("latents", [1, 4, 8, 8])])

    /// (tool, arguments) for every tool that reads a tensor stream on stdin.
    func streamReaders(_ dir: URL) throws -> [(String, [String])] {
        let emb = try Hostile.embeddingsFile(dir)
        let mask = try Hostile.write(Hostile.stream([Hostile.f32("mask", [1, 1, 8, 8], fill: 1)]), dir, "mask.tensor")
        return [
            ("tensor", ["stats"]), ("tensor", ["head"]), ("tensor", ["pick", "-f"]),
            ("encode-text", ["--model", Hostile.sd1]),
            ("vae-decode", ["--model", Hostile.sd1]),
            ("noise-diff-mask", ["--model", Hostile.sd1, "--source", emb, "--target", emb]),
            ("invert", ["--model", Hostile.sd1, "--prompt", emb]),
            ("denoise", ["--model", Hostile.sd1, "--prompt", emb, "--mask", mask]),
        ]
    }

    func testCorruptStreamsAreRefusedByEveryReader() throws {
        let dir = try temporaryDirectory(self)
        let good = latents
        var bad: [(String, [UInt8], String)] = [
            ("empty stdin", [], "empty input"),
            ("truncated header", Array(good.prefix(30)), "truncated"),
            ("truncated data", Array(good.prefix(100)), "truncated"),
            ("wrong magic", Array("NOT-A-TENSOR 1\n".utf8) + good, "not a tensor stream"),
            ("wrong version", Array(String(decoding: good, as: UTF8.self).replacingOccurrences(of: "DIFFEDIT-TENSOR 1", with: "DIFFEDIT-TENSOR 9").utf8), "unsupported format version"),
            ("trailing garbage", good + Array("garbage\n".utf8), "trailing garbage"),
            ("huge declared size", Array("DIFFEDIT-TENSOR 1\nname=latents\ndtype=f32\nshape=1048576 1048576 4\n\n".utf8), "2^40"),
            ("overflowing shape", Array("DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\nshape=9223372036854775807 4\n\n".utf8), "overflow"),
            ("unknown dtype", Array("DIFFEDIT-TENSOR 1\nname=x\ndtype=f128\nshape=1\n\n".utf8), "unknown dtype"),
        ]
        // A large declared size on a short stream must fail fast on the missing bytes, not allocate.
        bad.append(("large size, short data", Array("DIFFEDIT-TENSOR 1\nname=latents\ndtype=f32\nshape=1 4 40000 40000\n\n".utf8) + [UInt8](repeating: 10, count: 64), "truncated"))
        // Every case through `tensor stats` (cheap); three through each other reader (tensor head
        // and tensor pick included), since all of them read with the same TensorStreamReader.
        let readers = try streamReaders(dir)
        XCTAssertEqual(readers.count, 8)
        var runs: [String: Int] = [:]
        for (tool, args) in readers {
            let subset = tool == "tensor" && args == ["stats"] ? bad : bad.filter { ["empty stdin", "truncated data", "trailing garbage"].contains($0.0) }
            for (what, bytes, fragment) in subset {
                let r = try runTool(tool, args, stdin: bytes)
                assertRefused(r, tool: tool, contains: [fragment])
                if r.status != 1 { XCTFail("\(tool) \(args.first ?? ""): \(what)") }
                runs[([tool] + args.prefix(1)).joined(separator: " "), default: 0] += 1
            }
        }
        // Every listed reader was really run on its cases (none skipped).
        XCTAssertEqual(runs["tensor stats"], bad.count)
        for key in ["tensor head", "tensor pick", "encode-text --model", "vae-decode --model", "noise-diff-mask --model",
                    "invert --model", "denoise --model"] {
            XCTAssertEqual(runs[key], 3, "\(key) was not run on its three cases")
        }
    }

    func testDtypeAndShapeTheStageDoesNotTake() throws {
        let dir = try temporaryDirectory(self)
        let emb = try Hostile.embeddingsFile(dir)
        let mask = Hostile.stream([Hostile.f32("mask", [1, 1, 8, 8], fill: 1)])
        let ids = Hostile.stream([TensorRecord(name: "ids", shape: [1, 77], int32s: [Int32](repeating: 320, count: 77))])
        let maskFile = try Hostile.write(mask, dir, "mask.tensor")
        let cases: [(String, [String], [UInt8], [String])] = [
            // encode-text takes i32 ids [N, L] with L ≤ 77.
            ("encode-text", ["--model", Hostile.sd1], latents, ["f32", "tokenize"]),
            ("encode-text", ["--model", Hostile.sd1], Hostile.stream([TensorRecord(name: "ids", shape: [1, 500], int32s: [Int32](repeating: 320, count: 500))]), ["77"]),
            ("encode-text", ["--model", Hostile.sd1], Hostile.stream([TensorRecord(name: "ids", shape: [1, 77], int32s: [Int32](repeating: 1 << 30, count: 77))]), ["vocabulary"]),
            // vae-decode takes float latents [N, 4, h, w]: not a mask, ids or embeddings.
            ("vae-decode", ["--model", Hostile.sd1], mask, ["1x1x8x8", "latents"]),
            ("vae-decode", ["--model", Hostile.sd1], ids, ["i32"]),
            ("vae-decode", ["--model", Hostile.sd1], Hostile.stream([Hostile.f32("embeddings", [1, 77, 32])]), ["1x77x32"]),
            // The DiffEdit stages take the posterior / the inverted stack.
            ("noise-diff-mask", ["--model", Hostile.sd1, "--source", emb, "--target", emb], mask, ["posterior"]),
            ("invert", ["--model", Hostile.sd1, "--prompt", emb], ids, ["posterior"]),
            ("denoise", ["--model", Hostile.sd1, "--prompt", emb, "--mask", maskFile], latents, ["invert"]),
        ]
        for (tool, args, stdin, fragments) in cases {
            assertRefused(try runTool(tool, args, stdin: stdin), tool: tool, contains: fragments)
        }
    }

    func testEmbeddingsOfTheWrongWidthAreRefused() throws {
        // Without provenance metadata, so only the shape can tell: sd2's text width (40) fed to sd1 (32).
        let dir = try temporaryDirectory(self)
        let wide = try Hostile.write(Hostile.stream([Hostile.f32("embeddings", [1, 77, 40])]), dir, "wide.tensor")
        let ok = try Hostile.embeddingsFile(dir)
        let post = try Hostile.posterior()
        assertRefused(try runTool("noise-diff-mask", ["--model", Hostile.sd1, "--source", wide, "--target", ok], stdin: post),
                      tool: "noise-diff-mask", contains: ["--source", "32"])
        assertRefused(try runTool("invert", ["--model", Hostile.sd1, "--prompt", wide], stdin: post),
                      tool: "invert", contains: ["--prompt", "32"])
    }

    func testNonFiniteInputsAreRefusedUnlessAllowed() throws {
        let dir = try temporaryDirectory(self)
        var nan = Hostile.f32("latents", [1, 4, 2, 2])
        nan = TensorRecord(name: "latents", shape: [1, 4, 2, 2], floats: [.nan] + [Float](repeating: 0, count: 15))
        let inf = TensorRecord(name: "latents", shape: [1, 4, 2, 2], floats: [.infinity] + [Float](repeating: 0, count: 15))
        for rec in [nan, inf] {
            let r = try runTool("vae-decode", ["--model", Hostile.sd1], stdin: Hostile.stream([rec]))
            assertRefused(r, tool: "vae-decode", contains: ["--allow-nonfinite", "'latents'"])
        }
        let allowed = try runTool("vae-decode", ["--model", Hostile.sd1, "--allow-nonfinite"], stdin: Hostile.stream([nan]))
        XCTAssertEqual(allowed.status, 0, allowed.err)
        XCTAssertTrue(allowed.out.starts(with: Array("P6\n16 16\n".utf8)))

        // NaN in embeddings given to an option, and in the posterior on stdin.
        let nanEmb = TensorRecord(name: "embeddings", shape: [1, 77, 32], floats: [Float](repeating: .nan, count: 77 * 32))
        let nanFile = try Hostile.write(Hostile.stream([nanEmb]), dir, "nan.tensor")
        let post = try Hostile.posterior()
        assertRefused(try runTool("invert", ["--model", Hostile.sd1, "--prompt", nanFile], stdin: post),
                      tool: "invert", contains: ["--prompt", "NaN", "--allow-nonfinite"])
        var postRecords = try TensorStreamReader(ByteReader(fd: -1, label: "x")).readAllFromBytes(post)
        postRecords[0] = TensorRecord(name: postRecords[0].name, shape: postRecords[0].shape,
                                      floats: [Float](repeating: .infinity, count: postRecords[0].count), metadata: postRecords[0].metadata)
        let emb = try Hostile.embeddingsFile(dir)
        assertRefused(try runTool("noise-diff-mask", ["--model", Hostile.sd1, "--source", emb, "--target", emb], stdin: Hostile.stream(postRecords)),
                      tool: "noise-diff-mask", contains: ["infinite", "--allow-nonfinite"])
    }

    /// man 5: every header key appears at most once — the reserved ones too (a repeated
    /// `shape=4` then `shape=2` was accepted, the last one winning).
    func testRepeatedReservedHeaderKeysAreRefused() throws {
        let data = [UInt8](repeating: 0, count: 64)
        for (key, first, second) in [("shape", "4", "2"), ("dtype", "f32", "i32"), ("name", "a", "b")] {
            var lines = ["name=x", "dtype=f32", "shape=2"].filter { !$0.hasPrefix(key + "=") }
            lines.insert(contentsOf: ["\(key)=\(first)", "\(key)=\(second)"], at: 0)
            var header = "DIFFEDIT-TENSOR 1\n" + lines.joined(separator: "\n") + "\n\n"
            header += String(repeating: "\n", count: (64 - header.utf8.count % 64) % 64)
            let bytes = Array(header.utf8) + data
            for tool in [["stats"], ["head"], ["pick", "-f"]] {
                let r = try runTool("tensor", tool, stdin: bytes)
                assertRefused(r, tool: "tensor", contains: ["header key '\(key)' appears twice"])
                XCTAssertEqual(r.out, [], "\(tool): nothing may be written")
            }
            assertRefused(try runTool("vae-decode", ["--model", Hostile.sd1], stdin: bytes), tool: "vae-decode",
                          contains: ["'\(key)' appears twice"])
        }
    }

    /// The last line of defence (issue 14, item 4): finite inputs that overflow inside a stage
    /// (latents of 3e38 divided by the VAE's scaling factor, a posterior of 3e38 through the DDIM
    /// step) gave NaN records with exit 0; now the tool stops with one line and writes nothing.
    /// An input holding NaN that the user let through (--allow-nonfinite) may still carry it on.
    func testNonfiniteOutputsTheToolProducedAreRefused() throws {
        let dir = try temporaryDirectory(self)
        let emb = try Hostile.embeddingsFile(dir)
        let huge = Hostile.stream([Hostile.f32("latents", [1, 4, 8, 8], fill: 3e38)])
        let r = try runTool("vae-decode", ["--model", Hostile.sd1], stdin: huge)
        assertRefused(r, tool: "vae-decode", contains: ["the decoded image 0 came out holding", "NaN", "from finite inputs"])
        XCTAssertEqual(r.out, [])
        let post = Hostile.stream([Hostile.f32("posterior.mean", [1, 4, 8, 8], fill: 3e38), Hostile.f32("posterior.std", [1, 4, 8, 8], fill: 0.1)])
        let inv = try runTool("invert", ["--model", Hostile.sd1, "--prompt", emb, "--steps", "4"], stdin: post)
        assertRefused(inv, tool: "invert", contains: ["record 'inverted' came out holding"])
        XCTAssertEqual(inv.out, [])
        // The guard sits in the writer every tool gets from CLI.tensorOutput; tools that only copy
        // their input (tensor pick, from-npy) pass NaN through, as inspection tools must.
        let nan = Hostile.stream([TensorRecord(name: "x", shape: [2], floats: [.nan, 1])])
        let pick = try runTool("tensor", ["pick"], stdin: nan)
        XCTAssertEqual(pick.status, 0, pick.err)
        XCTAssertEqual(pick.out, nan)
        let allowed = try runTool("vae-decode", ["--model", Hostile.sd1, "--allow-nonfinite"],
                                  stdin: Hostile.stream([TensorRecord(name: "latents", shape: [1, 4, 2, 2], floats: [.nan] + [Float](repeating: 0, count: 15))]))
        XCTAssertEqual(allowed.status, 0, allowed.err)
    }

    func testLibraryStreamErrorsShareOneFormat() throws {
        // Every reader error names the input and record and says what to do.
        let cases: [[UInt8]] = [
            Array("DIFFEDIT-TENSOR 1\nname=x\n".utf8),
            Array("DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\n\n".utf8),
            Array("DIFFEDIT-TENSOR 1\nnot key value\n\n".utf8),
            Array("DIFFEDIT-TENSOR 1\nbad key!=1\n\n".utf8),
            Array("DIFFEDIT-TENSOR 1\nname=a\\qb\n\n".utf8),
            Array("DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\nshape=1 -2\n\n".utf8),
            Array("DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\nshape=1 2 3 4 5 6 7 8 9\n\n".utf8),
            Array("DIFFEDIT-TENSOR 1\nk=1\nk=2\n\n".utf8),
            Array("DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\nshape=4\nshape=2\n\n".utf8),
            Array("DIFFEDIT-TENSOR 1\n\u{FF}\n\n".utf8) + [0xFF, 0x0A, 0x0A],
            Array("DIFFEDIT-TENSOR 1\nname=x\ndtype=f32\nshape=1\n\nXXXXXXXX".utf8),
            latents + Array("junk".utf8),
        ]
        for bytes in cases {
            assertToolError(try TensorStreamReader(ByteReader(fd: -1, label: "x")).readAllFromBytes(bytes), contains: ["stdin"])
        }
    }
}
