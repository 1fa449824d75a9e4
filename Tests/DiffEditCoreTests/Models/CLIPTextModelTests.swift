import Foundation
import XCTest
@testable import DiffEditCore

/// CLIPTextModel against transformers' CLIPTextModel / diffusers' encode_prompt
/// (sd1/ref/text.tensor: f32 weights, quick_gelu; sd2/ref/text.tensor: f16 weights, gelu).
final class CLIPTextModelTests: XCTestCase {
    /// f32 throughout; the reference differs from us only in summation order (sgemm, softmax).
    /// About 10× the worst error measured on an AVX2-only AMD EPYC: 1.9e-6 (sd2 clip_skip 1; the
    /// last hidden state 1.7e-6 on both). It was README's general 1e-4, 52× the worst.
    static let atol: Double = 2e-5

    func model(_ pipeline: String) throws -> CLIPTextModel {
        try CLIPTextModel(folder: Fixtures.model(pipeline))
    }

    func referenceIDs(_ pipeline: String) throws -> (ids: [Int32], n: Int, prompts: [String]) { try Self.referenceIDs(pipeline) }

    static func referenceIDs(_ pipeline: String) throws -> (ids: [Int32], n: Int, prompts: [String]) {
        let r = try Fixtures.record("\(pipeline)/ref/text.tensor", "text.ids")
        let prompts = try JSONSerialization.jsonObject(with: Data(r.metadata["prompts_json"]!.utf8)) as! [String]
        XCTAssertEqual(r.shape, [prompts.count, 77])
        return (try r.int32s(), r.shape[0], prompts)
    }

    /// last_hidden_state of the fixture prompts, from the model's own tokenizer and text encoder.
    static func checkLastHidden(_ pipeline: String, _ folder: ModelFolder, label: String) throws {
        let m = try CLIPTextModel(folder: folder)
        let (ids, n, prompts) = try referenceIDs(pipeline)
        // The fixture's ids are our tokenizer's ids too.
        let tok = try CLIPTokenizer(folder: folder)
        XCTAssertEqual(prompts.flatMap { tok.inputIDs($0) }, ids, label)
        let out = try m.encode(ids: ids, batch: n, length: 77)
        let want = try Fixtures.record("\(pipeline)/ref/text.tensor", "text.last_hidden")
        XCTAssertEqual(out.shape, want.shape)
        assertClose(out.data, want.floats(), atol: Self.atol, "\(label) last_hidden_state")
    }

    func testSD1LastHiddenStateParity() throws { try Self.checkLastHidden("sd1", Fixtures.model("sd1"), label: "sd1") }
    func testSD2LastHiddenStateParityF16Weights() throws { try Self.checkLastHidden("sd2", Fixtures.model("sd2"), label: "sd2") }

    func testClipSkip1ParityBothPipelines() throws {
        for pipeline in ["sd1", "sd2"] { try Self.checkClipSkip1(pipeline, model(pipeline), label: pipeline) }
    }

    static func checkClipSkip1(_ pipeline: String, _ m: CLIPTextModel, label: String) throws {
        let (ids, n, _) = try referenceIDs(pipeline)
        let out = try m.encode(ids: ids, batch: n, length: 77, clipSkip: 1)
        let want = try Fixtures.record("\(pipeline)/ref/text.tensor", "text.clip_skip1")
        assertClose(out.data, want.floats(), atol: Self.atol, "\(label) clip_skip=1")
        // A test that can fail: skipping a layer changes the output.
        let last = try Fixtures.record("\(pipeline)/ref/text.tensor", "text.last_hidden").floats()
        // (maxAbsError is NaN-aware: a NaN output makes this fail too.)
        XCTAssertGreaterThan(closeness(out.data, last, atol: 0).maxAbsError, 1e-2, label)
    }

    /// Every intermediate hidden state (embeddings, then each block's output) of one prompt.
    func testHiddenStatesLayerByLayer() throws {
        for pipeline in ["sd1", "sd2"] { try Self.checkHiddenStates(pipeline, model(pipeline), label: pipeline) }
    }

