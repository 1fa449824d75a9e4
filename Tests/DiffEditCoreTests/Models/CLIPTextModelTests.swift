import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// CLIPTextModel against transformers' CLIPTextModel / diffusers' encode_prompt
/// (sd1/ref/text.tensor: f32 weights, quick_gelu; sd2/ref/text.tensor: f16 weights, gelu).
final class CLIPTextModelTests: XCTestCase {
    /// f32 throughout; the reference differs from us only in summation order (sgemm, softmax).
    /// About 10× the worst error measured on an AVX2-only AMD EPYC: 1.9e-6 (sd2 clip_skip 1; the
    /// last hidden state 1.7e-6 on both). It was README's general 1e-4, 52× the worst.
    static let atol = Tolerance.textEmbeddings

    func model(_ pipeline: String) throws -> CLIPTextModel {
        try CLIPTextModel(folder: Fixtures.model(pipeline))
    }

    /// last_hidden_state of the fixture prompts, from the model's own tokenizer and text encoder.
    static func checkLastHidden(_ pipeline: String, _ folder: ModelFolder, label: String) throws {
        let m = try CLIPTextModel(folder: folder)
        let (ids, n, prompts) = try Fixtures.referenceIDs(pipeline)
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
        let (ids, n, _) = try Fixtures.referenceIDs(pipeline)
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
        let (ids, _, _) = try Fixtures.referenceIDs(pipeline)
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
        let (ids, n, _) = try Fixtures.referenceIDs("sd1")
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
        let (ids, n, _) = try Fixtures.referenceIDs("sd2")
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

}
