import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// The DiffEdit pipeline (generate_mask, invert, __call__) against diffusers' intermediates in
/// Tests/Fixtures/{sd1,sd2}/ref/diffedit.tensor: sd1 is epsilon prediction with 50 steps, sd2
/// v-prediction with 20 steps. Tolerances (absolute), per stage, each about 10× the worst error
/// measured on an AVX2-only AMD EPYC over these tests and DiffEditSchedulerTests (DDIM,
/// DPM-Solver++, eta) — they were 1e-3 on every latent and prediction, 25–300× the errors:
/// - `latentTolerance` 2.5e-4: predictions, step outputs, blended and inverted latents of a stage
///   run on the fixture's own inputs (worst 2.4e-5: sd1 eta 1.0 latents; predictions ≤ 2.2e-5);
/// - `regularizedTolerance` 4e-4: the regulariser's corrected predictions (worst 3.7e-5, sd2);
/// - `fromImageTolerance` 6e-4: the edit (and the inversion) from the image, where our own
///   posterior, mask and inversion feed it, here and through the tools (DiffEditToolTests,
///   DiffEditToolSchedulerTests): worst 5.1e-5 (sd1 DPM through the tools; 4.2e-5 in-process);
/// - the mask stage: noised latents 4e-5 (worst 3.8e-6), map 2e-5 (1.6e-6), soft masks 1e-4
///   (1.6e-5: kept), posterior samples 1e-4 (8.1e-6);
/// the mask identical except where the reference map is within 1e-4 (relative to the clamp) of the
/// threshold; the decoded 8-bit image within ±1 on every sample (it was ≥ 99.9 % of them with the
/// worst merely printed; measured worst: 1 level on sd1, 0 on sd2).
final class DiffEditTests: XCTestCase {
    static let pipelines = ["sd1", "sd2"]
    static let latentTolerance: Double = 2.5e-4
    static let regularizedTolerance: Double = 4e-4
    static let fromImageTolerance = Tolerance.editedFromImage
    static let noisedTolerance: Double = 4e-5
    static let mapTolerance: Double = 2e-5

    struct Pipeline {
        let key: String
        /// The key, and how the model was opened, for messages.
        let label: String
        let folder: ModelFolder
        let unet: UNet2DCondition
        let refs: [String: TensorRecord]
        let steps: Int
    }

    static var cache: [String: Pipeline] = [:]

    /// The fixture pipeline `key`, from its folder or (`singleFile`) from the single-file
    /// checkpoint made of it (SingleFileFixtures).
    static func pipeline(_ key: String, singleFile: Bool = false) throws -> Pipeline {
        let label = singleFile ? "\(key) single file" : key
        if let p = Self.cache[label] { return p }
        let ref = "\(key)/ref/diffedit.tensor"
        try Fixtures.require(ref)  // committed: a missing one fails, never skips
        let folder = try ModelFolder(root: singleFile ? SingleFileFixtures.path(key) : Fixtures.path(key))
        let refs = try Fixtures.records(ref)
        let steps = Int(try XCTUnwrap(refs["diffedit.invert.timesteps"]?.metadata["num_inference_steps"] ?? (key == "sd1" ? "50" : "20")))!
        let p = Pipeline(key: key, label: label, folder: folder, unet: try UNet2DCondition(folder: folder), refs: refs, steps: steps)
        Self.cache[label] = p
        return p
    }

    static func ref(_ p: Pipeline, _ name: String, file: StaticString = #filePath, line: UInt = #line) throws -> TensorRecord {
        guard let r = p.refs[name] else {
            XCTFail("\(p.key): fixture has no record '\(name)'", file: file, line: line)
            throw ToolError("missing fixture record \(name)")
        }
        return r
    }

