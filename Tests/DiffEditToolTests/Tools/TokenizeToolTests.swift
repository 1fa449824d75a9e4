import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// tokenize(1) end to end: the built tool against the reference ids, its options and its errors.
final class TokenizeToolTests: XCTestCase {
    func testToolMatchesTheReferenceFromArgumentsAndStdin() throws {
        let prompts = try Fixtures.prompts()
        let want = try Fixtures.record("tokens-sd2.tensor", "ids").int32s()
        // Arguments carry any prompt, newlines included; take a spread of them.
        let picks = Array(stride(from: 0, to: prompts.count, by: 7))
        let r = try runTool("tokenize", ["--model", Fixtures.path("sd2"), "--"] + picks.map { prompts[$0] })
        XCTAssertEqual(r.status, 0, r.err)
        let recs = try decodeStream(r.out)
        XCTAssertEqual(recs.count, 1)
        XCTAssertEqual(recs[0].name, "ids")
        XCTAssertEqual(recs[0].dtype, .i32)
        XCTAssertEqual(recs[0].shape, [picks.count, 77])
        XCTAssertEqual(try recs[0].int32s(), picks.flatMap { want[($0 * 77)..<(($0 + 1) * 77)] })
        let kept = try JSONSerialization.jsonObject(with: Data(recs[0].metadata["prompts"]!.utf8)) as! [String]
        XCTAssertEqual(kept, picks.map { prompts[$0] })
        XCTAssertEqual(recs[0].metadata["pad_id"], "0")

        // Stdin: one prompt per line (those without line breaks), an empty line is "".
        let lines = prompts.enumerated().filter { !$0.element.unicodeScalars.contains(where: { $0 == "\n" || $0 == "\r" }) }
        let text = lines.map { $0.element + "\n" }.joined()
        let s = try runTool("tokenize", ["--model", Fixtures.path("sd2"), "-q"], stdin: Array(text.utf8))
        XCTAssertEqual(s.status, 0, s.err)
        let srec = try decodeStream(s.out)[0]
        XCTAssertEqual(srec.shape, [lines.count, 77])
        XCTAssertEqual(try srec.int32s(), lines.flatMap { want[($0.offset * 77)..<(($0.offset + 1) * 77)] })
        XCTAssertGreaterThan(lines.count, 500)
    }

    func testToolNoPadWritesOneRecordPerPrompt() throws {
        let r = try runTool("tokenize", ["--model", Fixtures.path("sd1"), "--no-pad", "a cat", ""])
        XCTAssertEqual(r.status, 0, r.err)
        let recs = try decodeStream(r.out)
        XCTAssertEqual(recs.map(\.shape), [[1, 4], [1, 2]])
        XCTAssertEqual(try recs[1].int32s(), [49406, 49407])
        XCTAssertEqual(recs[0].metadata["prompts"], "[\"a cat\"]")
    }

    func testToolKeepsLongPromptsCutInMetadata() throws {
        let long = String(repeating: "é", count: 3000)
        let r = try runTool("tokenize", ["--model", Fixtures.path("sd1"), "-q", long])
        XCTAssertEqual(r.status, 0, r.err)
        let kept = try decodeStream(r.out)[0].metadata["prompts"]!
        XCTAssertEqual(kept, "[\"" + String(repeating: "é", count: 1024) + "…\"]")
        // Many long prompts: the key is left out rather than passing the header limit.
        let many = try runTool("tokenize", ["--model", Fixtures.path("sd1"), "-q"],
                               stdin: Array(String(repeating: long + "\n", count: 200).utf8))
        XCTAssertEqual(many.status, 0, many.err)
        let rec = try decodeStream(many.out)[0]
        XCTAssertEqual(rec.shape, [200, 77])
        XCTAssertNil(rec.metadata["prompts"])
    }

