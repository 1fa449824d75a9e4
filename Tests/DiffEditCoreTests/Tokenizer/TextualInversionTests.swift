import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// Textual-inversion embeddings against diffusers' load_textual_inversion, maybe_convert_prompt
/// and encode_prompt (Tests/Fixtures/textual-inversion/ref.tensor): the ids identical, the text
/// encoder's output within the text-encoder parity tolerance (Tolerance.textEmbeddings; measured on
/// an AVX2-only AMD EPYC: 1.4e-6 sd1, 1.5e-6 sd2, as without embeddings); the files' layouts and
/// refusals.
final class TextualInversionTests: XCTestCase {
    /// The fixture model `key` with its three embeddings, as tokenize and encode-text load them.
    static func loaded(_ key: String) throws -> (ref: TextualInversionFixtures.Reference, inversion: TextualInversion, tokenizer: CLIPTokenizer, first: Int) {
        let ref = try TextualInversionFixtures.reference(key)
        let inversion = try TextualInversion(arguments: ref.arguments)
        let tokenizer = try Fixtures.tokenizer(key)
        let first = try inversion.add(to: tokenizer)
        return (ref, inversion, tokenizer, first)
    }

    func testIDsMatchDiffusers() throws {
        for key in ["sd1", "sd2"] {
            let (ref, inversion, tokenizer, first) = try Self.loaded(key)
            XCTAssertEqual(first, ref.firstID, key)
            XCTAssertEqual(inversion.addedTokens, ref.tokens, key)
            XCTAssertEqual(ref.tokens.map { tokenizer.encode($0) }, ref.tokens.indices.map { [Int32(first + $0)] }, key)
            let converted = ref.prompts.map { inversion.prompt($0, tokenizer: tokenizer) }
            XCTAssertEqual(converted, ref.converted, "\(key): maybe_convert_prompt")
            let ids = converted.flatMap { tokenizer.inputIDs($0) }
            XCTAssertEqual(ids, ref.ids, "\(key): token ids")
            // The fixtures reach past the vocabulary: a test that can fail.
            XCTAssertTrue(ids.contains { Int($0) >= first }, key)
        }
    }

    func testLastHiddenStateMatchesDiffusers() throws {
        for key in ["sd1", "sd2"] {
            let (ref, inversion, _, first) = try Self.loaded(key)
            let encoder = try CLIPTextModel(folder: Fixtures.model(key))
            let notes = try inversion.prepare(encoder, model: key, records: [(ref.ids, 77, inversion.metadata(firstID: first))])
            XCTAssertEqual(notes, [], key)
            XCTAssertEqual(encoder.tokenCount, first + ref.tokens.count, key)
            let out = try encoder.encode(ids: ref.ids, batch: ref.count, length: 77)
            XCTAssertEqual(out.shape, ref.lastHidden.shape, key)
            assertClose(out.data, ref.lastHidden.floats(), atol: Tolerance.textEmbeddings, "\(key) last_hidden_state with embeddings")
        }
    }

