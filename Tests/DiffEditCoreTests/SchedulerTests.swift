import Foundation
import XCTest
@testable import DiffEditCore

/// DDIMScheduler / DDIMInverseScheduler against diffusers for every beta schedule, timestep
/// spacing, prediction type, set_alpha_to_one and clip_sample variant in the fixture.
///
/// Tolerance: max |ours − diffusers| ≤ 1e-6 × max(1, max |diffusers|) for samples, 3e-5 × … for
/// x̂₀. Not bit-exact because torch's float sqrt goes through MKL's vsSqrt, which is faithfully
/// but not correctly rounded (up to 0.75 ulp), so √ᾱ may differ by one ulp; x̂₀ divides by √ᾱ,
/// which is ~0.006 at t = 999, amplifying that. alphas_cumprod and timesteps are compared exactly.
final class SchedulerTests: XCTestCase {
    static let tolerance: Float = 1e-6
    static let x0Tolerance: Float = 3e-5

    func records() throws -> [String: TensorRecord] {
        let scratch = "/tmp/unetref/scheduler.tensor"
        if FileManager.default.fileExists(atPath: scratch) {
            let all = try TensorStream.readAll(path: scratch)
            return Dictionary(all.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        }
        return try Fixtures.records("scheduler.tensor")
    }

    /// Max abs error relative to the reference's largest magnitude (at least 1).
    func maxError(_ a: [Float], _ b: [Float]) -> Float {
        let scale = max(1, b.reduce(0) { max($0, abs($1)) })
        return zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) } / scale
    }

    func testAgainstDiffusers() throws {
        let recs = try records()
        let caseIDs = Set(recs.keys.compactMap { $0.split(separator: "/").first.map(String.init) })
        XCTAssertFalse(caseIDs.isEmpty)
        var worst: Float = 0, worstX0: Float = 0
        var checked = 0
        for id in caseIDs.sorted() {
            let ac = recs["\(id)/alphas_cumprod"]!
            let config = try JSONConfig(data: Data(ac.metadata["config"]!.utf8), label: id)
            let steps = Int(ac.metadata["steps"]!)!
            var s = try DDIMScheduler(config: config)
            XCTAssertEqual(s.alphasCumprod.map(\.bitPattern), ac.floats().map(\.bitPattern), "\(id) alphas_cumprod")
            try s.setTimesteps(steps)
            XCTAssertEqual(s.timesteps.map(Int32.init), try recs["\(id)/timesteps"]!.int32s(), "\(id) timesteps")
            let x = recs["\(id)/sample"]!.tensor(), mo = recs["\(id)/model_output"]!.tensor()
            for (name, r) in recs where name.hasPrefix("\(id)/") {
                let parts = name.split(separator: "/")
                if parts.count == 4, parts[1] == "step" || parts[1] == "step_eta" {
                    let t = Int(parts[2].dropFirst())!
                    let eta: Float = parts[1] == "step" ? 0 : 0.7
                    let out = try s.step(modelOutput: mo, timestep: t, sample: x, eta: eta,
                                         generator: eta > 0 ? TorchGenerator(seed: 7) : nil)
                    let isX0 = parts[3] == "x0"
                    let got = isX0 ? out.predOriginalSample : out.prevSample
                    let e = maxError(got.data, r.floats())
                    XCTAssertLessThanOrEqual(e, isX0 ? Self.x0Tolerance : Self.tolerance, "\(name)")
                    if isX0 { worstX0 = max(worstX0, e) } else { worst = max(worst, e) }
                    checked += 1
                }
                if parts.count == 3, parts[1] == "add_noise" {
                    let ts = parts[2].split(separator: "_").map { Int($0.filter(\.isNumber))! }
                    let got = try s.addNoise(original: x, noise: mo, timesteps: ts)
                    let e = maxError(got.data, r.floats())
                    XCTAssertLessThanOrEqual(e, Self.tolerance, "\(name)")
                    worst = max(worst, e); checked += 1
                }
            }
            if config.values["timestep_spacing"] as? String == "linspace" {
                var inv = try DDIMInverseScheduler(config: config)
                XCTAssertThrowsError(try inv.setTimesteps(steps))
                continue
            }
            var inv = try DDIMInverseScheduler(config: config)
            try inv.setTimesteps(steps)
            XCTAssertEqual(inv.timesteps.map(Int32.init), try recs["\(id)/inv_timesteps"]!.int32s(), "\(id) inverse timesteps")
            for (name, r) in recs where name.hasPrefix("\(id)/inv_step/") {
                let parts = name.split(separator: "/")
                let t = Int(parts[2].dropFirst())!
                let out = try inv.step(modelOutput: mo, timestep: t, sample: x)
                let isX0 = parts[3] == "x0"
                let got = isX0 ? out.predOriginalSample : out.prevSample
                let e = maxError(got.data, r.floats())
                XCTAssertLessThanOrEqual(e, isX0 ? Self.x0Tolerance : Self.tolerance, "\(name)")
                if isX0 { worstX0 = max(worstX0, e) } else { worst = max(worst, e) }
                checked += 1
            }
        }
        print("scheduler parity: \(checked) outputs, worst relative error \(worst) (x̂₀: \(worstX0))")
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
