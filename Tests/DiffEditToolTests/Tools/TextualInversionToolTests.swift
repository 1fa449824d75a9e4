import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// tokenize | encode-text --embedding end to end against diffusers' load_textual_inversion
/// (Tests/Fixtures/textual-inversion/ref.tensor), and the tools' refusals: pickles, another
/// width, ids past the vocabulary without the embeddings, other embeddings than tokenize's.
final class TextualInversionToolTests: XCTestCase {
    static func embeddingArguments(_ paths: [String]) -> [String] { paths.flatMap { ["--embedding", $0] } }

    func testTokenizeThenEncodeTextMatchesDiffusers() throws {
        for key in ["sd1", "sd2"] {
            let ref = try TextualInversionFixtures.reference(key)
            let model = Fixtures.path(key)
            let options = Self.embeddingArguments(ref.arguments)
            let t = try runTool("tokenize", ["-q", "--model", model] + options + ["--"] + ref.prompts)
            XCTAssertEqual(t.status, 0, t.err)
            let ids = try decodeStream(t.out)
            XCTAssertEqual(ids.map(\.shape), [[ref.count, 77]], key)
            XCTAssertEqual(try ids[0].int32s(), ref.ids, "\(key): tokenize --embedding ids")
            XCTAssertEqual(ids[0].metadata[MetadataKey.textualInversionFirstID], String(ref.firstID))
            // Files without their ":TOKEN"; each embedding's token (the added tokens without _1, _2 …).
            let files = ref.arguments.map { String($0.split(separator: ":")[0]) }
            XCTAssertEqual(ids[0].metadata[MetadataKey.textualInversionFiles], JSONValue.stringArray(files))
            let tokens = ref.tokens.filter { t in !ref.tokens.contains { t.hasPrefix($0 + "_") } }
            XCTAssertEqual(ids[0].metadata[MetadataKey.textualInversionTokens], JSONValue.stringArray(tokens))

            let e = try runTool("encode-text", ["--model", model] + options, stdin: t.out)
            XCTAssertEqual(e.status, 0, e.err)
            XCTAssertEqual(e.err, "", key)
            let out = try decodeStream(e.out)
            XCTAssertEqual(out.map(\.shape), [ref.lastHidden.shape], key)
            assertClose(out[0].floats(), ref.lastHidden.floats(), atol: Tolerance.textEmbeddings, "\(key) tokenize | encode-text --embedding")
            // The embeddings' provenance travels with them.
            XCTAssertEqual(out[0].metadata[MetadataKey.textualInversionFingerprints], ids[0].metadata[MetadataKey.textualInversionFingerprints])
        }
    }

    /// The same embeddings with the pipelines as single-file checkpoints (the bundled CLIP tokenizer,
    /// the text encoder from LDM names): the same ids and embeddings.
    func testSingleFileCheckpoints() throws {
        for key in ["sd1", "sd2"] {
            let ref = try TextualInversionFixtures.reference(key)
            let model = try SingleFileFixtures.path(key)
            let options = Self.embeddingArguments(ref.arguments)
            let t = try runTool("tokenize", ["-q", "--model", model] + options + ["--"] + ref.prompts)
            XCTAssertEqual(t.status, 0, t.err)
            XCTAssertEqual(try decodeStream(t.out).first?.int32s(), ref.ids, "\(key) single file: ids")
            let e = try runTool("encode-text", ["--model", model] + options, stdin: t.out)
            XCTAssertEqual(e.status, 0, e.err)
            assertClose(try decodeStream(e.out)[0].floats(), ref.lastHidden.floats(), atol: Tolerance.textEmbeddings,
                        "\(key) single file tokenize | encode-text --embedding")
        }
    }