    /// The layouts: diffusers' key or A1111's file stem names the token, `:TOKEN` overrides both;
    /// [D] and [n, D]; f32 and f16 files; the vectors as the file holds them.
    func testFixtureFilesReadInBothLayouts() throws {
        let cat = try TextualInversionEmbedding(argument: TextualInversionFixtures.file("sd1", "cat-toy"))
        XCTAssertEqual([cat.token, cat.layout.rawValue, "\(cat.vectorCount)", "\(cat.width)"], ["<cat-toy>", "diffusers", "1", "32"])
        let ink = try TextualInversionEmbedding(argument: TextualInversionFixtures.file("sd1", "inkwash"))
        XCTAssertEqual([ink.token, ink.layout.rawValue, "\(ink.vectorCount)"], ["inkwash", "a1111", "2"])
        XCTAssertEqual(ink.tokens, ["inkwash", "inkwash_1"])
        let wood = try TextualInversionEmbedding(argument: TextualInversionFixtures.file("sd2", "wood-style") + ":<Wood-Style>")
        XCTAssertEqual([wood.token, wood.layout.rawValue, "\(wood.vectorCount)", "\(wood.width)"], ["<Wood-Style>", "diffusers", "2", "40"])
        let cat2 = try TextualInversionEmbedding(argument: TextualInversionFixtures.file("sd2", "cat-toy"))
        XCTAssertEqual([cat2.vectorCount, cat2.width], [1, 40])
        let file = try SafeTensorsFile(path: TextualInversionFixtures.file("sd2", "cat-toy"))
        XCTAssertEqual(file.entries["<cat-toy>"]?.dtype, .F16)
        XCTAssertEqual(cat2.vectors, try file.floats(file.entries["<cat-toy>"]!))
        // The fingerprint is the file's: another file, another fingerprint; the token plays no part.
        XCTAssertNotEqual(cat.fingerprint, ink.fingerprint)
        XCTAssertEqual(try TextualInversionEmbedding(argument: TextualInversionFixtures.file("sd1", "cat-toy") + ":x").fingerprint, cat.fingerprint)
        // A multi-vector token with capitals gets a note: diffusers never expands it.
        let notes = try TextualInversion([cat, ink, wood]).notes
        XCTAssertEqual(notes.count, 1)
        XCTAssertTrue(notes[0].contains("'<Wood-Style>' has 2 vectors, but prompts get its first only"), notes[0])
    }

    /// What diffusers refuses (the generator asserts it refuses "cat", "<|endoftext|>" and another
    /// width): the tools refuse too, in one line.
    func testRefusalsAsDiffusers() throws {
        let tokenizer = try Fixtures.tokenizer("sd1")
        for token in ["cat", "<|endoftext|>"] {
            let inversion = try TextualInversion(arguments: [TextualInversionFixtures.file("sd1", "cat-toy") + ":" + token])
            XCTAssertThrowsError(try inversion.add(to: tokenizer)) { e in
                XCTAssertTrue("\(e)".contains("its token '\(token)' is already in the tokenizer's vocabulary"), "\(e)")
            }
        }
        XCTAssertEqual(tokenizer.count, 49408, "a refused embedding adds nothing")
        let other = try TextualInversion(arguments: [TextualInversionFixtures.file("sd2", "wood-style")])
        XCTAssertThrowsError(try other.checkWidth(32, model: "sd1")) { e in
            XCTAssertTrue("\(e)".contains("has vectors of 40, but the text encoder of sd1 takes 32"), "\(e)")
        }
        XCTAssertThrowsError(try other.prepare(try CLIPTextModel(folder: Fixtures.model("sd1")), model: "sd1", records: [])) { e in
            XCTAssertTrue("\(e)".contains("has vectors of 40"), "\(e)")
        }
        // One token twice; a token another embedding's vectors already took.
        let ink = TextualInversionFixtures.file("sd1", "inkwash"), cat = TextualInversionFixtures.file("sd1", "cat-toy")
        XCTAssertThrowsError(try TextualInversion(arguments: [ink, cat + ":inkwash"])) { e in
            XCTAssertTrue("\(e)".contains("both name the token 'inkwash'"), "\(e)")
        }
        XCTAssertThrowsError(try TextualInversion(arguments: [ink, cat + ":inkwash_1"]).add(to: try Fixtures.tokenizer("sd1"))) { e in
            XCTAssertTrue("\(e)".contains("its token 'inkwash_1' is already a token of --embedding \(ink)"), "\(e)")
        }
        XCTAssertThrowsError(try TextualInversion(arguments: [cat + ":inkwash_1", ink]).add(to: try Fixtures.tokenizer("sd1"))) { e in
            XCTAssertTrue("\(e)".contains("its vector 2's token 'inkwash_1' is already a token of --embedding \(cat)"), "\(e)")
        }
    }

