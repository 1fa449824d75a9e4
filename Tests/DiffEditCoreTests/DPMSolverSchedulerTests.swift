import Foundation
import XCTest
@testable import DiffEditCore

/// DPMSolverMultistepScheduler / DPMSolverMultistepInverseScheduler against diffusers
/// (Tests/Fixtures/dpm-scheduler.tensor) for every config variant in the fixture: SD 1.x and 2.x,
/// SD 1.5's own PNDM file (no timestep_spacing: the DPM default linspace applies), the three
/// spacings, steps_offset 0, linear betas, sample prediction, solver orders 1–3, heun,
/// final σ min, lower_order_final off, euler_at_final, cosine betas with λ clipping (three
/// spacings), and DEIS's names. Each variant is built from the scheduler_config.json contents the fixture records
/// (`source_json`), as the tools read it.
///
/// Timesteps compared exactly; σ, every step of whole multistep runs (20 steps from strength 0.8,
/// 7 steps from 0, forward and inverse) and add_noise within 2e-5 × max(1, max |diffusers|): README's
/// 1e-4 absolute for values up to 5 (SD latents), relative beyond (the random inputs reach 470 on
/// the cosine schedule's σ near t = 995). Measured over 285 records (874 solver steps): 6.3e-6 relative
/// (a third-order inverse run), 1.8e-4 absolute on a record reaching 470. Not bit-exact: torch
/// computes σ's square roots with MKL's vsSqrt and exp/log of the 0-dim step scalars with its own
/// kernels, each up to an ulp from glibc's; third-order steps amplify that by 1/r₀, 1/r₁.
final class DPMSolverSchedulerTests: XCTestCase {
    static let relativeTolerance = 2e-5

    static let variants = ["sd1", "sd2", "sd15_pndm", "trailing", "linspace", "offset0", "linear", "sample", "order1",
                           "order3", "heun", "order3_vpred_trailing", "sigma_min", "no_lower_order_final",
                           "euler_at_final", "cosine_clipped", "cosine_clipped_trailing", "cosine_clipped_linspace", "deis_names"]
    static let stepCounts = [50, 25, 20, 10, 7]

    func testAgainstDiffusers() throws {
        let recs = try Fixtures.records("dpm-scheduler.tensor")
        let x = try XCTUnwrap(recs["dpm.input.sample"]).tensor()
        let outputs = try XCTUnwrap(recs["dpm.input.model_output"]).tensor()
        let noise = try XCTUnwrap(recs["dpm.input.noise"]).tensor()
        var worst = 0.0, worstAbs = 0.0, worstAbsScale = 0.0, compared = 0, runSteps = 0
        func compare(_ got: [Float], _ name: String) {
            guard let want = recs[name] else { XCTFail("fixture has no \(name)"); return }
            let scale = Double(max(1, maxMagnitude(want.floats())))
            let c = assertClose(got, want.floats(), atol: Self.relativeTolerance * scale, name)
            worst = nanAwareMax(worst, c.maxAbsError / scale)
            if !(c.maxAbsError <= worstAbs) { (worstAbs, worstAbsScale) = (c.maxAbsError, scale) }
            compared += 1
        }
        for v in Self.variants {
            let ac = try XCTUnwrap(recs["dpm.\(v).alphas_cumprod"], v)
            let config = try JSONConfig(data: Data(try XCTUnwrap(ac.metadata["source_json"]).utf8), label: "dpm.\(v)")
            var fwd = try DPMSolverMultistepScheduler(config: config)
            var inv = try DPMSolverMultistepInverseScheduler(config: config)
            XCTAssertEqual(fwd.alphasCumprod.map(\.bitPattern), ac.floats().map(\.bitPattern), "\(v) alphas_cumprod (exact)")
            for n in Self.stepCounts {
                try fwd.setTimesteps(n)
                XCTAssertEqual(fwd.timesteps.map(Int32.init), try XCTUnwrap(recs["dpm.\(v).timesteps.\(n)"]).int32s(), "\(v) timesteps \(n)")
                compare(fwd.sigmas, "dpm.\(v).sigmas.\(n)")
                try inv.setTimesteps(n)
                XCTAssertEqual(inv.timesteps.map(Int32.init), try XCTUnwrap(recs["dpm.\(v).inverse.timesteps.\(n)"]).int32s(),
                               "\(v) inverse timesteps \(n)")
                compare(inv.sigmas, "dpm.\(v).inverse.sigmas.\(n)")
            }
            for (n, strength) in [(20, 0.8), (7, 1.0)] {
                // Forward: the pipeline's slice of the schedule, every step's output.
                try fwd.setTimesteps(n)
                var sample = x, steps: [Float] = []
                for (k, t) in try fwd.strengthTimesteps(strength: strength).enumerated() {
                    sample = try fwd.step(modelOutput: outputs.entry(k), timestep: t, sample: sample)
                    steps += sample.data
                    runSteps += 1
                }
                compare(steps, "dpm.\(v).run.n\(n).s\(strength)")
                try inv.setTimesteps(n)
                sample = x
                steps = []
                for (k, t) in try inv.strengthTimesteps(strength: strength).enumerated() {
                    sample = try inv.step(modelOutput: outputs.entry(k), timestep: t, sample: sample)
                    steps += sample.data
                    runSteps += 1
                }
                compare(steps, "dpm.\(v).inverse.run.n\(n).s\(strength)")
            }
            try fwd.setTimesteps(20)
            let addT = [fwd.timesteps[4], fwd.timesteps[13]]
            compare(try fwd.addNoise(original: x, noise: noise, timesteps: addT).data, "dpm.\(v).add_noise")
        }
        XCTAssertEqual(compared, Self.variants.count * (2 * Self.stepCounts.count + 5))
        print("DPM-Solver scheduler parity: \(compared) records (\(runSteps) solver steps), worst relative error \(worst), worst absolute \(worstAbs) (on values up to \(worstAbsScale))")
    }