    /// The scaled posterior (what vae-encode writes), computed by our VAE from cat.ppm.
    static func posterior(_ p: Pipeline) throws -> (mean: Tensor, std: Tensor) {
        let vae = try AutoencoderKL(folder: p.folder)
        let image = try NetpbmImage.readAll(try ByteReader(path: Fixtures.path("\(p.key)/cat.ppm")))
        let (x, _) = try vae.inputTensor(image, fit: .exact)
        let post = DiagonalGaussian(moments: try vae.makeEncoder().moments(x))
        let sf = vae.config.scalingFactor
        return (post.mean * sf, post.std * sf)
    }

    /// Compares a mask with the reference; pixels whose reference soft value is within 1e-4 of
    /// 0.5 may differ. Returns (mismatches, near-threshold pixels).
    static func compareMask(_ mask: [Float], _ want: [Float], refSoft: [Float], _ label: String) -> (Int, Int) {
        XCTAssertEqual(mask.count, want.count, "\(label): mask size")
        XCTAssertEqual(refSoft.count, want.count, "\(label): reference soft mask size")
        XCTAssertFalse(want.isEmpty, "\(label): empty reference mask")
        guard mask.count == want.count, refSoft.count == want.count else { return (want.count, 0) }
        var mismatches = 0, near = 0
        for i in 0..<want.count {
            let isNear = abs(refSoft[i] - 0.5) < 1e-4
            if isNear { near += 1 }
            if mask[i] != want[i] && !isNear { mismatches += 1 }
        }
        XCTAssertEqual(mismatches, 0, "\(label): mask pixels differ away from the threshold")
        return (mismatches, near)
    }

    // MARK: generate_mask

    func testNoiseDiffMaskMatchesDiffusers() throws {
        for key in Self.pipelines { try Self.checkNoiseDiffMask(Self.pipeline(key)) }
    }

    static func checkNoiseDiffMask(_ p: Pipeline) throws {
        let key = p.label
        let (mean, std) = try Self.posterior(p)
        let embeds = try Self.ref(p, "diffedit.mask.embeds").tensor()  // [src, "", tgt, ""]
        let row = { (i: Int) in embeds.slice(batch: i, count: 1) }
        // Guided predictions on: diffusers' whole batch, its guided predictions compared too. Off
        // (the tools' way): the negative's branch, which cancels from the map, is not run.
        for (maxBatch, guided) in [(40, true), (7, true), (7, false)] {
            var options = NoiseDiffMask.Options()
            options.steps = p.steps
            options.maxBatch = maxBatch
            options.guidedPredictions = guided
            var nd = NoiseDiffMask(unet: p.unet, scheduler: try DDIMScheduler(folder: p.folder), options: options)
            let r = try nd.generate(mean: mean, std: std, source: row(0), sourceNegative: row(1), target: row(2),
                                    targetNegative: row(3), generator: TorchGenerator(seed: 0))
            let label = "\(key) mask (UNet batch \(maxBatch)\(guided ? "" : ", no negative branch"))"
            XCTAssertEqual(r.timestep, Int(try Self.ref(p, "diffedit.mask.timestep").floats()[0]), label)
            assertClose(r.imageLatents.data, try Self.ref(p, "diffedit.mask.image_latents").floats(), atol: 1e-4, "\(label) image latents")
            assertClose(r.noise.data, try Self.ref(p, "diffedit.mask.noise").floats(), atol: 0, "\(label) noise")
            assertClose(r.noisedLatents.data, try Self.ref(p, "diffedit.mask.noised_latents").floats(), atol: Self.noisedTolerance, "\(label) noised")
            XCTAssertEqual(r.epsSource == nil, !guided, label)
            var epsErr = Double.nan
            if let es = r.epsSource, let et = r.epsTarget {
                let epsSrc = assertClose(es.data, try Self.ref(p, "diffedit.mask.eps.source").floats(), atol: Self.latentTolerance, "\(label) eps.source")
                let epsTgt = assertClose(et.data, try Self.ref(p, "diffedit.mask.eps.target").floats(), atol: Self.latentTolerance, "\(label) eps.target")
                epsErr = nanAwareMax(epsSrc.maxAbsError, epsTgt.maxAbsError)
            }
            let refMap = try Self.ref(p, "diffedit.mask.map").floats()
            let mapErr = assertClose(r.map.data, refMap, atol: Self.mapTolerance, "\(label) map").maxAbsError
            let refClamp = try Self.ref(p, "diffedit.mask.clamp").floats()[0]
            XCTAssertEqual(r.clamp, refClamp, accuracy: 1e-4 * max(1, refClamp), "\(label) clamp")
            let refSoft = try Self.ref(p, "diffedit.mask.soft").floats()
            assertClose(r.soft.data, refSoft, atol: 1e-4, "\(label) soft")
            XCTAssertEqual(r.mask.shape, [1, 1] + Array(mean.shape[2...]), label)
            let (_, near) = Self.compareMask(r.mask.data, try Self.ref(p, "diffedit.mask").floats(), refSoft: refSoft, label)
            print("\(label): map max err \(mapErr), eps max err \(epsErr), near-threshold pixels \(near)")

            // The dense variant: the same map thresholded at ratio 2.1.
            let dense = NoiseDiffMask.threshold(map: r.map, ratio: 2.1)
            let refDenseSoft = try Self.ref(p, "diffedit.mask.dense.soft").floats()
            assertClose(dense.soft, refDenseSoft, atol: 1e-4, "\(label) dense soft")
            let (_, nearDense) = Self.compareMask(dense.mask, try Self.ref(p, "diffedit.mask.dense").floats(), refSoft: refDenseSoft, "\(label) dense")
            print("\(label) dense: near-threshold pixels \(nearDense)")
        }
    }

