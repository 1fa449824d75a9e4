import Foundation
import XCTest
@testable import DiffEditCore

/// The DiffEdit stages with DPM-Solver++ (generate_mask, invert and __call__ with
/// DPMSolverMultistepScheduler / DPMSolverMultistepInverseScheduler set on the pipeline; sd1 at 25
/// steps, sd2 at 10) and __call__ with DDIM's eta 0.5 and 1.0, against
/// Tests/Fixtures/{sd1,sd2}/ref/schedulers.tensor. Tolerances as DiffEditTests: latents and
/// predictions 1e-3 absolute, noised latents/map/soft mask 1e-4, the mask identical away from the
/// threshold, 8-bit images ±1, the generator's draws exactly.
extension DiffEditTests {
    func schedulerRefs(_ key: String) throws -> [String: TensorRecord] {
        try Fixtures.records("\(key)/ref/schedulers.tensor")
    }

    func record(_ refs: [String: TensorRecord], _ name: String, file: StaticString = #filePath, line: UInt = #line) throws -> TensorRecord {
        guard let r = refs[name] else {
            XCTFail("schedulers.tensor has no record '\(name)'", file: file, line: line)
            throw ToolError("missing fixture record \(name)")
        }
        return r
    }

    /// num_inference_steps of a record's args_json.
    func fixtureSteps(_ r: TensorRecord) throws -> Int {
        let json = try XCTUnwrap(r.metadata["args_json"], "\(r.name) has no args_json")
        let args = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        return try XCTUnwrap(args["num_inference_steps"] as? Int)
    }

    // MARK: DPM-Solver++

    func testDPMNoiseDiffMaskMatchesDiffusers() throws {
        for key in Self.pipelines {
            let p = try Self.pipeline(key)
            let refs = try schedulerRefs(key)
            let steps = try fixtureSteps(try record(refs, "dpm.mask"))
            let (mean, std) = try Self.posterior(p)
            let embeds = try record(refs, "dpm.mask.embeds").tensor()  // [src, "", tgt, ""]
            let row = { (i: Int) in embeds.slice(batch: i, count: 1) }
            var options = NoiseDiffMask.Options()
            options.steps = steps
            var nd = NoiseDiffMask(unet: p.unet, scheduler: try DPMSolverMultistepScheduler(folder: p.folder), options: options)
            let r = try nd.generate(mean: mean, std: std, source: row(0), sourceNegative: row(1), target: row(2),
                                    targetNegative: row(3), generator: TorchGenerator(seed: 0))
            let label = "\(key) DPM mask (\(steps) steps)"
            XCTAssertEqual(r.timestep, Int(try record(refs, "dpm.mask.timestep").int32s()[0]), label)
            assertClose(r.noisedLatents.data, try record(refs, "dpm.mask.noised_latents").floats(), atol: 1e-4, "\(label) noised")
            let mapErr = assertClose(r.map.data, try record(refs, "dpm.mask.map").floats(), atol: 1e-4, "\(label) map").maxAbsError
            let refSoft = try record(refs, "dpm.mask.soft").floats()
            assertClose(r.soft.data, refSoft, atol: 1e-4, "\(label) soft")
            let (_, near) = Self.compareMask(r.mask.data, try record(refs, "dpm.mask").floats(), refSoft: refSoft, label)
            let dense = NoiseDiffMask.threshold(map: r.map, ratio: 2.1)
            let refDense = try record(refs, "dpm.mask.dense.soft").floats()
            assertClose(dense.soft, refDense, atol: 1e-4, "\(label) dense soft")
            _ = Self.compareMask(dense.mask, try record(refs, "dpm.mask.dense").floats(), refSoft: refDense, "\(label) dense")
            print("\(label): timestep \(r.timestep), map max err \(mapErr), near-threshold pixels \(near)")
        }
    }

    func testDPMInversionMatchesDiffusers() throws {
        for key in Self.pipelines {
            let p = try Self.pipeline(key)
            let refs = try schedulerRefs(key)
            let steps = try fixtureSteps(try record(refs, "dpm.inverted"))
            let (mean, std) = try Self.posterior(p)
            let gen = TorchGenerator(seed: 0)
            let latents = DiagonalGaussian(mean: mean, std: std).sample(noise: gen.randn(count: mean.count))
            assertClose(latents.data, try record(refs, "dpm.invert.image_latents").floats(), atol: 1e-4, "\(key) DPM invert image latents")
            let embeds = try record(refs, "dpm.mask.embeds").tensor()  // [src, "", tgt, ""]
            var options = DiffEditInversion.Options()
            options.steps = steps
            var inv = DiffEditInversion(unet: p.unet, scheduler: try DPMSolverMultistepInverseScheduler(folder: p.folder), options: options)
            let r = try inv.invert(latents: latents, prompt: embeds.slice(batch: 0, count: 1),
                                   negative: embeds.slice(batch: 1, count: 1), generator: gen)
            XCTAssertEqual(r.timesteps.map(Int32.init), try record(refs, "dpm.invert.timesteps").int32s(), key)
            assertClose(r.predictions.flatMap(\.data), try record(refs, "dpm.invert.eps").floats(), atol: Self.latentTolerance, "\(key) DPM invert eps")
            let want = try record(refs, "dpm.inverted")
            XCTAssertEqual(r.inverted.shape, want.shape, key)
            let c = assertClose(r.inverted.data, want.floats(), atol: Self.latentTolerance, "\(key) DPM inverted")
            print("\(key) DPM inverted (\(steps) steps): max abs error \(c.maxAbsError)")
        }
    }