    /// The multistep history: a run that starts in the middle of the schedule begins first order,
    /// setTimesteps resets the history, steps must follow the schedule, and the final "zero" σ
    /// makes the last step return the data prediction x̂₀ itself.
    func testMultistepBookkeeping() throws {
        let recs = try Fixtures.records("dpm-scheduler.tensor")
        let config = try JSONConfig(data: Data(try XCTUnwrap(recs["dpm.sd1.alphas_cumprod"]?.metadata["source_json"]).utf8), label: "sd1")
        let x = try XCTUnwrap(recs["dpm.input.sample"]).tensor()
        let outputs = try XCTUnwrap(recs["dpm.input.model_output"]).tensor()
        var s = try DPMSolverMultistepScheduler(config: config)
        try s.setTimesteps(10)
        let ts = s.timesteps
        let a = try s.step(modelOutput: outputs.entry(0), timestep: ts[3], sample: x)
        XCTAssertThrowsError(try s.step(modelOutput: outputs.entry(1), timestep: ts[3], sample: a), "a step out of order")
        try s.setTimesteps(10)
        XCTAssertEqual(try s.step(modelOutput: outputs.entry(0), timestep: ts[3], sample: x).data, a.data,
                       "setTimesteps resets the history: the same first-order step again")
        // the last step with σ = 0 returns x̂₀ = (x − σ_t·ε̂)/α at the last timestep
        try s.setTimesteps(10)
        let last = ts.count - 1
        let out = try s.step(modelOutput: outputs.entry(0), timestep: ts[last], sample: x)
        let (alpha, sigma) = DPMSolverMultistep.alphaSigma(s.sigmas[last])
        XCTAssertEqual(s.sigmas.last, 0)
        XCTAssertEqual(out.data, zip(x.data, outputs.entry(0).data).map { (xv, e) in (xv - sigma * e) / alpha })
        XCTAssertThrowsError(try s.step(modelOutput: outputs.entry(0), timestep: 12345, sample: x))
        var unset = try DPMSolverMultistepScheduler(config: config)
        XCTAssertThrowsError(try unset.step(modelOutput: x, timestep: 1, sample: x), "step before setTimesteps")
        XCTAssertThrowsError(try unset.setTimesteps(0))
        XCTAssertThrowsError(try unset.setTimesteps(1001))
        XCTAssertThrowsError(try unset.setTimesteps(1000), "1000 steps of linspace spacing repeat timesteps")
        XCTAssertThrowsError(try unset.prevSample(modelOutput: x, timestep: 1, sample: x, eta: 0.5, generator: nil),
                             "DPM-Solver++ takes no eta")
    }

