import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// CLIPTokenizer against transformers' CLIPTokenizer (tokens-sd1.tensor, tokens-sd2.tensor made
/// from prompts.json by Tests/Reference/make_fixtures.py): every id must be equal.
final class TokenizerTests: XCTestCase {
    /// Compares every prompt's padded ids with the reference's [N, 77] `ids`.
    static func checkPadded(_ pipeline: String, _ tok: CLIPTokenizer, file: StaticString = #filePath, line: UInt = #line) throws {
        let prompts = try Fixtures.prompts()
        let ref = try Fixtures.record("tokens-\(pipeline).tensor", "ids")
        XCTAssertEqual(ref.shape, [prompts.count, 77], file: file, line: line)
        let want = try ref.int32s()
        var mismatches = 0
        for (k, p) in prompts.enumerated() {
            let got = tok.inputIDs(p)
            let row = Array(want[(k * 77)..<((k + 1) * 77)])
            if got != row {
                mismatches += 1
                if mismatches <= 5 { XCTFail("\(pipeline) prompt \(k) \(p.debugDescription): got \(got), want \(row)", file: file, line: line) }
            }
        }
        XCTAssertEqual(mismatches, 0, "\(pipeline): \(mismatches) of \(prompts.count) prompts differ", file: file, line: line)
    }

    func testSD1TokenizerParity640Prompts() throws {
        let tok = try Fixtures.tokenizer("sd1")
        XCTAssertEqual(tok.padToken, "<|endoftext|>")
        XCTAssertEqual(tok.padID, 49407)
        XCTAssertEqual(tok.vocab.count, 49408)
        try Self.checkPadded("sd1", tok)
    }

    func testSD2TokenizerParity640Prompts() throws {
        let tok = try Fixtures.tokenizer("sd2")
        XCTAssertEqual(tok.padToken, "!")
        XCTAssertEqual(tok.padID, 0)
        try Self.checkPadded("sd2", tok)
    }

    /// Unpadded, truncated ids (`tokenizer(p, truncation=True, max_length=77)`), both pipelines.
    func testNoPadParity640PromptsBothPipelines() throws {
        let prompts = try Fixtures.prompts()
        for pipeline in ["sd1", "sd2"] {
            let tok = try Fixtures.tokenizer(pipeline)
            let flat = try Fixtures.record("tokens-\(pipeline).tensor", "ids.nopad").int32s()
            let lengths = try Fixtures.record("tokens-\(pipeline).tensor", "lengths").int32s()
            XCTAssertEqual(lengths.count, prompts.count)
            var at = 0, mismatches = 0
            for (k, p) in prompts.enumerated() {
                let want = Array(flat[at..<(at + Int(lengths[k]))])
                at += Int(lengths[k])
                if tok.inputIDs(p, pad: false) != want {
                    mismatches += 1
                    if mismatches <= 5 { XCTFail("\(pipeline) prompt \(k) \(p.debugDescription): got \(tok.inputIDs(p, pad: false)), want \(want)") }
                }
            }
            XCTAssertEqual(at, flat.count)
            XCTAssertEqual(mismatches, 0, "\(pipeline): \(mismatches) prompts differ")
        }
    }