    // MARK: invert

    func testInversionMatchesDiffusers() throws {
        for key in Self.pipelines { try Self.checkInversion(Self.pipeline(key)) }
    }

    static func checkInversion(_ p: Pipeline) throws {
        let key = p.label
        let (mean, std) = try Self.posterior(p)
        let gen = TorchGenerator(seed: 0)
        let latents = DiagonalGaussian(mean: mean, std: std).sample(noise: gen.randn(count: mean.count))
        assertClose(latents.data, try Self.ref(p, "diffedit.invert.image_latents").floats(), atol: 1e-4, "\(key) invert image latents")
        let embeds = try Self.ref(p, "diffedit.invert.embeds").tensor()  // ["", src]
        var options = DiffEditInversion.Options()
        options.steps = p.steps
        var inv = DiffEditInversion(unet: p.unet, scheduler: try DDIMInverseScheduler(folder: p.folder), options: options)
        let r = try inv.invert(latents: latents, prompt: embeds.slice(batch: 1, count: 1),
                               negative: embeds.slice(batch: 0, count: 1), generator: gen)
        XCTAssertEqual(r.timesteps.map(Int64.init), try Self.ref(p, "diffedit.invert.timesteps").int32s().map(Int64.init), key)
        let refEps = try Self.ref(p, "diffedit.invert.eps").floats()
        assertClose(r.predictions.flatMap(\.data), refEps, atol: Self.latentTolerance, "\(key) invert eps")
        let want = try Self.ref(p, "diffedit.inverted")
        XCTAssertEqual(r.inverted.shape, want.shape, key)
        let c = assertClose(r.inverted.data, want.floats(), atol: Self.latentTolerance, "\(key) inverted")
        print("\(key) inverted: max abs error \(c.maxAbsError)")
    }

    func testRegularizedInversionMatchesDiffusers() throws {
        for key in Self.pipelines { try Self.checkRegularizedInversion(Self.pipeline(key)) }
    }