    static func checkHiddenStates(_ pipeline: String, _ m: CLIPTextModel, label: String) throws {
        let (ids, _, _) = try referenceIDs(pipeline)
        let ref = try Fixtures.record("\(pipeline)/ref/text.tensor", "text.hidden_states")
        let index = Int(ref.metadata["prompt_index"]!)!
        let d = m.config.hiddenSize
        XCTAssertEqual(ref.shape, [m.config.layers + 1, 77, d], label)
        let want = ref.floats()
        for k in 0...m.config.layers {
            let h = try m.hiddenState(ids: Array(ids[(index * 77)..<((index + 1) * 77)]), batch: 1, length: 77, layers: k)
            assertClose(h.data, Array(want[(k * 77 * d)..<((k + 1) * 77 * d)]), atol: Self.atol, "\(label) hidden_states[\(k)]")
        }
    }

    func testConfigMatchesTheFixtures() throws {
        let c1 = try model("sd1").config
        XCTAssertEqual(c1.activation, .quickGelu)
        let c2 = try model("sd2").config
        XCTAssertEqual(c2.activation, .gelu)
        XCTAssertEqual(try model("sd2").weights.file.entries["embeddings.token_embedding.weight"]?.dtype, .F16)
    }

    /// A prompt's embedding does not depend on the prompts batched with it (beyond BLAS blocking), nor on tokens
    /// after it (causal attention): the first 4 positions of a short sequence equal those of
    /// the full one.
    func testBatchIndependenceAndCausality() throws {
        let m = try model("sd1")
        let (ids, n, _) = try referenceIDs("sd1")
        let all = try m.encode(ids: ids, batch: n, length: 77)
        let d = m.config.hiddenSize
        let one = try m.encode(ids: Array(ids[77..<154]), batch: 1, length: 77)
        assertClose(one.data, Array(all.data[(77 * d)..<(154 * d)]), atol: 1e-5, "batch of one")
        let short = try m.encode(ids: Array(ids[0..<4]), batch: 1, length: 4)
        assertClose(short.data, Array(all.data[0..<(4 * d)]), atol: 1e-5, "prefix")
    }

    /// More prompts than one forward pass takes (CLIPTextModel.promptsPerPass).
    func testLargeBatchIsEncodedInPasses() throws {
        let m = try model("sd2")
        let (ids, n, _) = try referenceIDs("sd2")
        let copies = CLIPTextModel.promptsPerPass / n + 2
        let out = try m.encode(ids: Array([[Int32]](repeating: ids, count: copies).joined()), batch: n * copies, length: 77)
        let want = try Fixtures.record("sd2/ref/text.tensor", "text.last_hidden").floats()
        XCTAssertGreaterThan(n * copies, CLIPTextModel.promptsPerPass)
        assertClose(out.data, Array([[Float]](repeating: want, count: copies).joined()), atol: Self.atol, "\(n * copies) prompts")
    }

    func testBadInputsAreClearErrors() throws {
        let m = try model("sd1")
        XCTAssertThrowsError(try m.encode(ids: [49406, 49408], batch: 1, length: 2)) { e in
            XCTAssertTrue("\(e)".contains("token id 49408 at prompt 1, position 1 is outside the vocabulary of 49408"), "\(e)")
        }
        XCTAssertThrowsError(try m.encode(ids: [Int32](repeating: 1, count: 78), batch: 1, length: 78)) { e in
            XCTAssertTrue("\(e)".contains("at most 77"), "\(e)")
        }
        XCTAssertThrowsError(try m.encode(ids: [1, 2], batch: 1, length: 2, clipSkip: 4)) { e in
            XCTAssertTrue("\(e)".contains("--clip-skip 4 is out of range"), "\(e)")
        }
    }

    // MARK: The tool

    func decode(_ bytes: [UInt8]) throws -> [TensorRecord] {
        let dir = try temporaryDirectory(self)
        let f = dir.appendingPathComponent("s.tensor")
        try Data(bytes).write(to: f)
        return try TensorStream.readAll(path: f.path)
    }

