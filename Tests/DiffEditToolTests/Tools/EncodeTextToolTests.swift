import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// encode-text(1) end to end: tokenize | encode-text against transformers' fixtures, --mean, unpadded records and the tool's refusals.
final class EncodeTextToolTests: XCTestCase {
    func testTokenizeThenEncodeTextPipeline() throws {
        for pipeline in ["sd1", "sd2"] {
            let (_, n, prompts) = try Fixtures.referenceIDs(pipeline)
            let model = Fixtures.path(pipeline)
            let quoted = prompts.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
            let r = try sh("tokenize -q --model \(model) -- \(quoted) | encode-text --model \(model)")
            XCTAssertEqual(r.status, 0, r.err)
            let recs = try decodeStream(r.out)
            XCTAssertEqual(recs.map(\.name), ["embeddings"])
            XCTAssertEqual(recs[0].shape, [n, 77, try CLIPTextModel(folder: Fixtures.model(pipeline)).config.hiddenSize])
            XCTAssertEqual(recs[0].metadata["clip_skip"], "0")
            XCTAssertNotNil(recs[0].metadata["prompts"])
            let want = try Fixtures.record("\(pipeline)/ref/text.tensor", "text.last_hidden").floats()
            assertClose(recs[0].floats(), want, atol: Tolerance.textEmbeddings, "\(pipeline) tokenize | encode-text")

            let skip = try runTool("encode-text", ["--model", model, "--clip-skip", "1"],
                                   stdin: TensorStream.encode(Fixtures.record("\(pipeline)/ref/text.tensor", "text.ids")))
            XCTAssertEqual(skip.status, 0, skip.err)
            let wantSkip = try Fixtures.record("\(pipeline)/ref/text.tensor", "text.clip_skip1").floats()
            assertClose(try decodeStream(skip.out)[0].floats(), wantSkip, atol: Tolerance.textEmbeddings, "\(pipeline) encode-text --clip-skip 1")
        }
    }

    func testMeanAveragesPrompts() throws {
        let ids = try Fixtures.record("sd1/ref/text.tensor", "text.ids")
        let r = try runTool("encode-text", ["--model", Fixtures.path("sd1"), "--mean"], stdin: TensorStream.encode(ids))
        XCTAssertEqual(r.status, 0, r.err)
        let rec = try decodeStream(r.out)[0]
        let want = try Fixtures.record("sd1/ref/text.tensor", "text.last_hidden")
        let n = want.shape[0], per = want.count / n
        let w = want.floats()
        let mean = (0..<per).map { i in (0..<n).reduce(Float(0)) { $0 + w[$1 * per + i] } / Float(n) }
        XCTAssertEqual(rec.shape, [1, 77, want.shape[2]])
        XCTAssertEqual(rec.metadata["mean_of"], String(n))
        assertClose(rec.floats(), mean, atol: Tolerance.textEmbeddings, "--mean")
    }

    func testNoPadRecordsEncodeEach() throws {
        let model = Fixtures.path("sd2")
        let r = try sh("tokenize --no-pad --model \(model) 'a cat' '' | encode-text --model \(model)")
        XCTAssertEqual(r.status, 0, r.err)
        let recs = try decodeStream(r.out)
        let d = try CLIPTextModel(folder: Fixtures.model("sd2")).config.hiddenSize
        XCTAssertEqual(recs.map(\.shape), [[1, 4, d], [1, 2, d]])
        // Causal attention: unpadded prefixes equal the padded embeddings' first positions.
        let want = try Fixtures.record("sd2/ref/text.tensor", "text.last_hidden").floats()
        assertClose(recs[0].floats(), Array(want[0..<(4 * d)]), atol: Tolerance.textEmbeddings, "a cat unpadded")
    }

    func testToolErrors() throws {
        let model = Fixtures.path("sd1")
        let floats = TensorStream.encode(TensorRecord(name: "x", shape: [1, 2], floats: [1, 2]))
        let f = try runTool("encode-text", ["--model", model], stdin: floats)
        XCTAssertEqual(f.status, 1)
        XCTAssertTrue(f.err.hasPrefix("encode-text: record 'x' is f32, expected integer token ids"), f.err)

        let oov = TensorStream.encode(TensorRecord(name: "ids", shape: [1, 2], int32s: [49406, 60000]))
        let o = try runTool("encode-text", ["--model", model], stdin: oov)
        XCTAssertTrue(o.err.contains("token id 60000"), o.err)

        let empty = try runTool("encode-text", ["--model", model], stdin: [])
        XCTAssertTrue(empty.err.contains("empty input"), empty.err)

        // A model folder whose text encoder lacks a weight, or has one of the wrong shape.
        let dir = try temporaryDirectory(self)
        let te = dir.appendingPathComponent("text_encoder")
        try FileManager.default.createDirectory(at: te, withIntermediateDirectories: true)
        try Data("{}".utf8).write(to: dir.appendingPathComponent("model_index.json"))
        try FileManager.default.copyItem(atPath: Fixtures.path("sd1/text_encoder/config.json"), toPath: te.appendingPathComponent("config.json").path)
        let good = TensorStream.encode(TensorRecord(name: "ids", shape: [1, 2], int32s: [49406, 49407]))
        let noWeights = try runTool("encode-text", ["--model", dir.path], stdin: good)
        XCTAssertTrue(noWeights.err.contains("text_encoder has no weights"), noWeights.err)

        try writeSafeTensors(te.appendingPathComponent("model.safetensors"), [
            ("text_model.embeddings.token_embedding.weight", [49408, 32]),
            ("text_model.embeddings.position_embedding.weight", [77, 32]),
        ])
        let missing = try runTool("encode-text", ["--model", dir.path], stdin: good)
        XCTAssertEqual(missing.status, 1)
        XCTAssertEqual(missing.err.split(separator: "\n").count, 1)
        XCTAssertTrue(missing.err.contains("missing weight 'text_model.encoder.layers.0.layer_norm1.weight'"), missing.err)

        try writeSafeTensors(te.appendingPathComponent("model.safetensors"), [
            ("embeddings.token_embedding.weight", [49408, 32]), ("embeddings.position_embedding.weight", [77, 16]),
        ])
        let shape = try runTool("encode-text", ["--model", dir.path], stdin: good)
        XCTAssertTrue(shape.err.contains("weight 'embeddings.position_embedding.weight' has shape [77, 16] but text_encoder/config.json implies [77, 32]"), shape.err)
    }
}
