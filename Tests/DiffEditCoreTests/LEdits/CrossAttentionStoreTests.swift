import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// LEDITS++'s attention store and map smoothing against diffusers 0.42.1 (LeditsAttentionStore,
/// LEDITSCrossAttnProcessor, aggregate_attention, LeditsGaussianSmoothing):
/// Tests/Fixtures/attention-store.tensor, made by Tests/Reference/fixtures_attention_store.py.
///
/// Tolerances (element-wise, relative): maps handed the reference's own probabilities (the random
/// store, the smoothing) differ from torch only by summation order — 1e-6; maps from the sd1 UNet's
/// own attention also carry the UNet's GEMM rounding in Q and K (UNetTests) — 2e-6, about 7× the
/// worst measured on an AVX2 AMD EPYC (2.7e-7 of the map's largest value; the smoothing kernel
/// came out bit-identical to torch's there).
final class CrossAttentionStoreTests: XCTestCase {
    static let fixture = "attention-store.tensor"
    static let concepts = 2

    static let sd1: Result<UNet2DCondition, Error> = Result { try UNet2DCondition(folder: Fixtures.model("sd1")) }

    func unet() throws -> UNet2DCondition {
        try Fixtures.require("sd1/unet")
        return try Self.sd1.get()
    }

    func records() throws -> [String: TensorRecord] { try Fixtures.records(Self.fixture) }

    /// One concept's [gh, gw] slice of a [C, gh, gw] record.
    static func concept(_ r: TensorRecord, _ c: Int) -> [Float] {
        let plane = r.count / r.shape[0]
        return Array(r.floats()[c * plane..<(c + 1) * plane])
    }

    // MARK: smoothing

    func testGaussianKernelIsDiffusers() throws {
        let want = try Fixtures.ref(records(), "smooth.kernel").floats()
        assertClose(AttentionMapSmoothing.kernel, want, atol: 0, rtol: 2e-7, "LeditsGaussianSmoothing weight")
        XCTAssertEqual(AttentionMapSmoothing.kernel.reduce(0, +), 1, accuracy: 1e-6)
    }

    func testGaussianSmoothingMatchesTorch() throws {
        let recs = try records()
        for (h, w) in [(2, 2), (3, 5), (4, 4), (7, 3), (16, 16)] {
            let input = try Fixtures.ref(recs, "smooth.\(h)x\(w).input").floats()
            let want = try Fixtures.ref(recs, "smooth.\(h)x\(w).output").floats()
            let got = try AttentionMapSmoothing.gaussian(input, height: h, width: w)
            assertClose(got, want, atol: 0, rtol: 1e-6, "smoothing \(h)x\(w)")
        }
    }

    /// torch's F.pad(mode="reflect") raises for a side of 1 (pad ≥ size), so diffusers' LEDITS++
    /// fails on such a grid; so do we, with a message.
    func testGaussianSmoothingRefusesASideOfOne() {
        for (h, w) in [(2, 1), (1, 2), (1, 1), (1, 5)] {
            XCTAssertThrowsError(try AttentionMapSmoothing.gaussian([Float](repeating: 1, count: h * w), height: h, width: w),
                                 "\(h)x\(w)") { error in
                XCTAssertTrue("\(error)".contains("\(h)x\(w) grid has a side of 1"), "\(error)")
            }
        }
    }

    // MARK: the store fed directly

