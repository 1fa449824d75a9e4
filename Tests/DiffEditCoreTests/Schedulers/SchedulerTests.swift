import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// DDIMScheduler / DDIMInverseScheduler against diffusers for every beta schedule, timestep
/// spacing, prediction type, set_alpha_to_one and clip_sample variant in the fixture.
///
/// Tolerance: max |ours − diffusers| ≤ 1e-6 × max(1, max |diffusers|) for samples, 1e-5 × … for
/// x̂₀, and never above 1e-4 absolute (README's claim). Measured: samples 9.5e-7 abs (2.2e-7
/// relative), x̂₀ 7.6e-6 abs (1.8e-7 relative). Not bit-exact because torch's float sqrt goes
/// through MKL's vsSqrt, which is faithfully but not correctly rounded (up to 0.75 ulp), so √ᾱ
/// may differ by one ulp; x̂₀ divides by √ᾱ, which is ~0.006 at t = 999, amplifying that.
/// alphas_cumprod and timesteps are compared exactly.
final class SchedulerTests: XCTestCase {
    static let tolerance: Float = 1e-6
    static let x0Tolerance: Float = 1e-5
    /// README: 1e-4 on f32 activations; caps both relative bounds.
    static let activationClaim: Double = 1e-4

    static let variants = ["sd1", "sd2", "trailing", "linspace", "offset0", "linear", "cosine", "sample",
                           "alpha1", "clip", "vpred_trailing_clip"]

    func testAgainstDiffusers() throws {
        let recs = try Fixtures.records("scheduler.tensor")
        let x = try XCTUnwrap(recs["sched.input.sample"]).tensor()
        let mo = try XCTUnwrap(recs["sched.input.model_output"]).tensor()
        let noise = try XCTUnwrap(recs["sched.input.noise"]).tensor()
        var worst = 0.0, worstX0 = 0.0, worstAbs = 0.0, worstAbsX0 = 0.0
        var checked = 0
        var stepsPerVariant: [String: Int] = [:]
        /// Max abs error ≤ tolerance × max(1, max |reference|), NaN-aware (assertClose).
        func compare(_ got: Tensor, _ name: String, isX0: Bool) {
            guard let want = recs[name] else { XCTFail("fixture has no \(name)"); return }
            let scale = Double(max(1, maxMagnitude(want.floats())))
            // Never more than README's 1e-4 absolute for f32 values (x̂₀ reaches |x| ≈ 25 at
            // t = 781, where the relative bound alone would allow 2.4e-4).
            let atol = min(Self.activationClaim, Double(isX0 ? Self.x0Tolerance : Self.tolerance) * scale)
            let c = assertClose(got, want, atol: atol, name)
            if isX0 {
                worstX0 = nanAwareMax(worstX0, c.maxAbsError / scale); worstAbsX0 = nanAwareMax(worstAbsX0, c.maxAbsError)
            } else {
                worst = nanAwareMax(worst, c.maxAbsError / scale); worstAbs = nanAwareMax(worstAbs, c.maxAbsError)
            }
            checked += 1
        }
        for v in Self.variants {
            let ac = try XCTUnwrap(recs["sched.\(v).alphas_cumprod"], v)
            let config = try JSONConfig(data: Data(try XCTUnwrap(ac.metadata["config_json"]).utf8), label: "sched.\(v)")
            var s = try DDIMScheduler(config: config)
            XCTAssertEqual(s.alphasCumprod.map(\.bitPattern), ac.floats().map(\.bitPattern), "\(v) alphas_cumprod (exact)")
            let fv = try XCTUnwrap(ac.metadata["final_alpha_cumprod"].flatMap(Double.init), "\(v) final_alpha_cumprod metadata")
            XCTAssertEqual(Double(s.finalAlphaCumprod), fv, "\(v) final_alpha_cumprod")
            for n in [50, 20, 10, 7] {
                try s.setTimesteps(n)
                XCTAssertEqual(s.timesteps.map(Int32.init), try XCTUnwrap(recs["sched.\(v).timesteps.\(n)"]).int32s(),
                               "\(v) timesteps \(n)")
            }
            let stepPrefix = "sched.\(v).step."
            for name in recs.keys.sorted() where name.hasPrefix(stepPrefix) && name.hasSuffix(".prev_sample") {
                // sched.V.step.nN.tT.prev_sample
                let parts = name.dropFirst(stepPrefix.count).split(separator: ".")
                let n = Int(parts[0].dropFirst())!, t = Int(parts[1].dropFirst())!
                try s.setTimesteps(n)
                let out = try s.step(modelOutput: mo, timestep: t, sample: x, eta: 0)
                compare(out.prevSample, name, isX0: false)
                compare(out.predOriginalSample, name.replacingOccurrences(of: ".prev_sample", with: ".pred_original_sample"), isX0: true)
                stepsPerVariant[v, default: 0] += 1
            }
            XCTAssertGreaterThan(stepsPerVariant[v, default: 0], 0, "\(v): the fixture has no step records to compare")
            compare(try s.addNoise(original: x, noise: noise, timesteps: [981, 1]), "sched.\(v).add_noise", isX0: false)

            // DDIMInverseScheduler.from_config(s.config)
            var inv = try DDIMInverseScheduler(config: config)
            if v == "linspace" {
                XCTAssertThrowsError(try inv.setTimesteps(50), "diffusers refuses linspace for the inverse scheduler")
                continue
            }
            let iv = try XCTUnwrap(recs["isched.\(v).timesteps.50"]?.metadata["initial_alpha_cumprod"].flatMap(Double.init),
                                   "\(v) initial_alpha_cumprod metadata")
            XCTAssertEqual(Double(inv.initialAlphaCumprod), iv, "\(v) initial_alpha_cumprod")
            for n in [50, 20, 10, 7] {
                try inv.setTimesteps(n)
                XCTAssertEqual(inv.timesteps.map(Int32.init), try XCTUnwrap(recs["isched.\(v).timesteps.\(n)"]).int32s(),
                               "\(v) inverse timesteps \(n)")
            }
            let invPrefix = "isched.\(v).step."
            for name in recs.keys.sorted() where name.hasPrefix(invPrefix) && name.hasSuffix(".prev_sample") {
                let parts = name.dropFirst(invPrefix.count).split(separator: ".")
                let n = Int(parts[0].dropFirst())!, t = Int(parts[1].dropFirst())!
                try inv.setTimesteps(n)
                let out = try inv.step(modelOutput: mo, timestep: t, sample: x)
                compare(out.prevSample, name, isX0: false)
                compare(out.predOriginalSample, name.replacingOccurrences(of: ".prev_sample", with: ".pred_original_sample"), isX0: true)
                stepsPerVariant["inverse " + v, default: 0] += 1
            }
            XCTAssertGreaterThan(stepsPerVariant["inverse " + v, default: 0], 0, "\(v): the fixture has no inverse step records to compare")
        }
        XCTAssertGreaterThanOrEqual(checked, 100)
        print("scheduler parity: \(checked) outputs, worst relative error \(worst) (abs \(worstAbs)); x̂₀: relative \(worstX0) (abs \(worstAbsX0))")
    }