    static func checkRegularizedInversion(_ p: Pipeline) throws {
        let key = p.label
        let gen = TorchGenerator(seed: 0)
        _ = gen.randn(count: try Self.ref(p, "diffedit.invert.posterior_noise").count)
        let latents = try Self.ref(p, "diffedit.invert.image_latents").tensor()
        let embeds = try Self.ref(p, "diffedit.invert.embeds").tensor()
        var options = DiffEditInversion.Options()
        options.steps = p.steps
        options.regularizer.steps = 2
        var rolls: [Int64] = []
        options.regularizer.rollObserver = { rolls.append(Int64($0)) }
        var inv = DiffEditInversion(unet: p.unet, scheduler: try DDIMInverseScheduler(folder: p.folder), options: options)
        let r = try inv.invert(latents: latents, prompt: embeds.slice(batch: 1, count: 1),
                               negative: embeds.slice(batch: 0, count: 1), generator: gen)
        XCTAssertEqual(rolls, try Self.ref(p, "diffedit.invert.reg.rolls").int32s().map(Int64.init), "\(key) roll draws")
        assertClose(r.predictions.flatMap(\.data), try Self.ref(p, "diffedit.invert.reg.eps_raw").floats(),
                    atol: Self.latentTolerance, "\(key) reg eps_raw")
        let refEps = try Self.ref(p, "diffedit.invert.reg.eps").floats()
        let ce = assertClose(r.regularizedPredictions.flatMap(\.data), refEps, atol: Self.regularizedTolerance, "\(key) reg eps")
        let want = try Self.ref(p, "diffedit.inverted.reg").floats()
        let c = assertClose(r.inverted.data, want, atol: Self.latentTolerance, "\(key) inverted.reg")
        print("\(key) inverted.reg: max abs error \(c.maxAbsError), eps \(ce.maxAbsError)")
    }

    /// The regulariser's hand-derived gradients against central finite differences in double.
    func testRegularizerGradientsMatchFiniteDifferences() throws {
        let reg = InversionRegularizer()
        var x = TorchGenerator(seed: 3).randn(count: 2 * 16 * 12).map { $0 * 0.7 + 0.1 }
        // KL
        func kl(_ e: [Float]) -> Double {
            let n = Double(e.count), mu = e.reduce(0.0) { $0 + Double($1) } / n
            let v = e.reduce(0.0) { $0 + (Double($1) - mu) * (Double($1) - mu) } / (n - 1)
            return v + mu * mu - 1 - log(v + 1e-7)
        }
        let g = reg.klGradient(x)
        for i in [0, 7, 100, 300] {
            let h: Float = 1e-2
            let old = x[i]
            x[i] = old + h; let up = kl(x)
            x[i] = old - h; let down = kl(x)
            x[i] = old
            XCTAssertEqual(Double(g[i]), (up - down) / Double(2 * h), accuracy: 2e-4, "kl gradient \(i)")
        }
        // Auto-correlation over a 16×12 plane (one pyramid level below: 8×6), replaying the rolls.
        let plane = Array(x[0..<(16 * 12)])
        func ac(_ p: [Float], rolls: [Int]) -> Double {
            func terms(_ q: [Float], _ h: Int, _ w: Int, _ r: Int) -> Double {
                var a = 0.0, b = 0.0
                for y in 0..<h { for xx in 0..<w {
                    a += Double(q[y * w + xx]) * Double(q[((y - r + h) % h) * w + xx])
                    b += Double(q[y * w + xx]) * Double(q[y * w + (xx - r + w) % w])
                } }
                let n = Double(h * w)
                return (a / n) * (a / n) + (b / n) * (b / n)
            }
            let pooled = InversionRegularizer.avgPool2(p, h: 16, w: 12)
            return terms(p, 16, 12, rolls[0]) + terms(pooled.x, 8, 6, rolls[1])
        }
        var rolls: [Int] = []
        var r2 = InversionRegularizer()
        r2.rollObserver = { rolls.append($0) }
        let ga = r2.autoCorrGradient(.init(rows: 1, data: plane), channels: 1, h: 16, w: 12, generator: TorchGenerator(seed: 5))
        XCTAssertEqual(rolls.count, 2)
        var q = plane
        for i in [0, 13, 77, 190] {
            let h: Float = 1e-2
            let old = q[i]
            q[i] = old + h; let up = ac(q, rolls: rolls)
            q[i] = old - h; let down = ac(q, rolls: rolls)
            q[i] = old
            XCTAssertEqual(Double(ga[i]), (up - down) / Double(2 * h), accuracy: 1e-4, "auto-corr gradient \(i)")
        }
    }