    /// The reference's probabilities handed to the store as the layers hand them (items 1 ..< B),
    /// against aggregate_attention over layers of 2, 4, 2 and 1 heads, down and up mixed.
    func testStoreAggregatesLikeDiffusers() throws {
        let recs = try records()
        let store = CrossAttentionStore(grid: (height: 3, width: 5))
        XCTAssertEqual(store.queries, 15)
        XCTAssertFalse(store.wants(queries: try Fixtures.ref(recs, "random.other.probs").shape[1]),
                       "a layer of another grid (diffusers stores it, aggregate_attention ignores it)")
        let batch = 1 + Self.concepts
        for i in 0..<4 {
            let r = try Fixtures.ref(recs, "random.layer\(i).probs")
            let heads = try XCTUnwrap(Int(r.metadata["heads"] ?? ""))
            let (q, k) = (r.shape[1], r.shape[2])
            XCTAssertEqual(r.shape[0], batch * heads)
            XCTAssertTrue(store.wants(queries: q))
            let p = r.floats()
            p.withUnsafeBufferPointer { store.add(probabilities: $0.baseAddress! + heads * q * k, batch: batch, heads: heads, queries: q, keys: k) }
        }
        XCTAssertEqual(store.layers, 4)
        XCTAssertEqual(store.heads, 2 + 4 + 2 + 1)
        XCTAssertEqual(store.keys, 7)
        for n in [1, 3, 6] {
            let maps = try Fixtures.ref(recs, "random.map.tokens\(n)")
            let smoothed = try Fixtures.ref(recs, "random.smoothed.tokens\(n)")
            for c in 0..<Self.concepts {
                let got = try store.conceptMap(item: 1 + c, tokens: n)
                assertClose(got, Self.concept(maps, c), atol: 0, rtol: 1e-6, "random store concept \(c), \(n) tokens")
                assertClose(try AttentionMapSmoothing.gaussian(got, height: 3, width: 5), Self.concept(smoothed, c),
                            atol: 0, rtol: 1e-6, "random store concept \(c), \(n) tokens, smoothed")
            }
        }
        // A second pass after reset() starts from zero and reuses the buffer.
        store.reset()
        XCTAssertEqual(store.layers, 0)
        XCTAssertThrowsError(try store.conceptMap(item: 1, tokens: 1))
        let r = try Fixtures.ref(recs, "random.layer0.probs")
        let p = r.floats()
        p.withUnsafeBufferPointer { store.add(probabilities: $0.baseAddress! + 2 * 15 * 7, batch: batch, heads: 2, queries: 15, keys: 7) }
        let one = try store.conceptMap(item: 2, tokens: 6)
        // Item 2, heads 0 and 1 of layer 0: the mean of their rows' keys 1...6 (= 1 − key 0).
        let plane = 15 * 7
        for q in 0..<15 {
            var want = 0.0
            for h in 0..<2 { for t in 1...6 { want += Double(p[(2 * 2 + h) * plane + q * 7 + t]) / 2 } }
            XCTAssertEqual(Double(one[q]), want, accuracy: 1e-6)
        }
    }

    func testConceptMapRefusesBadArguments() throws {
        let store = CrossAttentionStore(grid: (height: 1, width: 2))
        XCTAssertThrowsError(try store.conceptMap(item: 1, tokens: 1)) { error in
            XCTAssertTrue("\(error)".contains("no up/down cross-attention layer had the grid 1x2"), "\(error)")
        }
        let p = [Float](repeating: 0.25, count: 2 * 3 * 2 * 4)  // items 1, 2; 3 heads; 2 queries; 4 keys
        p.withUnsafeBufferPointer { store.add(probabilities: $0.baseAddress!, batch: 3, heads: 3, queries: 2, keys: 4) }
        XCTAssertThrowsError(try store.conceptMap(item: 0, tokens: 1))  // the unconditional branch is not stored
        XCTAssertThrowsError(try store.conceptMap(item: 3, tokens: 1))
        XCTAssertThrowsError(try store.conceptMap(item: 1, tokens: 4))  // keys 1...4 of 0..<4
        XCTAssertEqual(try store.conceptMap(item: 2, tokens: 3), [0.75, 0.75])
        XCTAssertEqual(try store.conceptMap(item: 1, tokens: 0), [0, 0])
    }

    // MARK: the UNet's probabilities

    static let unetCases = ["sq", "sq8", "wide"]