    /// tokenize --show names the added tokens; the capitalised multi-vector token gets its note.
    func testShowAndNote() throws {
        let ref = try TextualInversionFixtures.reference("sd2")
        let r = try runTool("tokenize", ["--model", Fixtures.path("sd2"), "--show"] + Self.embeddingArguments(ref.arguments) + ["<Wood-Style> inkwash"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(String(decoding: r.out, as: UTF8.self).hasPrefix("49406:<|startoftext|> 49409:<Wood-Style> 49411:inkwash 49412:inkwash_1 49413:inkwash_2 49407:<|endoftext|>"),
                      String(decoding: r.out, as: UTF8.self))
        XCTAssertTrue(r.err.contains("tokenize: note: --embedding \(ref.arguments[1].dropLast(":<Wood-Style>".count)): '<Wood-Style>' has 2 vectors"), r.err)
        let quiet = try runTool("tokenize", ["-q", "--model", Fixtures.path("sd2"), "--show"] + Self.embeddingArguments(ref.arguments) + ["x"])
        XCTAssertEqual(quiet.err, "")
    }

    func testPicklesAreRefused() throws {
        let dir = try temporaryDirectory(self)
        let pt = dir.appendingPathComponent("charturner.pt")
        try Data([0x50, 0x4B, 0x03, 0x04] + [UInt8](repeating: 0, count: 60)).write(to: pt)
        for tool in ["tokenize", "encode-text"] {
            let ids = TensorStream.encode(TensorRecord(name: "ids", shape: [1, 2], int32s: [49406, 49407]))
            let r = try runTool(tool, ["--model", Fixtures.path("sd1"), "--embedding", pt.path] + (tool == "tokenize" ? ["a"] : []), stdin: ids)
            XCTAssertEqual(r.status, 1, tool)
            XCTAssertTrue(r.err.hasPrefix("\(tool): --embedding \(pt.path) is a PyTorch pickle, which diffedit does not load"), r.err)
            XCTAssertEqual(r.err.filter { $0 == "\n" }.count, 1, "one line: \(r.err)")
            XCTAssertTrue(r.out.isEmpty, tool)
        }
    }

    func testAnotherWidthIsRefused() throws {
        // sd2's 40-wide embedding with sd1 (32), and sd1's with sd2.
        for (model, file, width, takes) in [("sd1", TextualInversionFixtures.file("sd2", "inkwash"), 40, 32),
                                            ("sd2", TextualInversionFixtures.file("sd1", "inkwash"), 32, 40)] {
            let t = try runTool("tokenize", ["--model", Fixtures.path(model), "--embedding", file, "inkwash"])
            XCTAssertEqual(t.status, 1, model)
            XCTAssertTrue(t.err.hasPrefix("tokenize: --embedding \(file) has vectors of \(width), but the text encoder of \(Fixtures.path(model)) takes \(takes) — "), t.err)
            let ids = TensorStream.encode(TensorRecord(name: "ids", shape: [1, 2], int32s: [49406, 49407]))
            let e = try runTool("encode-text", ["--model", Fixtures.path(model), "--embedding", file], stdin: ids)
            XCTAssertEqual(e.status, 1, model)
            XCTAssertTrue(e.err.hasPrefix("encode-text: --embedding \(file) has vectors of \(width)"), e.err)
        }
    }

    func testEncodeTextWithoutTheEmbeddingsRefusesTheirIDs() throws {
        let ref = try TextualInversionFixtures.reference("sd1")
        let model = Fixtures.path("sd1")
        let t = try runTool("tokenize", ["-q", "--model", model] + Self.embeddingArguments(ref.arguments) + ["a photo of <cat-toy>"])
        XCTAssertEqual(t.status, 0, t.err)
        let e = try runTool("encode-text", ["--model", model], stdin: t.out)
        XCTAssertEqual(e.status, 1)
        XCTAssertTrue(e.err.hasPrefix("encode-text: the ids were made with tokenize --embedding \(ref.arguments.joined(separator: " ")), encode-text was given none — give encode-text the same --embedding files as tokenize"), e.err)
        XCTAssertTrue(e.out.isEmpty)
        // Ids past the vocabulary with no record of their embeddings (e.g. through .npy).
        let bare = TensorStream.encode(TensorRecord(name: "ids", shape: [1, 3], int32s: [49406, 49408, 49407]))
        let b = try runTool("encode-text", ["--model", model], stdin: bare)
        XCTAssertEqual(b.status, 1)
        XCTAssertTrue(b.err.hasPrefix("encode-text: token id 49408 at prompt 1, position 1 is past the vocabulary of 49408 — a textual-inversion token?"), b.err)
        // Without added tokens in the prompts, the ids need no embeddings.
        let plain = try sh("tokenize -q --model \(model) \(Self.embeddingArguments(ref.arguments).joined(separator: " ")) 'a cat' | encode-text --model \(model)")
        XCTAssertEqual(plain.status, 0, plain.err)
    }

    func testMismatchedEmbeddingsAreRefused() throws {
        let ref = try TextualInversionFixtures.reference("sd1")
        let model = Fixtures.path("sd1")
        let t = try runTool("tokenize", ["-q", "--model", model] + Self.embeddingArguments(ref.arguments) + ["a <wood-style> cat"])
        XCTAssertEqual(t.status, 0, t.err)
        // Another order; another file in one's place (a copy with other vectors under the same name).
        let dir = try temporaryDirectory(self)
        let other = dir.appendingPathComponent("wood-style.safetensors")
        try writeSafeTensors(other, [("<wood-style>", [2, 32], (0..<64).map { Float($0) / 640 })])
        for given in [Array(ref.arguments.reversed()), [ref.arguments[0], other.path, ref.arguments[2]]] {
            let e = try runTool("encode-text", ["--model", model] + Self.embeddingArguments(given), stdin: t.out)
            XCTAssertEqual(e.status, 1, "\(given)")
            XCTAssertTrue(e.err.hasPrefix("encode-text: the ids were made with tokenize --embedding \(ref.arguments.joined(separator: " ")), encode-text was given \(given.joined(separator: " ")) (other files or another order: the fingerprints differ) — give encode-text the same --embedding files as tokenize, in the same order"), e.err)
            XCTAssertTrue(e.out.isEmpty)
        }
        // The same files under other token names are the same embeddings.
        let renamed = ref.arguments.enumerated().map { "\($0.element.split(separator: ":")[0]):t\($0.offset)" }
        let same = try runTool("encode-text", ["--model", model] + Self.embeddingArguments(renamed), stdin: t.out)
        XCTAssertEqual(same.status, 0, same.err)
        // Embeddings for ids that name none: a note, and the ids encode as they are.
        let plain = try runTool("tokenize", ["-q", "--model", model, "a cat"])
        let noted = try runTool("encode-text", ["--model", model] + Self.embeddingArguments(ref.arguments), stdin: plain.out)
        XCTAssertEqual(noted.status, 0, noted.err)
        XCTAssertTrue(noted.err.hasPrefix("encode-text: note: the ids hold no textual-inversion token and name no embeddings"), noted.err)
    }
}