    /// The same vocabulary and merges given as a tokenizer.json (what transformers 5's
    /// save_pretrained writes) tokenise the same.
    func testTokenizerJSONLayoutGivesTheSameIds() throws {
        let dir = try temporaryDirectory(self)
        let src = Fixtures.path("sd2/tokenizer")
        let vocab = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: src + "/vocab.json")))
        let merges = try String(contentsOfFile: src + "/merges.txt", encoding: .utf8)
            .split(separator: "\n").dropFirst().map(String.init)
        let tokenizerJSON: [String: Any] = [
            "version": "1.0",
            "added_tokens": [
                ["id": 0, "content": "!", "special": true, "normalized": false],
                ["id": 49406, "content": "<|startoftext|>", "special": true, "normalized": false],
                ["id": 49407, "content": "<|endoftext|>", "special": true, "normalized": false],
            ],
            "model": ["type": "BPE", "vocab": vocab, "merges": merges.map { $0.split(separator: " ").map(String.init) },
                      "end_of_word_suffix": "</w>", "continuing_subword_prefix": ""],
        ]
        try JSONSerialization.data(withJSONObject: tokenizerJSON).write(to: dir.appendingPathComponent("tokenizer.json"))
        try FileManager.default.copyItem(atPath: src + "/tokenizer_config.json",
                                         toPath: dir.appendingPathComponent("tokenizer_config.json").path)
        let fromJSON = try CLIPTokenizer(directory: dir.path)
        let fromFiles = try Fixtures.tokenizer("sd2")
        for p in try Fixtures.prompts() {
            XCTAssertEqual(fromJSON.inputIDs(p), fromFiles.inputIDs(p), p.debugDescription)
        }
    }

    /// The Hub's SD 1.5 and SD 2.1 tokenizer configs: special tokens as {"content", "normalized":
    /// true} dicts, and for 2.1 a special_tokens_map.json whose pad "!" overrides the config's
    /// "<|endoftext|>". The expected ids are what transformers 5.24's CLIPTokenizer gave for these
    /// exact files (with the fixture's vocab.json and merges.txt).
    func testHubStyleConfigsSpecialTokenMapAndNormalizedFlags() throws {
        func addedToken(_ c: String) -> [String: Any] {
            ["__type": "AddedToken", "content": c, "lstrip": false, "normalized": true, "rstrip": false, "single_word": false]
        }
        let config: [String: Any] = [
            "add_prefix_space": false, "bos_token": addedToken("<|startoftext|>"), "do_lower_case": true,
            "eos_token": addedToken("<|endoftext|>"), "errors": "replace", "model_max_length": 77,
            "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer", "unk_token": addedToken("<|endoftext|>"),
        ]
        let cases: [(pad: String, cat: [Int32], specials: [Int32])] = [
            ("<|endoftext|>", [49406, 320, 2368, 256, 49407], [49406, 27, 347, 40786, 4160, 91, 285, 49406, 343, 49407]),
            ("!", [49406, 320, 2368, 0, 49407], [49406, 49407, 49406, 343, 49407]),
        ]
        for c in cases {
            let dir = try temporaryDirectory(self)
            for f in ["vocab.json", "merges.txt"] {
                try FileManager.default.copyItem(atPath: Fixtures.path("sd1/tokenizer/" + f), toPath: dir.appendingPathComponent(f).path)
            }
            try JSONSerialization.data(withJSONObject: config).write(to: dir.appendingPathComponent("tokenizer_config.json"))
            let map: [String: Any] = ["bos_token": addedToken("<|startoftext|>"), "eos_token": addedToken("<|endoftext|>"),
                                      "pad_token": c.pad, "unk_token": addedToken("<|endoftext|>")]
            try JSONSerialization.data(withJSONObject: map).write(to: dir.appendingPathComponent("special_tokens_map.json"))
            let tok = try CLIPTokenizer(directory: dir.path)
            XCTAssertEqual(tok.padToken, c.pad)
            XCTAssertEqual(tok.inputIDs("a cat!", pad: false), c.cat, c.pad)
            XCTAssertEqual(tok.inputIDs("<|EndOfText|> <|STARTOFTEXT|>x", pad: false), c.specials, c.pad)
        }
    }

    /// \s, \p{L}, \p{N} as the reference's regex engine classifies them. The expectations were
    /// read from `tokenizers`' Split pre-tokenizer run over every scalar (U+A7CE and U+10940 are
    /// Unicode 17 letters its Unicode 16 tables do not know).
    func testCharacterClassesFollowTheReferenceEngine() {
        let cases: [(UInt32, CLIPTokenizer.CharacterClass)] = [
            (0x20, .space), (0x85, .space), (0xA0, .space), (0x2028, .space), (0x3000, .space), (0x200B, .other),
            (0xB2, .number), (0x216B, .number), (0x0663, .number), (0x1D7D9, .number),
            (0x30C4, .letter), (0x3B1, .letter), (0x2B0, .letter), (0x301, .other), (0x1F431, .other),
            (0xA7CE, .other), (0x10940, .other), (0x5F, .other),
        ]
        for (v, want) in cases {
            XCTAssertEqual(CLIPTokenizer.classify(Unicode.Scalar(v)!), want, String(v, radix: 16))
        }
    }

    func testBytePieceTableIsGPT2s() {
        let t = CLIPTokenizer.byteCharacters
        XCTAssertEqual(Set(t).count, 256)
        XCTAssertEqual(t[0x21], "!")
        XCTAssertEqual(t[0x00].value, 0x100)
        XCTAssertEqual(t[0x20].value, 0x120)
        XCTAssertEqual(t[0xAD].value, 0x143)
    }

    func testMaxLengthTruncatesAndPads() throws {
        let tok = try Fixtures.tokenizer("sd1")
        let ids = tok.inputIDs("a photo of a cat sitting on a table", maxLength: 5)
        XCTAssertEqual(ids.count, 5)
        XCTAssertEqual(ids.first, tok.bosID)
        XCTAssertEqual(ids.last, tok.eosID)
        XCTAssertEqual(Array(ids[1..<4]), Array(tok.encode("a photo of a cat sitting on a table").prefix(3)))
        XCTAssertEqual(tok.inputIDs("", maxLength: 4), [tok.bosID, tok.eosID, tok.padID, tok.padID])
    }

    // MARK: The tool

}

/// The small JSON reader used for tokenizer files.
final class JSONValueTests: XCTestCase {
    func testParsesValuesAndEscapes() throws {
        let v = try JSONValue.parse(Array(#" {"a": [1, -2.5e1, true, false, null], "s": "x\"\\\/\n\u00e9\ud83d\ude00", "e": {}} "#.utf8), label: "t")
        XCTAssertEqual(v["a"], .array([.number(1), .number(-25), .bool(true), .bool(false), .null]))
        XCTAssertEqual(v["s"]?.stringValue, "x\"\\/\né😀")
        XCTAssertEqual(v["e"], .object([]))
        XCTAssertEqual(v["a"]?.arrayValue?.first?.intValue, 1)
    }

    func testRejectsMalformedInput() {
        let bad: [(String, String)] = [
            ("{\"a\": 1", "unexpected end"), ("{\"a\" 1}", "expected ':'"), ("[1,]", "expected a value"),
            ("\"\\ud800\"", "unpaired surrogate"), ("\"\\q\"", "bad escape"), ("tru", "truncated literal"),
            ("{} x", "unexpected data"), ("\"a\u{01}\"", "control character"),
            (String(repeating: "[", count: 300), "nesting deeper"),
        ]
        for (text, fragment) in bad {
            XCTAssertThrowsError(try JSONValue.parse(Array(text.utf8), label: "t.json"), text) { e in
                XCTAssertTrue("\(e)".contains(fragment), "\(text): \(e)")
                XCTAssertTrue("\(e)".hasPrefix("t.json is not valid JSON"), "\(e)")
            }
        }
        XCTAssertThrowsError(try JSONValue.parse([0x22, 0xFF, 0x22], label: "t")) { e in
            XCTAssertTrue("\(e)".contains("not valid UTF-8"), "\(e)")
        }
    }
}