    /// The sd1 fixture UNet with a store against diffusers' UNet with prepare_unet's LEDITS
    /// processors: the grids, the layers used, the concept maps (3 and 75 tokens), smoothed, and
    /// the UNet's output.
    func testUNetMapsMatchDiffusers() throws {
        let unet = try unet()
        let recs = try records()
        for name in Self.unetCases {
            let p = "unet.\(name)."
            let sample = try Fixtures.ref(recs, p + "sample").tensor()
            let enc = try Fixtures.ref(recs, p + "encoder_hidden_states").tensor()
            let t = try Fixtures.ref(recs, p + "timestep").floats()
            let gridRecord = try Fixtures.ref(recs, p + "grid").floats().map { Int($0) }
            let grid = (height: gridRecord[0], width: gridRecord[1])
            let grids = try Fixtures.ref(recs, p + "grids").floats().map { Int($0) }
            let ours = unet.crossAttentionGrids(latentHeight: sample.shape[2], latentWidth: sample.shape[3])
            XCTAssertEqual(ours.flatMap { [$0.height, $0.width] }, grids, "\(name): cross-attention grids")

            let store = CrossAttentionStore(grid: grid)
            let out = try unet.forward(sample: sample, timesteps: t, encoderHiddenStates: enc, attention: store)
            UNetTests.assertParity(out, try Fixtures.ref(recs, p + "out"), "\(name): UNet output with the store")
            XCTAssertEqual(store.layers, Int(try Fixtures.ref(recs, p + "layers").floats()[0]), "\(name): layers stored")
            XCTAssertEqual(store.batch, 1 + Self.concepts)
            XCTAssertEqual(store.keys, 77)
            var worst = 0.0
            for n in [3, 75] {
                let maps = try Fixtures.ref(recs, p + "map.tokens\(n)")
                let smoothed = try Fixtures.ref(recs, p + "smoothed.tokens\(n)")
                for c in 0..<Self.concepts {
                    let got = try store.conceptMap(item: 1 + c, tokens: n)
                    let e = assertClose(got, Self.concept(maps, c), atol: 0, rtol: 2e-6, "\(name) concept \(c), \(n) tokens")
                    worst = nanAwareMax(worst, e.maxAbsError / Double(maxMagnitude(Self.concept(maps, c))))
                    assertClose(try AttentionMapSmoothing.gaussian(got, height: grid.height, width: grid.width),
                                Self.concept(smoothed, c), atol: 0, rtol: 2e-6, "\(name) concept \(c), \(n) tokens, smoothed")
                }
            }
            print("attention store \(name) (grid \(grid.height)x\(grid.width), \(store.layers) layers): worst error relative to the map's largest value \(worst)")
        }
    }

    /// A store changes nothing in the UNet's output (bit for bit), a store on a grid the UNet's
    /// up/down cross-attention does not have (the mid block's 2×2) receives nothing, and passes
    /// after the first allocate no more workspace.
    func testStoreLeavesTheUNetOutputUnchanged() throws {
        let unet = try unet()
        let recs = try records()
        let sample = try Fixtures.ref(recs, "unet.sq.sample").tensor()
        let enc = try Fixtures.ref(recs, "unet.sq.encoder_hidden_states").tensor()
        let without = try unet.forward(sample: sample, timesteps: [501], encoderHiddenStates: enc)
        let store = CrossAttentionStore(grid: (height: 4, width: 4))
        let with = try unet.forward(sample: sample, timesteps: [501], encoderHiddenStates: enc, attention: store)
        XCTAssertEqual(without.shape, with.shape)
        XCTAssertEqual(without.data, with.data, "the UNet output changed with an attention store")
        XCTAssertEqual(store.layers, 5)
        let first = try store.conceptMap(item: 1, tokens: 75)

        let allocations = unet.context.workspace.allocations
        store.reset()
        let again = try unet.forward(sample: sample, timesteps: [501], encoderHiddenStates: enc, attention: store)
        XCTAssertEqual(again.data, without.data)
        XCTAssertEqual(unet.context.workspace.allocations, allocations, "a second pass with the store allocated")
        XCTAssertEqual(try store.conceptMap(item: 1, tokens: 75), first, "reset() then the same pass: the same map")

        let mid = CrossAttentionStore(grid: (height: 2, width: 2))
        XCTAssertFalse(unet.crossAttentionGrids(latentHeight: 8, latentWidth: 8).contains { $0 == (2, 2) })
        let alsoWithout = try unet.forward(sample: sample, timesteps: [501], encoderHiddenStates: enc, attention: mid)
        XCTAssertEqual(alsoWithout.data, without.data)
        XCTAssertEqual(mid.layers, 0, "the mid block's cross-attention must not feed the store")
        XCTAssertThrowsError(try mid.conceptMap(item: 1, tokens: 1))
    }

    /// A batch of one (the unconditional branch only) hands nothing over.
    func testBatchOfOneStoresNothing() throws {
        let unet = try unet()
        let recs = try records()
        let sample = try Fixtures.ref(recs, "unet.sq.sample").tensor()
        let enc = try Fixtures.ref(recs, "unet.sq.encoder_hidden_states").tensor()
        let one = Tensor(shape: [1, 4, 8, 8], data: Array(sample.data[0..<256]))
        let oneEnc = Tensor(shape: [1, 77, 32], data: Array(enc.data[0..<(77 * 32)]))
        let store = CrossAttentionStore(grid: (height: 4, width: 4))
        _ = try unet.forward(sample: one, timesteps: [501], encoderHiddenStates: oneEnc, attention: store)
        XCTAssertEqual(store.layers, 0)
    }
}