    /// Files that are not an embedding, each refused in one line naming the file.
    func testFilesThatAreNotEmbeddings() throws {
        let dir = try temporaryDirectory(self)
        func refused(_ name: String, _ expected: String, write: (URL) throws -> Void, token: String? = nil) throws {
            let url = dir.appendingPathComponent(name)
            try write(url)
            XCTAssertThrowsError(try TextualInversionEmbedding(argument: url.path + (token.map { ":" + $0 } ?? ""))) { e in
                XCTAssertTrue("\(e)".contains(expected), "\(name): \(e)")
                XCTAssertFalse("\(e)".contains("\n"), "\(name): one line")
            }
        }
        let v = [Float](repeating: 0.5, count: 8)
        // Pickles: by extension, and by content whatever the name (torch.save's zip, legacy pickle).
        try refused("style.pt", "is a PyTorch pickle, which diffedit does not load") { try Data([0x80, 0x02, 0x7d, 0x71]).write(to: $0) }
        try refused("learned_embeds.bin", "is a PyTorch pickle") { try Data([0x50, 0x4B, 0x03, 0x04, 0, 0]).write(to: $0) }
        try refused("renamed.safetensors", "then use --embedding") { try Data([0x50, 0x4B, 0x03, 0x04, 0, 0]).write(to: $0) }
        try refused("sdxl.safetensors", "is an SDXL embedding (clip_l, clip_g)") {
            try writeSafeTensors($0, [("clip_g", [1, 8], v), ("clip_l", [1, 8], v)])
        }
        try refused("two.safetensors", "holds 2 tensors ('a', 'b'), but a textual-inversion embedding holds one") {
            try writeSafeTensors($0, [("a", [8], v), ("b", [8], v)])
        }
        try refused("none.safetensors", "holds no tensor") { try writeSafeTensors($0, [], dtype: "F32") }
        try refused("ints.safetensors", "is I32, but embedding vectors are floating point") { try writeSafeTensors($0, [("<x>", [8], v)], dtype: "I32") }
        try refused("cube.safetensors", "has shape [2, 2, 2], but an embedding is [D] or [vectors, D]") { try writeSafeTensors($0, [("<x>", [2, 2, 2], v)]) }
        try refused("nan.safetensors", "hold NaN or infinite values") { try writeSafeTensors($0, [("<x>", [8], [.nan] + v.dropFirst())]) }
        try refused("blank.safetensors", "begins or ends with white space") { try writeSafeTensors($0, [(" x", [8], v)]) }
        try refused("empty-token.safetensors", "has an empty token around ':'", write: { try writeSafeTensors($0, [("<x>", [8], v)]) }, token: "")
        XCTAssertThrowsError(try TextualInversionEmbedding(argument: dir.appendingPathComponent("missing.safetensors").path)) { e in
            XCTAssertTrue("\(e)".contains("missing.safetensors"), "\(e)")
        }
        // A file whose name holds a colon is taken whole when it exists; bf16 reads.
        let colon = dir.appendingPathComponent("a:b.safetensors")
        try writeSafeTensors(colon, [("emb_params", [2, 4], [1, 2, 3, 4, 5, 6, 7, 8])], dtype: "BF16")
        let e = try TextualInversionEmbedding(argument: colon.path)
        XCTAssertEqual([e.token, e.layout.rawValue], ["a:b", "a1111"])
        XCTAssertEqual(e.vectors, [1, 2, 3, 4, 5, 6, 7, 8])
        XCTAssertEqual(try TextualInversionEmbedding(argument: colon.path + ":<ab>").token, "<ab>")
    }