    func testDPMMaskedDenoisingMatchesDiffusers() throws {
        for key in Self.pipelines {
            let p = try Self.pipeline(key)
            let refs = try schedulerRefs(key)
            let steps = try fixtureSteps(try record(refs, "dpm.edited.latents"))
            let embeds = try record(refs, "dpm.mask.embeds").tensor()  // [src, "", tgt, ""]
            var options = MaskedDenoising.Options()
            options.steps = steps
            var dn = MaskedDenoising(unet: p.unet, scheduler: try DPMSolverMultistepScheduler(folder: p.folder), options: options)
            let r = try dn.denoise(inverted: try record(refs, "dpm.inverted").tensor(), mask: try record(refs, "dpm.mask.dense").tensor(),
                                   prompt: embeds.slice(batch: 2, count: 1), negative: embeds.slice(batch: 0, count: 1))
            let label = "\(key) DPM denoise (\(steps) steps)"
            XCTAssertEqual(r.timesteps.map(Int32.init), try record(refs, "dpm.call.timesteps").int32s(), label)
            assertClose(r.predictions.flatMap(\.data), try record(refs, "dpm.call.eps").floats(), atol: Self.latentTolerance, "\(label) eps")
            assertClose(r.stepOutputs.flatMap(\.data), try record(refs, "dpm.call.step_out").floats(), atol: Self.latentTolerance, "\(label) step_out")
            assertClose(r.blended.flatMap(\.data), try record(refs, "dpm.call.latents").floats(), atol: Self.latentTolerance, "\(label) latents per step")
            let c = assertClose(r.latents.data, try record(refs, "dpm.edited.latents").floats(), atol: Self.latentTolerance, "\(label) edited latents")
            print("\(label): edited latents max abs error \(c.maxAbsError)")
        }
    }

    /// The whole DPM-Solver++ edit from the image: our mask (dense ratio), our inversion, our edit,
    /// decoded to 8 bits.
    func testDPMFullPipelineImageMatchesDiffusers() throws {
        for key in Self.pipelines {
            let p = try Self.pipeline(key)
            let refs = try schedulerRefs(key)
            let steps = try fixtureSteps(try record(refs, "dpm.edited.u8"))
            let (mean, std) = try Self.posterior(p)
            let embeds = try record(refs, "dpm.mask.embeds").tensor()
            let row = { (i: Int) in embeds.slice(batch: i, count: 1) }
            var mo = NoiseDiffMask.Options(); mo.steps = steps
            var nd = NoiseDiffMask(unet: p.unet, scheduler: try SchedulerKind.dpm.denoising(folder: p.folder), options: mo)
            let m = try nd.generate(mean: mean, std: std, source: row(0), sourceNegative: row(1), target: row(2),
                                    targetNegative: row(3), generator: TorchGenerator(seed: 0))
            let mask = Tensor(shape: m.mask.shape, data: NoiseDiffMask.threshold(map: m.map, ratio: 2.1).mask)
            let gen = TorchGenerator(seed: 0)
            let latents = DiagonalGaussian(mean: mean, std: std).sample(noise: gen.randn(count: mean.count))
            var io = DiffEditInversion.Options(); io.steps = steps
            var inv = DiffEditInversion(unet: p.unet, scheduler: try SchedulerKind.dpm.inversion(folder: p.folder), options: io)
            let stack = try inv.invert(latents: latents, prompt: row(0), negative: row(1), generator: gen).inverted
            var dopt = MaskedDenoising.Options(); dopt.steps = steps
            var dn = MaskedDenoising(unet: p.unet, scheduler: try SchedulerKind.dpm.denoising(folder: p.folder), options: dopt)
            let edited = try dn.denoise(inverted: stack, mask: mask, prompt: row(2), negative: row(0)).latents
            let cl = assertClose(edited.data, try record(refs, "dpm.edited.latents").floats(), atol: Self.latentTolerance, "\(key) DPM edited latents from the image")
            let cu = try assertImageClose(p, edited, try record(refs, "dpm.edited.u8").floats(), "\(key) DPM")
            print("\(key) DPM full pipeline: latents max err \(cl.maxAbsError), u8 worst \(cu.maxAbsError) levels")
        }
    }