    // MARK: __call__

    func testMaskedDenoisingMatchesDiffusers() throws {
        for key in Self.pipelines { try Self.checkMaskedDenoising(Self.pipeline(key)) }
    }

    static func checkMaskedDenoising(_ p: Pipeline) throws {
        let key = p.label
        let inverted = try Self.ref(p, "diffedit.inverted").tensor()
        let embeds = try Self.ref(p, "diffedit.call.embeds").tensor()  // [src, tgt]
        for (maskName, suffix) in [("diffedit.mask", ""), ("diffedit.mask.dense", ".dense")] {
            let mask = try Self.ref(p, maskName).tensor()
            var options = MaskedDenoising.Options()
            options.steps = p.steps
            var dn = MaskedDenoising(unet: p.unet, scheduler: try DDIMScheduler(folder: p.folder), options: options)
            let r = try dn.denoise(inverted: inverted, mask: mask, prompt: embeds.slice(batch: 1, count: 1),
                                   negative: embeds.slice(batch: 0, count: 1))
            let label = "\(key) denoise\(suffix)"
            XCTAssertEqual(r.timesteps.map(Int64.init), try Self.ref(p, "diffedit.call.timesteps").int32s().map(Int64.init), label)
            if suffix.isEmpty {
                assertClose(r.predictions.flatMap(\.data), try Self.ref(p, "diffedit.call.eps").floats(), atol: Self.latentTolerance, "\(label) eps")
                assertClose(r.stepOutputs.flatMap(\.data), try Self.ref(p, "diffedit.call.step_out").floats(), atol: Self.latentTolerance, "\(label) step_out")
            }
            assertClose(r.blended.flatMap(\.data), try Self.ref(p, "diffedit.call\(suffix).latents").floats(), atol: Self.latentTolerance, "\(label) latents per step")
            let want = try Self.ref(p, "diffedit.edited\(suffix).latents").floats()
            let c = assertClose(r.latents.data, want, atol: Self.latentTolerance, "\(label) edited latents")
            print("\(label): edited latents max abs error \(c.maxAbsError)")
        }
    }

    /// The whole pipeline from the image: our mask, our inversion, our edit, decoded to 8 bits.
    func testFullPipelineImageMatchesDiffusers() throws {
        for key in Self.pipelines { try Self.checkFullPipelineImage(Self.pipeline(key)) }
    }