    func testToolShowAndTruncationWarning() throws {
        let r = try runTool("tokenize", ["--model", Fixtures.path("sd2"), "--show", "--max-length", "6", "A cat!", "a b c d e f"])
        XCTAssertEqual(r.status, 0, r.err)
        let lines = String(decoding: r.out, as: UTF8.self).split(separator: "\n").map(String.init)
        let tok = try Fixtures.tokenizer("sd2")
        let catIDs = tok.inputIDs("A cat!", maxLength: 6)
        XCTAssertEqual(lines.count, 2)
        XCTAssertTrue(lines[0].hasPrefix("49406:<|startoftext|> \(catIDs[1]):a</w> \(catIDs[2]):cat</w> 0:! 49407:<|endoftext|>"), lines[0])
        XCTAssertTrue(lines[0].hasSuffix(" 0:!"), lines[0])
        XCTAssertTrue(r.err.contains("prompt 2 has 8 tokens, truncated to 6; dropped: e</w> f</w>"), r.err)
    }

    func testToolErrors() throws {
        let missing = try runTool("tokenize", ["--model", "/nonexistent/model", "a cat"])
        XCTAssertEqual(missing.status, 1)
        XCTAssertEqual(missing.err.split(separator: "\n").count, 1)
        XCTAssertTrue(missing.err.hasPrefix("tokenize: model '/nonexistent/model' does not exist"), missing.err)

        var env = ProcessInfo.processInfo.environment
        env["DIFFEDIT_MODEL"] = nil
        // With no --model and no $DIFFEDIT_MODEL the tools use the bundled demo model.
        let none = try runTool("tokenize", ["--show", "a cat"], environment: env)
        XCTAssertEqual(none.status, 0, none.err)
        XCTAssertNotNil(ModelFolder.bundledModelPath)
        XCTAssertTrue(ModelFolder.bundledModelPath?.hasSuffix("demo/model") ?? false)

        let dir = try temporaryDirectory(self)
        let noIndex = try runTool("tokenize", ["--model", dir.path, "a cat"])
        XCTAssertTrue(noIndex.err.contains("has no model_index.json"), noIndex.err)

        try Data("{}".utf8).write(to: dir.appendingPathComponent("model_index.json"))
        let noTok = try runTool("tokenize", ["--model", dir.path, "a cat"])
        XCTAssertEqual(noTok.status, 1)
        XCTAssertTrue(noTok.err.contains("tokenizer does not exist"), noTok.err)

        let tokDir = dir.appendingPathComponent("tokenizer")
        try FileManager.default.createDirectory(at: tokDir, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Fixtures.path("sd1/tokenizer/vocab.json"), toPath: tokDir.appendingPathComponent("vocab.json").path)
        let noMerges = try runTool("tokenize", ["--model", dir.path, "a cat"])
        XCTAssertTrue(noMerges.err.contains("has vocab.json but no merges.txt"), noMerges.err)

        try Data("#version: 0.2\ni n\n☃ ☄\n".utf8).write(to: tokDir.appendingPathComponent("merges.txt"))
        let badMerge = try runTool("tokenize", ["--model", dir.path, "a cat"])
        XCTAssertTrue(badMerge.err.contains("merge #2 '☃ ☄' uses a token missing from the vocabulary"), badMerge.err)

        try Data("{\"a\": 1,".utf8).write(to: tokDir.appendingPathComponent("vocab.json"))
        let badJSON = try runTool("tokenize", ["--model", dir.path, "a cat"])
        XCTAssertTrue(badJSON.err.hasPrefix("tokenize: tokenizer/vocab.json is not valid JSON"), badJSON.err)
        XCTAssertEqual(badJSON.err.split(separator: "\n").count, 1)

        let bad = try runTool("tokenize", ["--model", Fixtures.path("sd1"), "--max-length", "1", "a"])
        XCTAssertTrue(bad.err.contains("--max-length 1 is out of range: --max-length takes an integer from 2 to 4096"), bad.err)
        let notUTF8 = try runTool("tokenize", ["--model", Fixtures.path("sd1")], stdin: [0x61, 0xFF, 0x0A])
        XCTAssertTrue(notUTF8.err.contains("stdin is not UTF-8"), notUTF8.err)
        let empty = try runTool("tokenize", ["--model", Fixtures.path("sd1")], stdin: [])
        XCTAssertTrue(empty.err.contains("no prompts"), empty.err)
    }
}
