import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// LEDITS++ (invert, then __call__) against diffusers' LEditsPPPipelineStableDiffusion in
/// Tests/Fixtures/{sd1,sd2}-ledits/ref/ledits.tensor (Tests/Reference/fixtures_ledits.py): sd1-ledits
/// is epsilon prediction, sd2-ledits v-prediction; each has cross-attention on the store's grid.
/// Per case (`ledits.<case>.<field>`), checked in stages so that a failure names its stage:
/// - the inversion from the fixture's x₀ and embeddings: x_T (`start`) and the noise maps
///   within `stackTolerance`;
/// - the edit from the fixture's x_T and noise maps: every mask identical (activation_mask),
///   the final latents within `latentTolerance`;
/// - the whole pipeline from the image (our posterior mean, our inversion, our edit): x₀ and the
///   latents within `fromImageTolerance`, the masks identical, the decoded image within ±1 level.
/// Worst errors measured (AVX2 x86-64, debug build): x_T 4.8e-7; noise maps 9.0e-5 on values up to
/// |z| ≈ 40 (sd1 ddim-two: the last DDIM steps divide by σ ≈ 0.02, so they are compared relative
/// to their magnitude too, Tests/Reference/ledits-notes.md); edited latents 4.4e-5 (sd1
/// ddim-one-add); from the image x₀ 8.8e-6, latents 8.0e-5 (sd1 dpm-two), the image 1 level; every
/// mask identical (the fixtures keep every threshold ≥ 1.1e-3 of the largest value from its
/// quantile). The stack's tolerance is the plan's 1e-4 (+ 1e-4 relative for the noise maps); the
/// latents' as DiffEditTests' (5–10× the worst).
final class LEditsParityTests: XCTestCase {
    static let models = ["sd1-ledits", "sd2-ledits"]
    static let stackTolerance = 1e-4
    static let latentTolerance = 2.5e-4
    static let fromImageTolerance = 4e-4

    /// One fixture case: its records and the arguments diffusers ran it with (args_json).
    struct Case {
        let model: String
        let name: String
        let records: [String: TensorRecord]
        let kind: SchedulerKind
        let steps: Int
        let skip: Double
        let seed: UInt64
        let sourceGuidance: Float
        let concepts: [EditConcept]
        let mode: LEditsMaskMode

        var label: String { "\(model) \(name)" }

        func record(_ field: String, file: StaticString = #filePath, line: UInt = #line) throws -> TensorRecord {
            try Fixtures.ref(records, "ledits.\(name).\(field)", file: file, line: line)
        }

        func tensor(_ field: String) throws -> Tensor { try record(field).tensor() }
        var source: Tensor? { records["ledits.\(name).source"]?.tensor() }
        var userMask: Tensor? { records["ledits.\(name).user_mask"]?.tensor() }
    }

    struct Model {
        let key: String
        let folder: ModelFolder
        let unet: UNet2DCondition
        let cases: [Case]
    }

    nonisolated(unsafe) static var cache: [String: Model] = [:]

    static func model(_ key: String) throws -> Model {
        if let m = cache[key] { return m }
        let refs = try Fixtures.records("\(key)/ref/ledits.tensor")
        let folder = try Fixtures.model(key)
        var names: [String] = []
        for r in refs.values where r.name.hasSuffix(".latents") {
            names.append(String(r.name.dropFirst("ledits.".count).dropLast(".latents".count)))
        }
        let cases = try names.sorted().map { try parseCase(key, $0, refs) }
        XCTAssertEqual(cases.count, 7, "\(key): the fixture's cases")
        let m = Model(key: key, folder: folder, unet: try UNet2DCondition(folder: folder), cases: cases)
        cache[key] = m
        return m
    }