    /// η > 0 draws its noise as one randn of the sample's shape from the generator, and the step
    /// is diffusers' DDIMScheduler.step(..., eta, generator): against
    /// Tests/Fixtures/scheduler-steps.tensor (`ddim.*`), made by diffusers with a fresh
    /// torch.Generator('cpu').manual_seed(3) per step, for SD 1.x, SD 2.x (v-prediction) and
    /// clip_sample, η 0.5 and 1.0, at t = 781 and t = 1 (the final ᾱ) of 50 steps and t = 711 of 7.
    /// Our generator's draw must be torch's (exactly), the step with it the reference's (as
    /// `testAgainstDiffusers`), and the step given that draw as variance noise the same step.
    func testEtaNoiseComesFromTheGenerator() throws {
        let recs = try Fixtures.records("scheduler-steps.tensor")
        let x = try XCTUnwrap(recs["ddim.input.sample"]).tensor()
        let mo = try XCTUnwrap(recs["ddim.input.model_output"]).tensor()
        let drawn = try XCTUnwrap(recs["ddim.variance_noise"])
        let seed = UInt64(3)
        let z = TorchGenerator(seed: seed).randn(shape: x.shape)
        XCTAssertEqual(z.shape, drawn.shape)
        assertClose(z.data, drawn.floats(), atol: 0, "randn of manual_seed(3), the draw every eta step takes (exact)")
        var checked = 0
        for v in ["sd1", "sd2", "clip"] {
            let configRecord = try XCTUnwrap(recs["ddim.\(v).config"], "scheduler-steps.tensor has no ddim.\(v).config")
            let config = try JSONConfig(data: Data(try XCTUnwrap(configRecord.metadata["config_json"]).utf8), label: v)
            var s = try DDIMScheduler(config: config)
            XCTAssertEqual(s.alphasCumprod.map(\.bitPattern), configRecord.floats().map(\.bitPattern), "\(v) alphas_cumprod (exact)")
            let prefix = "ddim.\(v).eta-"
            let names = recs.keys.filter { $0.hasPrefix(prefix) && $0.hasSuffix(".prev_sample") }.sorted()
            XCTAssertEqual(names.count, 6, "\(v): η 0.5 and 1.0 at three timesteps")
            for name in names {
                let want = try XCTUnwrap(recs[name])
                let eta = try XCTUnwrap(want.metadata["eta"].flatMap(Float.init), name)
                let n = try XCTUnwrap(want.metadata["num_inference_steps"].flatMap(Int.init), name)
                let t = try XCTUnwrap(want.metadata["timestep"].flatMap(Int.init), name)
                try s.setTimesteps(n)
                let a = try s.step(modelOutput: mo, timestep: t, sample: x, eta: eta, generator: TorchGenerator(seed: seed))
                let scale = Double(max(1, maxMagnitude(want.floats())))
                let atol = min(Self.activationClaim, Double(Self.tolerance) * scale)
                assertClose(a.prevSample, want, atol: atol, "\(name) (generator)")
                let b = try s.step(modelOutput: mo, timestep: t, sample: x, eta: eta, varianceNoise: drawn.tensor())
                XCTAssertEqual(a.prevSample.data.map(\.bitPattern), b.prevSample.data.map(\.bitPattern), "\(name): the generator's draw is the variance noise")
                // and it is not the deterministic step
                let c = try s.step(modelOutput: mo, timestep: t, sample: x, eta: 0)
                XCTAssertGreaterThan(closeness(a.prevSample.data, c.prevSample.data, atol: 0).maxAbsError, 0.01, "\(name) differs from η = 0")
                checked += 1
            }
        }
        XCTAssertEqual(checked, 18)
        var s = try DDIMScheduler(config: JSONConfig(data: Data(try XCTUnwrap(recs["ddim.sd1.config"]?.metadata["config_json"]).utf8), label: "sd1"))
        try s.setTimesteps(50)
        XCTAssertThrowsError(try s.step(modelOutput: mo, timestep: 781, sample: x, eta: 0.5), "η > 0 without noise source")
    }

