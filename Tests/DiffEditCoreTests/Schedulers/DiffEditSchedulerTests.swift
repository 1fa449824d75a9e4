import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// The DiffEdit stages with DPM-Solver++ (generate_mask, invert and __call__ with
/// DPMSolverMultistepScheduler / DPMSolverMultistepInverseScheduler set on the pipeline; sd1 at 25
/// steps, sd2 at 10) and __call__ with DDIM's eta 0.5 and 1.0, against
/// Tests/Fixtures/{sd1,sd2}/ref/schedulers.tensor (and eta-steps.tensor). Tolerances as
/// DiffEditTests (per stage: latents and predictions 2.5e-4, from the image 6e-4, noised latents
/// 4e-5, map 2e-5, soft masks 1e-4), the mask identical away from the threshold, 8-bit images ±1,
/// the generator's draws exactly.
extension DiffEditTests {
    func schedulerRefs(_ key: String) throws -> [String: TensorRecord] {
        try Fixtures.records("\(key)/ref/schedulers.tensor")
    }

    func record(_ refs: [String: TensorRecord], _ name: String, file: StaticString = #filePath, line: UInt = #line) throws -> TensorRecord {
        guard let r = refs[name] else {
            XCTFail("the fixture has no record '\(name)'", file: file, line: line)
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
            assertClose(r.noisedLatents.data, try record(refs, "dpm.mask.noised_latents").floats(), atol: Self.noisedTolerance, "\(label) noised")
            let mapErr = assertClose(r.map.data, try record(refs, "dpm.mask.map").floats(), atol: Self.mapTolerance, "\(label) map").maxAbsError
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
            let cl = assertClose(edited.data, try record(refs, "dpm.edited.latents").floats(), atol: Self.fromImageTolerance, "\(key) DPM edited latents from the image")
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

    /// __call__ with DDIMScheduler and eta > 0: each step draws one randn of the latents' shape
    /// from the call's generator (seed 0), in step order; nothing else draws. Every record named
    /// below must be in its file (a missing one fails): schedulers.tensor has eta 0.5 with every
    /// step and eta 1.0's blended latents and result; eta-steps.tensor (self-contained: its own
    /// stack, mask and embeddings, Tests/Fixtures/README.md section 15) has eta 1.0 with every step
    /// (draws, predictions, scheduler.step's outputs).
    func testEtaMatchesDiffusers() throws {
        for key in Self.pipelines {
            let p = try Self.pipeline(key)
            let sched = try schedulerRefs(key)
            let steps = try Fixtures.records("\(key)/ref/eta-steps.tensor")
            let schedEmbeds = try record(sched, "dpm.mask.embeds").tensor()  // [src, "", tgt, ""] of the same run
            let stepsEmbeds = try record(steps, "eta.embeds").tensor()      // [negative = src, prompt = tgt]
            // (file, its records, eta, negative, prompt, the per-step records it must have)
            let cases: [(String, [String: TensorRecord], Float, Tensor, Tensor, [String])] = [
                ("schedulers.tensor", sched, 0.5, schedEmbeds.slice(batch: 0, count: 1), schedEmbeds.slice(batch: 2, count: 1),
                 ["eta-0.5.call.variance_noise", "eta-0.5.call.step_out", "eta-0.5.call.latents"]),
                ("schedulers.tensor", sched, 1.0, schedEmbeds.slice(batch: 0, count: 1), schedEmbeds.slice(batch: 2, count: 1),
                 ["eta-1.0.call.latents"]),
                ("eta-steps.tensor", steps, 1.0, stepsEmbeds.slice(batch: 0, count: 1), stepsEmbeds.slice(batch: 1, count: 1),
                 ["eta-1.0.call.timesteps", "eta-1.0.call.variance_noise", "eta-1.0.call.eps", "eta-1.0.call.step_out",
                  "eta-1.0.call.latents"]),
            ]
            for (file, refs, eta, negative, prompt, perStep) in cases {
                let label = "\(key) \(file) denoise eta \(eta)"
                let inverted = try record(refs, "eta.inverted").tensor()
                let mask = try record(refs, "eta.mask").tensor()
                let tag = "eta-\(eta)."
                let want = try record(refs, tag + "edited.latents")
                var options = MaskedDenoising.Options()
                options.steps = try fixtureSteps(want)
                options.eta = eta
                var dn = MaskedDenoising(unet: p.unet, scheduler: try DDIMScheduler(folder: p.folder), options: options)
                let r = try dn.denoise(inverted: inverted, mask: mask, prompt: prompt, negative: negative, generator: TorchGenerator(seed: 0))
                let tCount = inverted.shape[1]
                XCTAssertGreaterThan(tCount, 0, label)
                XCTAssertEqual(r.stepOutputs.count, tCount, "\(label): one step per latent of the stack")
                for name in perStep {
                    let ref = try record(refs, name)
                    XCTAssertEqual(ref.shape.first, tCount, "\(label) \(name): one entry per step")
                    if name.hasSuffix(".timesteps") {
                        XCTAssertEqual(r.timesteps.map(Int32.init), try ref.int32s(), "\(label) timesteps")
                    } else if name.hasSuffix(".variance_noise") {
                        // The draws: T successive randn([1, 4, h, w]) of torch.Generator().manual_seed(0).
                        let g = TorchGenerator(seed: 0)
                        let draws = (0..<tCount).flatMap { _ in g.randn(shape: [inverted.shape[0]] + Array(inverted.shape[2...])).data }
                        assertClose(draws, ref.floats(), atol: 0, "\(label) noise draws (exact)")
                    } else if name.hasSuffix(".eps") {
                        assertClose(r.predictions.flatMap(\.data), ref.floats(), atol: Self.latentTolerance, "\(label) eps")
                    } else if name.hasSuffix(".step_out") {
                        assertClose(r.stepOutputs.flatMap(\.data), ref.floats(), atol: Self.latentTolerance, "\(label) step_out")
                    } else {
                        assertClose(r.blended.flatMap(\.data), ref.floats(), atol: Self.latentTolerance, "\(label) latents per step")
                    }
                }
                let c = assertClose(r.latents.data, want.floats(), atol: Self.latentTolerance, "\(label) edited latents")
                let cu = try assertImageClose(p, r.latents, try record(refs, tag + "edited.u8").floats(), label)
                print("\(label): edited latents max abs error \(c.maxAbsError), u8 worst \(cu.maxAbsError) levels")
                // η changes the edit: it is not the deterministic one.
                var plain = MaskedDenoising(unet: p.unet, scheduler: try DDIMScheduler(folder: p.folder), options: { var o = options; o.eta = 0; return o }())
                let r0 = try plain.denoise(inverted: inverted, mask: mask, prompt: prompt, negative: negative)
                XCTAssertGreaterThan(closeness(r.latents.data, r0.latents.data, atol: 0).maxAbsError, 0.01, "\(label) differs from eta 0")
            }
            let inverted = try record(sched, "eta.inverted").tensor(), mask = try record(sched, "eta.mask").tensor()
            var options = MaskedDenoising.Options()
            options.steps = p.steps
            options.eta = 0.5
            var dn = MaskedDenoising(unet: p.unet, scheduler: try DDIMScheduler(folder: p.folder), options: options)
            XCTAssertThrowsError(try dn.denoise(inverted: inverted, mask: mask, prompt: schedEmbeds.slice(batch: 2, count: 1),
                                                negative: schedEmbeds.slice(batch: 0, count: 1)), "eta > 0 without a generator")
        }
    }
}
