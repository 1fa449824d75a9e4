import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// DeepCache's shallow branch (UNetFeatureCache): given the very input of the whole step that kept
/// the feature, it must give the whole UNet's output — the feature is then exactly what the deep
/// path computes, so this checks the branch's wiring (which skips, where it resumes) on both
/// fixture UNets (sd1: two resnets per block, resuming at the last up block's second; sd2: one,
/// resuming at its first). And the schedule: whole steps every `interval` calls.
final class UNetFeatureCacheTests: XCTestCase {
    func testShallowBranchOnTheKeptStepsInputIsTheWholeUNet() throws {
        for key in ["sd1", "sd2"] {
            let recs = try Fixtures.records("\(key)/ref/unet.tensor")
            let x = try XCTUnwrap(recs["unet.case1.sample"]).tensor()
            let enc = try XCTUnwrap(recs["unet.case1.encoder_hidden_states"]).tensor()
            let unet = try UNet2DCondition(folder: Fixtures.model(key))
            let whole = try unet.forward(sample: x, timesteps: [500], encoderHiddenStates: enc)
            let cache = UNetFeatureCache(interval: 3)
            let first = try unet.forward(sample: x, timesteps: [500], encoderHiddenStates: enc, cache: cache)
            XCTAssertEqual(first.data, whole.data, "\(key): a whole step with a cache is the plain UNet")
            let shallow = try unet.forward(sample: x, timesteps: [500], encoderHiddenStates: enc, cache: cache)
            XCTAssertEqual(cache.shallowCalls, 1, key)
            assertClose(shallow.data, whole.data, atol: 1e-6, "\(key): shallow branch on the same input")
            // Another step's input: the shallow branch differs from the whole UNet (it is an approximation).
            let other = Tensor(shape: x.shape, data: x.data.map { $0 * 0.5 + 0.1 })
            let approx = try unet.forward(sample: other, timesteps: [480], encoderHiddenStates: enc, cache: cache)
            let exact = try unet.forward(sample: other, timesteps: [480], encoderHiddenStates: enc)
            XCTAssertGreaterThan(closeness(approx.data, exact.data, atol: 0).maxAbsError, 1e-3, key)
            // The schedule: calls 0, 3, 6 … whole; the rest shallow; another shape runs whole.
            _ = try unet.forward(sample: other, timesteps: [460], encoderHiddenStates: enc, cache: cache)
            XCTAssertEqual([cache.calls, cache.shallowCalls], [4, 2], key)
            let small = Tensor(shape: [2, 4, 4, 4], data: [Float](repeating: 0.1, count: 128))
            _ = try unet.forward(sample: small, timesteps: [440], encoderHiddenStates: enc, cache: cache)
            XCTAssertEqual([cache.calls, cache.shallowCalls], [5, 2], "\(key): another latent size runs whole")
        }
    }
}