    /// A scheduler_config.json that diffusers saved for DPMSolverMultistepScheduler holds
    /// `"lambda_min_clipped": -Infinity` (Python's json writes the bare token; strict JSON has no
    /// such literal). Such a file parses and gives exactly the schedule of the key left out
    /// (diffusers' default, −∞); the tokens inside strings stay text; NaN is refused by name.
    func testDiffusersSavedConfigWithBareInfinityParses() throws {
        let recs = try Fixtures.records("dpm-scheduler.tensor")
        let source = try XCTUnwrap(recs["dpm.sd1.alphas_cumprod"]?.metadata["source_json"])
        let body = source.trimmingCharacters(in: .whitespacesAndNewlines).dropLast()  // the closing brace
        let saved = body + #", "lambda_min_clipped": -Infinity, "_note": "a \"quoted\" -Infinity, NaN"}"#
        let config = try JSONConfig(data: Data(saved.utf8), label: "scheduler_config.json")
        XCTAssertEqual(config.values["_note"] as? String, #"a "quoted" -Infinity, NaN"#)
        var fromSaved = try DPMSolverMultistepScheduler(config: config)
        var plain = try DPMSolverMultistepScheduler(config: JSONConfig(data: Data(source.utf8), label: "sd1"))
        XCTAssertEqual(fromSaved.config.lambdaMinClipped, -.infinity)
        for n in Self.stepCounts {
            try fromSaved.setTimesteps(n)
            try plain.setTimesteps(n)
            XCTAssertEqual(fromSaved.timesteps, plain.timesteps, "\(n) steps")
            XCTAssertEqual(fromSaved.sigmas.map(\.bitPattern), plain.sigmas.map(\.bitPattern), "\(n) steps")
        }
        XCTAssertNoThrow(try DPMSolverMultistepInverseScheduler(config: config))
        for bad in [#"{"lambda_min_clipped": NaN}"#, #"{"beta_start": -Infinity}"#, #"{"beta_end": NaN}"#] {
            let key = bad.split(separator: "\"")[1]
            assertToolError(try DPMSolverMultistepScheduler(config: JSONConfig(data: Data(bad.utf8), label: "s.json")),
                            contains: ["s.json", String(key)])
        }
        XCTAssertEqual(JSONConfig.quotingNonFinite(Data(source.utf8)), Data(source.utf8), "a strict file is left as it is")
    }

    /// Keys of a DPM-Solver config diffedit does not implement are refused by name; diffusers'
    /// renamings are followed.
    func testUnsupportedConfigsAreRefusedByName() throws {
        func refused(_ values: [String: Any], _ key: String, file: StaticString = #filePath, line: UInt = #line) {
            let json = JSONConfig(values: values, label: "scheduler_config.json")
            assertToolError(try DPMSolverMultistepScheduler(config: json), contains: [key], file: file, line: line)
        }
        refused(["algorithm_type": "sde-dpmsolver++"], "algorithm_type")
        refused(["algorithm_type": "dpmsolver"], "algorithm_type")
        refused(["algorithm_type": "deis"], "final_sigmas_type")  // diffusers refuses deis with the zero final σ
        refused(["solver_order": 4], "solver_order")
        refused(["solver_order": 0], "solver_order")
        refused(["solver_type": "bogus"], "solver_type")
        refused(["thresholding": true], "thresholding")
        refused(["variance_type": "learned_range"], "variance_type")
        refused(["use_karras_sigmas": true], "use_karras_sigmas")
        refused(["use_lu_lambdas": true], "use_lu_lambdas")
        refused(["use_flow_sigmas": true], "use_flow_sigmas")
        refused(["prediction_type": "flow_prediction"], "prediction_type")
        refused(["final_sigmas_type": "one"], "final_sigmas_type")
        refused(["timestep_spacing": "karras"], "timestep_spacing")
        refused(["lambda_min_clipped": 1e9], "lambda_min_clipped")
        let unipc = JSONConfig(values: ["solver_type": "bh2", "solver_order": 3], label: "unipc")
        XCTAssertEqual(try DPMSolverMultistepScheduler(config: unipc).config.solverType, .midpoint, "UniPC's bh2 → midpoint")
        XCTAssertEqual(try DPMSolverMultistepInverseScheduler(config: JSONConfig(values: ["algorithm_type": "deis"], label: "x"))
            .config.solverOrder, 2, "the inverse scheduler has no final σ and takes deis")
    }

    /// The pipeline's get_timesteps / get_inverse_timesteps on the DPM schedules (t_start from
    /// the steps asked for), against the slices the fixture's runs used.
    func testStrengthTimestepsMatchPipeline() throws {
        let recs = try Fixtures.records("dpm-scheduler.tensor")
        for v in ["sd1", "trailing", "linspace"] {
            let config = try JSONConfig(data: Data(try XCTUnwrap(recs["dpm.\(v).alphas_cumprod"]?.metadata["source_json"]).utf8), label: v)
            var fwd = try DPMSolverMultistepScheduler(config: config)
            var inv = try DPMSolverMultistepInverseScheduler(config: config)
            for (n, strength) in [(20, 0.8), (7, 1.0)] {
                try fwd.setTimesteps(n)
                try inv.setTimesteps(n)
                let want = try JSONSerialization.jsonObject(with: Data(try XCTUnwrap(recs["dpm.\(v).run.n\(n).s\(strength)"]?.metadata["timesteps_json"]).utf8)) as? [Int]
                let wantInv = try JSONSerialization.jsonObject(with: Data(try XCTUnwrap(recs["dpm.\(v).inverse.run.n\(n).s\(strength)"]?.metadata["timesteps_json"]).utf8)) as? [Int]
                XCTAssertEqual(try fwd.strengthTimesteps(strength: strength), want, "\(v) get_timesteps(\(n), \(strength))")
                XCTAssertEqual(try inv.strengthTimesteps(strength: strength), wantInv, "\(v) get_inverse_timesteps(\(n), \(strength))")
            }
            XCTAssertEqual(try fwd.strengthTimesteps(strength: 0), [])
            XCTAssertEqual(try inv.strengthTimesteps(strength: 0), [])
        }
    }
}

extension Tensor {
    /// Entry `k` of the leading dimension, without it: [K, …] → […].
    func entry(_ k: Int) -> Tensor { slice(batch: k, count: 1).reshaped(Array(shape.dropFirst())) }
}