    func testTokenizeThenEncodeTextPipeline() throws {
        for pipeline in ["sd1", "sd2"] {
            let (_, n, prompts) = try referenceIDs(pipeline)
            let model = Fixtures.path(pipeline)
            let quoted = prompts.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
            let r = try sh("tokenize -q --model \(model) -- \(quoted) | encode-text --model \(model)")
            XCTAssertEqual(r.status, 0, r.err)
            let recs = try decode(r.out)
            XCTAssertEqual(recs.map(\.name), ["embeddings"])
            XCTAssertEqual(recs[0].shape, [n, 77, try self.model(pipeline).config.hiddenSize])
            XCTAssertEqual(recs[0].metadata["clip_skip"], "0")
            XCTAssertNotNil(recs[0].metadata["prompts"])
            let want = try Fixtures.record("\(pipeline)/ref/text.tensor", "text.last_hidden").floats()
            assertClose(recs[0].floats(), want, atol: Self.atol, "\(pipeline) tokenize | encode-text")

            let skip = try runTool("encode-text", ["--model", model, "--clip-skip", "1"],
                                   stdin: TensorStream.encode(Fixtures.record("\(pipeline)/ref/text.tensor", "text.ids")))
            XCTAssertEqual(skip.status, 0, skip.err)
            let wantSkip = try Fixtures.record("\(pipeline)/ref/text.tensor", "text.clip_skip1").floats()
            assertClose(try decode(skip.out)[0].floats(), wantSkip, atol: Self.atol, "\(pipeline) encode-text --clip-skip 1")
        }
    }

    func testMeanAveragesPrompts() throws {
        let ids = try Fixtures.record("sd1/ref/text.tensor", "text.ids")
        let r = try runTool("encode-text", ["--model", Fixtures.path("sd1"), "--mean"], stdin: TensorStream.encode(ids))
        XCTAssertEqual(r.status, 0, r.err)
        let rec = try decode(r.out)[0]
        let want = try Fixtures.record("sd1/ref/text.tensor", "text.last_hidden")
        let n = want.shape[0], per = want.count / n
        let w = want.floats()
        let mean = (0..<per).map { i in (0..<n).reduce(Float(0)) { $0 + w[$1 * per + i] } / Float(n) }
        XCTAssertEqual(rec.shape, [1, 77, want.shape[2]])
        XCTAssertEqual(rec.metadata["mean_of"], String(n))
        assertClose(rec.floats(), mean, atol: Self.atol, "--mean")
    }

    func testNoPadRecordsEncodeEach() throws {
        let model = Fixtures.path("sd2")
        let r = try sh("tokenize --no-pad --model \(model) 'a cat' '' | encode-text --model \(model)")
        XCTAssertEqual(r.status, 0, r.err)
        let recs = try decode(r.out)
        let d = try self.model("sd2").config.hiddenSize
        XCTAssertEqual(recs.map(\.shape), [[1, 4, d], [1, 2, d]])
        // Causal attention: unpadded prefixes equal the padded embeddings' first positions.
        let want = try Fixtures.record("sd2/ref/text.tensor", "text.last_hidden").floats()
        assertClose(recs[0].floats(), Array(want[0..<(4 * d)]), atol: Self.atol, "a cat unpadded")
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

/// Writes a safetensors file of zero-filled f32 tensors.
func writeSafeTensors(_ url: URL, _ tensors: [(String, [Int])]) throws {
    var header = "{"
    var offset = 0
    for (k, (name, shape)) in tensors.enumerated() {
        let bytes = shape.reduce(4, *)
        header += (k > 0 ? "," : "") + "\"\(name)\":{\"dtype\":\"F32\",\"shape\":\(shape),\"data_offsets\":[\(offset),\(offset + bytes)]}"
        offset += bytes
    }
    header += "}"
    var out = [UInt8]()
    withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { out.append(contentsOf: $0) }
    out += Array(header.utf8)
    out += [UInt8](repeating: 0, count: offset)
    try Data(out).write(to: url)
}