    /// Decodes edited latents to 8-bit levels (HWC, as the fixtures store them) and compares them
    /// with diffusers' within ±1 level.
    @discardableResult
    func assertImageClose(_ p: Pipeline, _ latents: Tensor, _ u8: [Float], _ label: String) throws -> Closeness {
        let vae = try AutoencoderKL(folder: p.folder)
        let sf = vae.config.scalingFactor
        let image = try vae.makeDecoder().decode(Tensor(shape: latents.shape, data: latents.data.map { $0 / sf }))
        let (h, w) = (image.shape[2], image.shape[3])
        XCTAssertEqual(h * w * 3, u8.count, "\(label): image size")
        XCTAssertTrue(image.data.allSatisfy(\.isFinite), "\(label): non-finite decoded samples")
        var levels = [Float](repeating: .nan, count: h * w * 3)
        for c in 0..<3 { for i in 0..<(h * w) {
            levels[i * 3 + c] = Float(NetpbmImage.quantize(image.data[c * h * w + i], maxval: 255))
        } }
        return assertClose(levels, u8, atol: 1, "\(label): 8-bit image within ±1")
    }

    // MARK: eta

    /// __call__ with DDIMScheduler and eta 0.5 / 1.0: each step draws one randn of the latents'
    /// shape from the call's generator (seed 0), in step order; nothing else draws.
    func testEtaMatchesDiffusers() throws {
        for key in Self.pipelines {
            let p = try Self.pipeline(key)
            let refs = try schedulerRefs(key)
            let inverted = try record(refs, "eta.inverted").tensor()
            let mask = try record(refs, "eta.mask").tensor()
            let embeds = try record(refs, "dpm.mask.embeds").tensor()  // [src, "", tgt, ""] of the same run
            let (n, tCount) = (inverted.shape[0], inverted.shape[1])
            // The draws: T successive randn([1, 4, h, w]) of torch.Generator().manual_seed(0).
            let g = TorchGenerator(seed: 0)
            let draws = (0..<tCount).flatMap { _ in g.randn(shape: [n] + Array(inverted.shape[2...])).data }
            assertClose(draws, try record(refs, "eta-0.5.call.variance_noise").floats(), atol: 0, "\(key) eta noise draws (exact)")
            for eta: Float in [0.5, 1.0] {
                let tag = "eta-\(eta)."
                let want = try record(refs, tag + "edited.latents")
                var options = MaskedDenoising.Options()
                options.steps = try fixtureSteps(want)
                options.eta = eta
                var dn = MaskedDenoising(unet: p.unet, scheduler: try DDIMScheduler(folder: p.folder), options: options)
                let r = try dn.denoise(inverted: inverted, mask: mask, prompt: embeds.slice(batch: 2, count: 1),
                                       negative: embeds.slice(batch: 0, count: 1), generator: TorchGenerator(seed: 0))
                let label = "\(key) denoise eta \(eta)"
                if let stepOut = refs[tag + "call.step_out"] {
                    assertClose(r.stepOutputs.flatMap(\.data), stepOut.floats(), atol: Self.latentTolerance, "\(label) step_out")
                }
                assertClose(r.blended.flatMap(\.data), try record(refs, tag + "call.latents").floats(), atol: Self.latentTolerance, "\(label) latents per step")
                let c = assertClose(r.latents.data, want.floats(), atol: Self.latentTolerance, "\(label) edited latents")
                let cu = try assertImageClose(p, r.latents, try record(refs, tag + "edited.u8").floats(), label)
                print("\(label): edited latents max abs error \(c.maxAbsError), u8 worst \(cu.maxAbsError) levels")
                // η changes the edit: it is not the deterministic one.
                var plain = MaskedDenoising(unet: p.unet, scheduler: try DDIMScheduler(folder: p.folder), options: { var o = options; o.eta = 0; return o }())
                let r0 = try plain.denoise(inverted: inverted, mask: mask, prompt: embeds.slice(batch: 2, count: 1),
                                           negative: embeds.slice(batch: 0, count: 1))
                XCTAssertGreaterThan(closeness(r.latents.data, r0.latents.data, atol: 0).maxAbsError, 0.01, "\(label) differs from eta 0")
            }
            var options = MaskedDenoising.Options()
            options.steps = p.steps
            options.eta = 0.5
            var dn = MaskedDenoising(unet: p.unet, scheduler: try DDIMScheduler(folder: p.folder), options: options)
            XCTAssertThrowsError(try dn.denoise(inverted: inverted, mask: mask, prompt: embeds.slice(batch: 2, count: 1),
                                                negative: embeds.slice(batch: 0, count: 1)), "eta > 0 without a generator")
        }
    }
}
