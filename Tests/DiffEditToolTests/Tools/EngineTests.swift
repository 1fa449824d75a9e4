import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// The engine under the models: activations come from a workspace that is reused from one
/// forward pass to the next, weights are one Parameter type, and every model runs on the
/// context's threads (all cores unless OPENBLAS_NUM_THREADS says otherwise). No timing.
final class EngineTests: XCTestCase {
    static var fixture: ModelFolder { get throws { try ModelFolder(root: Fixtures.path("sd1")) } }

    /// After the first forward pass of a denoising loop, no activation-sized buffer is
    /// allocated: the workspace's allocation count and high-water mark stay where the first
    /// pass left them, for the UNet, the VAE and the text encoder.
    func testWorkspaceIsReusedAcrossForwardPasses() throws {
        let unet = try UNet2DCondition(folder: try Self.fixture)
        let g = TorchGenerator(seed: 3)
        let x = g.randn(shape: [2, 4, 8, 8])
        let enc = g.randn(shape: [2, 7, unet.config.crossAttentionDim[0]])
        let first = try unet.forward(sample: x, timesteps: [901], encoderHiddenStates: enc)
        let ws = unet.context.workspace
        let (allocations, highWater) = (ws.allocations, ws.highWaterBytes)
        XCTAssertGreaterThan(allocations, 10, "the UNet's activations come from its workspace")
        for t: Float in [801, 701, 601] {
            _ = try unet.forward(sample: x, timesteps: [t], encoderHiddenStates: enc)
            XCTAssertEqual(ws.allocations, allocations, "UNet step at t=\(t) allocated")
            XCTAssertEqual(ws.highWaterBytes, highWater, "UNet step at t=\(t) grew the workspace")
        }
        // Reuse does not leak one pass's values into the next: the same input gives the same output.
        let again = try unet.forward(sample: x, timesteps: [901], encoderHiddenStates: enc)
        XCTAssertEqual(again.data, first.data)

        let vae = try AutoencoderKL(folder: try Self.fixture)
        let decoder = try vae.makeDecoder()
        let z = g.randn(shape: [1, vae.config.latentChannels, 4, 4])
        let image = decoder.decode(z)
        let dws = decoder.context.workspace
        let decoderAllocations = dws.allocations
        XCTAssertEqual(decoder.decode(z).data, image.data)
        XCTAssertEqual(dws.allocations, decoderAllocations, "the second decode allocated")

        let text = try CLIPTextModel(folder: try Self.fixture)
        let ids = [Int32](repeating: 1, count: 2 * 77)
        let e1 = try text.encode(ids: ids, batch: 2, length: 77)
        let textAllocations = text.context.workspace.allocations
        XCTAssertEqual(try text.encode(ids: ids, batch: 2, length: 77).data, e1.data)
        XCTAssertEqual(text.context.workspace.allocations, textAllocations, "the second text encoding allocated")
    }

    /// Models run on every core by default (OPENBLAS_NUM_THREADS aside), and a context with one
    /// thread gives the same numbers as one with several.
    func testThreadPolicy() throws {
        let cores = ProcessInfo.processInfo.activeProcessorCount
        if ProcessInfo.processInfo.environment["OPENBLAS_NUM_THREADS"] == nil {
            XCTAssertEqual(ComputeContext.defaultThreads, cores)
        }
        let unet = try UNet2DCondition(folder: try Self.fixture)
        XCTAssertEqual(unet.context.threads, ComputeContext.defaultThreads)
        XCTAssertEqual(try CLIPTextModel(folder: try Self.fixture).context.threads, ComputeContext.defaultThreads)
        let single = try UNet2DCondition(folder: try Self.fixture, context: ComputeContext(threads: 1))
        let g = TorchGenerator(seed: 4)
        let x = g.randn(shape: [2, 4, 8, 8])
        let enc = g.randn(shape: [2, 7, unet.config.crossAttentionDim[0]])
        let a = try unet.forward(sample: x, timesteps: [500], encoderHiddenStates: enc)
        let b = try single.forward(sample: x, timesteps: [500], encoderHiddenStates: enc)
        assertClose(a.data, b.data, atol: 1e-5, "UNet on \(unet.context.threads) threads vs 1")
    }

    /// Each stage tool runs its UNet on the default thread policy: --verbose says so.
    func testStageToolsUseEveryCore() throws {
        let dir = try temporaryDirectory(self)
        let model = Fixtures.path("sd1")
        let post = dir.appendingPathComponent("post.tensor").path
        let src = dir.appendingPathComponent("src.tensor").path
        let inv = dir.appendingPathComponent("inv.tensor").path
        let mask = dir.appendingPathComponent("mask.tensor").path
        let catPPM = try [UInt8](Data(contentsOf: URL(fileURLWithPath: Fixtures.path("sd1/cat.ppm"))))
        let enc = try runTool("vae-encode", ["--model", model], stdin: catPPM)
        XCTAssertEqual(enc.status, 0, enc.err)
        try Data(enc.out).write(to: URL(fileURLWithPath: post))
        let ids = try runTool("tokenize", ["--model", model, "a cat"])
        let text = try runTool("encode-text", ["--model", model], stdin: ids.out)
        XCTAssertEqual(text.status, 0, text.err)
        try Data(text.out).write(to: URL(fileURLWithPath: src))
        let postBytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: post)))
        let runs: [(String, [String], [UInt8], String?)] = [
            ("noise-diff-mask", ["--source", src, "--target", src, "--steps", "4", "--maps", "1"], postBytes, mask),
            ("invert", ["--prompt", src, "--steps", "4"], postBytes, inv),
        ]
        for (tool, args, input, output) in runs {
            let r = try runTool(tool, ["--model", model, "--verbose"] + args, stdin: input)
            XCTAssertEqual(r.status, 0, "\(tool): \(r.err)")
            XCTAssertTrue(r.err.contains("UNet on \(ComputeContext.defaultThreads) threads"), "\(tool) --verbose: \(r.err)")
            if let output { try Data(r.out).write(to: URL(fileURLWithPath: output)) }
        }
        let d = try runTool("denoise", ["--model", model, "--verbose", "--mask", mask, "--prompt", src],
                            stdin: [UInt8](try Data(contentsOf: URL(fileURLWithPath: inv))))
        XCTAssertEqual(d.status, 0, d.err)
        XCTAssertTrue(d.err.contains("UNet on \(ComputeContext.defaultThreads) threads"), "denoise --verbose: \(d.err)")
    }
}