    /// maybe_convert_prompt's details: Python's str.replace (non-overlapping, left to right, raw
    /// text, case-sensitive) after a normalised (case-blind) match.
    func testPromptExpansionAsPython() throws {
        func scalars(_ s: String) -> [Unicode.Scalar] { Array(s.unicodeScalars) }
        XCTAssertEqual(TextualInversion.replacingAll(scalars("aaaa"), scalars("aa"), with: scalars("b")), scalars("bb"))
        XCTAssertEqual(TextualInversion.replacingAll(scalars("aaa"), scalars("aa"), with: scalars("aab")), scalars("aaba"))
        XCTAssertEqual(TextualInversion.replacingAll(scalars("e\u{301}e"), scalars("e"), with: scalars("x")), scalars("x\u{301}x"))
        let (_, inversion, tokenizer, _) = try Self.loaded("sd1")
        XCTAssertEqual(inversion.prompt("Inkwash, inkwash", tokenizer: tokenizer), "Inkwash, inkwash inkwash_1")
        XCTAssertEqual(tokenizer.addedTokenPieces("Inkwash <WOOD-style>"), ["inkwash", "<wood-style>"])
        XCTAssertEqual(inversion.prompt("no tokens here", tokenizer: tokenizer), "no tokens here")
        XCTAssertEqual(try TextualInversion([]).prompt("inkwash", tokenizer: Fixtures.tokenizer("sd1")), "inkwash")
    }

    /// encode-text's checks of tokenize's record: other embeddings, another order, none.
    func testPrepareRefusesOtherEmbeddings() throws {
        let (ref, inversion, _, first) = try Self.loaded("sd1")
        let recorded = inversion.metadata(firstID: first)
        XCTAssertEqual(recorded[MetadataKey.textualInversionVectors], "1,2,2")
        XCTAssertEqual(recorded[MetadataKey.textualInversionFirstID], "49408")
        let encoder = { try CLIPTextModel(folder: Fixtures.model("sd1")) }
        let reversed = try TextualInversion(arguments: ref.arguments.reversed())
        XCTAssertThrowsError(try reversed.prepare(encoder(), model: "sd1", records: [(ref.ids, 77, recorded)])) { e in
            XCTAssertTrue("\(e)".contains("the fingerprints differ) — give encode-text the same --embedding files as tokenize, in the same order"), "\(e)")
        }
        XCTAssertThrowsError(try TextualInversion([]).prepare(encoder(), model: "sd1", records: [(ref.ids, 77, recorded)])) { e in
            XCTAssertTrue("\(e)".contains("encode-text was given none"), "\(e)")
        }
        XCTAssertThrowsError(try TextualInversion([]).prepare(encoder(), model: "sd1", records: [(ref.ids, 77, [:])])) { e in
            XCTAssertTrue("\(e)".contains("token id 49408 at prompt 1, position 4 is past the vocabulary of 49408"), "\(e)")
        }
        var moved = recorded
        moved[MetadataKey.textualInversionFirstID] = "49000"
        XCTAssertThrowsError(try inversion.prepare(encoder(), model: "sd1", records: [(ref.ids, 77, moved)])) { e in
            XCTAssertTrue("\(e)".contains("begin at id 49000"), "\(e)")
        }
        // Ids that use no added token encode without the embeddings; embeddings for ids that
        // name none are noted.
        let plain: [Int32] = [49406, 320, 2368, 49407]
        XCTAssertEqual(try TextualInversion([]).prepare(encoder(), model: "sd1", records: [(plain, 4, recorded)]), [])
        XCTAssertEqual(try inversion.prepare(encoder(), model: "sd1", records: [(plain, 4, [:])]).count, 1)
        // Past the appended rows is still outside the vocabulary.
        let m = try encoder()
        _ = try inversion.prepare(m, model: "sd1", records: [(ref.ids, 77, recorded)])
        XCTAssertThrowsError(try m.encode(ids: [49406, 49413], batch: 1, length: 2)) { e in
            XCTAssertTrue("\(e)".contains("token id 49413 at prompt 1, position 1 is outside the vocabulary of 49413"), "\(e)")
        }
    }
}