    /// The case's arguments from its records' args_json (diffusers' invert and __call__ kwargs).
    static func parseCase(_ model: String, _ name: String, _ refs: [String: TensorRecord]) throws -> Case {
        let latents = try Fixtures.ref(refs, "ledits.\(name).latents")
        let meta = latents.metadata
        let args = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(try XCTUnwrap(meta["args_json"]).utf8)) as? [String: Any])
        let inv = try XCTUnwrap(args["invert"] as? [String: Any]), call = try XCTUnwrap(args["call"] as? [String: Any])
        let prompts = try XCTUnwrap(call["editing_prompt"] as? [String])
        let c = prompts.count
        func list<T>(_ key: String, _ def: T) -> [T] {
            if let l = call[key] as? [Any] { return l.map { $0 as! T } }
            if let v = call[key], !(v is NSNull) { return Array(repeating: v as! T, count: c) }
            return Array(repeating: def, count: c)
        }
        let remove: [Bool] = list("reverse_editing_direction", false)
        let scale: [Double] = list("edit_guidance_scale", 5.0), threshold: [Double] = list("edit_threshold", 0.9)
        let warmup: [Int] = list("edit_warmup_steps", 0)
        let cooldown: [Int?] = (call["edit_cooldown_steps"] as? [Int])?.map { $0 } ?? (call["edit_cooldown_steps"] as? Int).map { Array(repeating: $0, count: c) }
            ?? Array(repeating: nil, count: c)
        let intersect = call["use_intersect_mask"] as? Bool ?? true
        let cross = call["use_cross_attn_mask"] as? Bool ?? false
        let mode: LEditsMaskMode = intersect ? .intersect : (cross ? .attention : .noise)
        let concepts = (0..<c).map { k in
            EditConcept(remove: remove[k], scale: Float(scale[k]), threshold: Float(threshold[k]), warmup: warmup[k], cooldown: cooldown[k])
        }
        return Case(model: model, name: name, records: refs, kind: try XCTUnwrap(SchedulerKind(rawValue: meta["scheduler"] ?? "")),
                    steps: try XCTUnwrap(inv["num_inversion_steps"] as? Int), skip: try XCTUnwrap(inv["skip"] as? Double),
                    seed: try XCTUnwrap(UInt64(meta["seed"] ?? "")), sourceGuidance: Float(try XCTUnwrap(inv["source_guidance_scale"] as? Double)),
                    concepts: concepts, mode: mode)
    }

    /// Our inversion of `x0` for the case.
    static func invert(_ m: Model, _ c: Case, x0: Tensor) throws -> EditFriendlyInversion.Result {
        var o = EditFriendlyInversion.Options()
        (o.steps, o.skip, o.guidance) = (c.steps, c.skip, c.sourceGuidance)
        var inv = EditFriendlyInversion(unet: m.unet, scheduler: try LEditsScheduler(c.kind, folder: m.folder), options: o)
        return try inv.invert(x0: x0, source: c.source, negative: try c.tensor("uncond"), generator: TorchGenerator(seed: c.seed))
    }

    /// Our edit of x_T with the noise maps for the case.
    static func edit(_ m: Model, _ c: Case, start: Tensor, noise: Tensor, timesteps: [Int], total: Int) throws -> LEditsDenoising.Result {
        var o = LEditsDenoising.Options()
        (o.concepts, o.mode) = (c.concepts, c.mode)
        let h = start.shape[2], w = start.shape[3]
        let grid = c.mode.usesAttention ? try LEditsDenoising.attentionGrid(nil, unet: m.unet, latentHeight: h, latentWidth: w) : nil
        var d = LEditsDenoising(unet: m.unet, attentionGrid: grid, scheduler: try LEditsScheduler(c.kind, folder: m.folder), options: o)
        return try d.denoise(start: start, noise: noise, timesteps: timesteps, totalSteps: total,
                             concepts: try c.tensor("concepts"), negative: try c.tensor("uncond"), userMask: c.userMask)
    }

    /// Our masks [T, C, 1, 4, h, w] against the fixture's [T, C, 4, h, w]: the count of cells that differ.
    @discardableResult
    static func compareMasks(_ ours: Tensor, _ c: Case, _ what: String) throws -> Int {
        let want = try c.record("masks")
        XCTAssertEqual(ours.count, want.count, "\(c.label) \(what): mask count")
        let w = want.floats()
        guard ours.count == w.count else { return w.count }
        let differ = zip(ours.data, w).filter { $0 != $1 }.count
        XCTAssertEqual(differ, 0, "\(c.label) \(what): \(differ) of \(w.count) mask cells differ from diffusers' (min_relative_margin \(want.metadata["min_relative_margin"] ?? "?"))")
        return differ
    }

    func testSmoothingKernelMatchesDiffusers() throws {
        for key in Self.models {
            let k = try Fixtures.record("\(key)/ref/ledits.tensor", "ledits.smoothing.kernel").floats()
            XCTAssertEqual(AttentionMapSmoothing.kernel, k, "\(key): the 3×3 Gaussian")
        }
    }

    /// The schedule: int(N·(1 + skip)) steps with "leading" spacing, the last N.
    func testScheduleMatchesDiffusers() throws {
        for key in Self.models {
            let m = try Self.model(key)
            for c in m.cases {
                let (total, timesteps) = try LEditsScheduler.schedule(c.kind, folder: m.folder, steps: c.steps, skip: c.skip)
                let r = try c.record("timesteps")
                XCTAssertEqual(timesteps.map(Float.init), r.floats(), "\(c.label) timesteps")
                XCTAssertEqual("\(total)", r.metadata["total_steps"], "\(c.label) total steps")
            }
        }
    }

    /// The edit-friendly inversion from the fixture's x₀: x_T and the noise maps.
    func testInversionMatchesDiffusers() throws {
        for key in Self.models {
            let m = try Self.model(key)
            for c in m.cases {
                let r = try Self.invert(m, c, x0: try c.tensor("x0"))
                XCTAssertEqual(r.timesteps.map(Float.init), try c.record("timesteps").floats(), "\(c.label) timesteps")
                let s = assertClose(r.start.data, try c.record("start").floats(), atol: Self.stackTolerance, "\(c.label) x_T")
                XCTAssertEqual(r.noise.shape, try c.record("noise").shape, "\(c.label) noise shape")
                let z = assertClose(r.noise.data, try c.record("noise").floats(), atol: Self.stackTolerance, rtol: Self.stackTolerance, "\(c.label) noise maps")
                print("\(c.label) inversion: x_T max err \(s.maxAbsError), noise max err \(z.maxAbsError)")
            }
        }
    }

    /// The edit from the fixture's x_T and noise maps: the masks and the latents.
    func testEditMatchesDiffusers() throws {
        for key in Self.models {
            let m = try Self.model(key)
            for c in m.cases {
                let noise = try c.tensor("noise")
                let timesteps = try c.record("timesteps").floats().map { Int($0) }
                let total = Int(try XCTUnwrap(c.record("latents").metadata["total_steps"]))!
                let r = try Self.edit(m, c, start: try c.tensor("start"), noise: noise, timesteps: timesteps, total: total)
                let differ = try Self.compareMasks(r.masks, c, "edit")
                let l = assertClose(r.latents.data, try c.record("latents").floats(), atol: Self.latentTolerance, "\(c.label) edited latents")
                print("\(c.label) edit: latents max err \(l.maxAbsError), \(differ) mask cells differ")
            }
        }
    }

    /// The whole pipeline from cat.ppm: our posterior mean, inversion and edit, decoded to 8 bits.
    func testWholePipelineFromTheImageMatchesDiffusers() throws {
        for key in Self.models {
            let m = try Self.model(key)
            let vae = try AutoencoderKL(folder: m.folder)
            let image = try NetpbmImage.readAll(try ByteReader(path: Fixtures.path("\(key)/cat.ppm")))
            let (x, _) = try vae.inputTensor(image, fit: .exact)
            let sf = vae.config.scalingFactor
            let x0 = DiagonalGaussian(moments: try vae.makeEncoder().moments(x)).mean * sf
            let decoder = try vae.makeDecoder()
            for c in m.cases {
                let cx = assertClose(x0.data, try c.record("x0").floats(), atol: Self.fromImageTolerance, "\(c.label) x₀ (posterior mean)")
                let inv = try Self.invert(m, c, x0: x0)
                let r = try Self.edit(m, c, start: inv.start, noise: inv.noise, timesteps: inv.timesteps, total: inv.totalSteps)
                let differ = try Self.compareMasks(r.masks, c, "from the image")
                let cl = assertClose(r.latents.data, try c.record("latents").floats(), atol: Self.fromImageTolerance, "\(c.label) latents from the image")
                let decoded = decoder.decode(Tensor(shape: r.latents.shape, data: r.latents.data.map { $0 / sf }))
                let (h, w) = (decoded.shape[2], decoded.shape[3])
                let u8 = try c.record("image")
                XCTAssertEqual(u8.shape, [h, w, 3], "\(c.label): image size")
                var levels = [Float](repeating: .nan, count: h * w * 3)
                for ch in 0..<3 { for i in 0..<(h * w) {
                    levels[i * 3 + ch] = Float(NetpbmImage.quantize(decoded.data[ch * h * w + i], maxval: 255))
                } }
                XCTAssertTrue(decoded.data.allSatisfy(\.isFinite), "\(c.label): non-finite decoded samples")
                let cu = assertClose(levels, u8.floats(), atol: 1, "\(c.label): 8-bit image within ±1")
                print("\(c.label) from the image: x₀ max err \(cx.maxAbsError), latents \(cl.maxAbsError), u8 worst \(cu.maxAbsError) levels, \(differ) mask cells differ")
            }
        }
    }
}