    static func checkFullPipelineImage(_ p: Pipeline) throws {
        let key = p.label
        let (mean, std) = try Self.posterior(p)
        let maskEmbeds = try Self.ref(p, "diffedit.mask.embeds").tensor()
        let row = { (i: Int) in maskEmbeds.slice(batch: i, count: 1) }
        var mo = NoiseDiffMask.Options(); mo.steps = p.steps
        var nd = NoiseDiffMask(unet: p.unet, scheduler: try DDIMScheduler(folder: p.folder), options: mo)
        let m = try nd.generate(mean: mean, std: std, source: row(0), sourceNegative: row(1), target: row(2),
                                targetNegative: row(3), generator: TorchGenerator(seed: 0))
        let gen = TorchGenerator(seed: 0)
        let latents = DiagonalGaussian(mean: mean, std: std).sample(noise: gen.randn(count: mean.count))
        var io = DiffEditInversion.Options(); io.steps = p.steps
        var inv = DiffEditInversion(unet: p.unet, scheduler: try DDIMInverseScheduler(folder: p.folder), options: io)
        let empty = row(1), src = row(0), tgt = row(2)
        let stack = try inv.invert(latents: latents, prompt: src, negative: empty, generator: gen).inverted
        let vae = try AutoencoderKL(folder: p.folder)
        let decoder = try vae.makeDecoder()
        for (mask, suffix) in [(m.mask, ""), (Tensor(shape: m.mask.shape, data: NoiseDiffMask.threshold(map: m.map, ratio: 2.1).mask), ".dense")] {
            var dopt = MaskedDenoising.Options(); dopt.steps = p.steps
            var dn = MaskedDenoising(unet: p.unet, scheduler: try DDIMScheduler(folder: p.folder), options: dopt)
            let edited = try dn.denoise(inverted: stack, mask: mask, prompt: tgt, negative: src).latents
            let want = try Self.ref(p, "diffedit.edited\(suffix).latents").floats()
            let cl = assertClose(edited.data, want, atol: Self.fromImageTolerance, "\(key)\(suffix) edited latents from the image")
            let sf = vae.config.scalingFactor
            let image = decoder.decode(Tensor(shape: edited.shape, data: edited.data.map { $0 / sf }))
            let u8 = try Self.ref(p, "diffedit.edited\(suffix).u8").floats()
            let (h, w) = (image.shape[2], image.shape[3])
            XCTAssertEqual(h * w * 3, u8.count, "\(key)\(suffix): image size")
            // Our 8-bit levels in the fixture's HWC order; every sample within ±1 of diffusers'.
            var levels = [Float](repeating: .nan, count: h * w * 3)
            for c in 0..<3 { for i in 0..<(h * w) {
                levels[i * 3 + c] = Float(NetpbmImage.quantize(image.data[c * h * w + i], maxval: 255))
            } }
            // quantize maps NaN to 0, so the decoded floats must be finite too.
            XCTAssertTrue(image.data.allSatisfy(\.isFinite), "\(key)\(suffix): non-finite decoded samples")
            let cu = assertClose(levels, u8, atol: 1, "\(key)\(suffix): 8-bit image within ±1")
            print("\(key)\(suffix) full pipeline: latents max err \(cl.maxAbsError), u8 worst \(cu.maxAbsError) levels, \(cu.failures) of \(u8.count) samples off by more than 1")
        }
    }

    /// The two blends on the fixture stack: with an empty mask diffusers' ends on the t = 1
    /// inversion output and the paper's on the clean latent; with a full mask both are plain
    /// DDIM decoding; with the fixture mask the paper blend keeps x₀ exactly outside it.
    func testPaperBlendEndsOnTheCleanLatent() throws {
        let p = try Self.pipeline("sd1")
        let inverted = try Self.ref(p, "diffedit.inverted").tensor()
        let clean = try Self.ref(p, "diffedit.invert.image_latents").tensor()
        let embeds = try Self.ref(p, "diffedit.call.embeds").tensor()
        let (h, w) = (inverted.shape[3], inverted.shape[4])
        func run(_ mask: Tensor, _ blend: MaskedDenoising.Blend) throws -> Tensor {
            var o = MaskedDenoising.Options(); o.steps = p.steps; o.blend = blend
            var dn = MaskedDenoising(unet: p.unet, scheduler: try DDIMScheduler(folder: p.folder), options: o)
            return try dn.denoise(inverted: inverted, mask: mask, prompt: embeds.slice(batch: 1, count: 1),
                                  negative: embeds.slice(batch: 0, count: 1), clean: clean).latents
        }
        let zeros = Tensor(zeros: [1, 1, h, w]), ones = Tensor(shape: [1, 1, h, w], data: Array(repeating: 1, count: h * w))
        XCTAssertEqual(try run(zeros, .diffusers).data, inverted.step(inverted.shape[1] - 1).data)
        XCTAssertEqual(try run(zeros, .paper).data, clean.data)
        XCTAssertEqual(try run(ones, .diffusers).data, try run(ones, .paper).data)
        let mask = try Self.ref(p, "diffedit.mask").tensor()
        let edited = try run(mask, .paper)
        XCTAssertTrue(mask.data.contains(0) && mask.data.contains(1), "the fixture mask has both an inside and an outside")
        for ch in 0..<4 { for i in 0..<(h * w) where mask.data[i] == 0 {
            XCTAssertEqual(edited.data[ch * h * w + i], clean.data[ch * h * w + i])
        } }
        XCTAssertTrue(edited.data.allSatisfy(\.isFinite), "non-finite edited latents")
        XCTAssertNotEqual(edited.data, clean.data, "the edit changes the inside of the mask")
    }
}