    /// get_timesteps / get_inverse_timesteps of the DiffEdit pipeline. Expected lists were printed
    /// by diffusers 0.42.1 (StableDiffusionDiffEditPipeline.get_timesteps / get_inverse_timesteps
    /// on an SD 1.5 scheduler config: scaled_linear, steps_offset 1, set_alpha_to_one false).
    func testStrengthTimestepsMatchPipeline() throws {
        let config = JSONConfig(values: [
            "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "clip_sample": false, "set_alpha_to_one": false,
            "steps_offset": 1,
        ], label: "sd15")
        let cases: [(Int, Double, [Int], [Int])] = [
            (50, 0.8, Array(stride(from: 781, through: 1, by: -20)), Array(stride(from: 1, through: 781, by: 20))),
            (10, 0.5, [401, 301, 201, 101, 1], [1, 101, 201, 301, 401]),
            (7, 0.3, [143, 1], [1, 143]),
            (5, 1.0, [801, 601, 401, 201, 1], [1, 201, 401, 601, 801]),
            (5, 0.0, [], []),
            (3, 0.7, [334, 1], [1, 334]),
        ]
        for (steps, strength, want, wantInverse) in cases {
            var s = try DDIMScheduler(config: config)
            try s.setTimesteps(steps)
            XCTAssertEqual(try s.strengthTimesteps(strength: strength), want, "get_timesteps(\(steps), \(strength))")
            var inv = try DDIMInverseScheduler(config: config)
            try inv.setTimesteps(steps)
            XCTAssertEqual(try inv.strengthTimesteps(strength: strength), wantInverse,
                           "get_inverse_timesteps(\(steps), \(strength))")
        }
        var s = try DDIMScheduler(config: config)
        try s.setTimesteps(10)
        XCTAssertThrowsError(try s.strengthTimesteps(strength: 1.5))
    }

    func testUnsupportedConfigsAreRefusedByName() throws {
        func message(_ values: [String: Any]) -> String {
            do {
                _ = try DDIMScheduler(config: JSONConfig(values: values, label: "scheduler_config.json"))
                return ""
            } catch { return "\(error)" }
        }
        XCTAssertTrue(message(["thresholding": true]).contains("thresholding"))
        XCTAssertTrue(message(["rescale_betas_zero_snr": true]).contains("rescale_betas_zero_snr"))
        XCTAssertTrue(message(["beta_schedule": "sigmoid"]).contains("beta_schedule"))
        XCTAssertTrue(message(["prediction_type": "flow"]).contains("prediction_type"))
        XCTAssertTrue(message(["timestep_spacing": "karras"]).contains("timestep_spacing"))
        var s = try DDIMScheduler(config: JSONConfig(values: [:], label: "x"))
        XCTAssertThrowsError(try s.setTimesteps(1001))
        XCTAssertThrowsError(try s.setTimesteps(0))
        XCTAssertThrowsError(try s.step(modelOutput: Tensor(zeros: [1]), timestep: 0, sample: Tensor(zeros: [1])),
                             "step before set_timesteps")
    }

    func testGuidanceFormula() {
        let u = Tensor(shape: [1, 3], data: [1, -2, 0.5]), c = Tensor(shape: [1, 3], data: [2, 2, 0.5])
        let g = Guidance.classifierFree(batched: Tensor.concat(batch: [u, c]), scale: 7.5)
        XCTAssertEqual(g.data, [1 + 7.5 * 1, -2 + 7.5 * 4, 0.5])
        XCTAssertEqual(g.shape, [1, 3])
    }
}
