import DiffEditCore
import Foundation
import XCTest
import DiffEditTestSupport

/// Broken and unsupported model folders, made by copying Tests/Fixtures/sd1 and editing it:
/// each must be refused with a ToolError naming the file and what to do, never a trap.
final class ReliabilityModelTests: XCTestCase {
    func folder(_ edit: (URL) throws -> Void) throws -> ModelFolder {
        let dir = try temporaryDirectory(self)
        let m = try Hostile.modelCopy(dir)
        try edit(m)
        return try ModelFolder(root: m.path)
    }

    func testMissingFiles() throws {
        let dir = try temporaryDirectory(self)
        let noIndex = try Hostile.modelCopy(dir)
        try FileManager.default.removeItem(at: noIndex.appendingPathComponent("model_index.json"))
        assertToolError(try ModelFolder(root: noIndex.path), contains: ["model_index.json"])
        assertToolError(try ModelFolder(root: dir.appendingPathComponent("nowhere").path), contains: ["does not exist"])

        let noUNetWeights = try folder { try FileManager.default.removeItem(at: $0.appendingPathComponent("unet/diffusion_pytorch_model.safetensors")) }
        assertToolError(try UNet2DCondition(folder: noUNetWeights), contains: ["unet", "no weights"])
        let noVAEConfig = try folder { try FileManager.default.removeItem(at: $0.appendingPathComponent("vae/config.json")) }
        assertToolError(try AutoencoderKL(folder: noVAEConfig), contains: ["vae/config.json"])
        let noVocab = try folder { m in
            for f in try FileManager.default.contentsOfDirectory(atPath: m.appendingPathComponent("tokenizer").path) {
                try FileManager.default.removeItem(at: m.appendingPathComponent("tokenizer/\(f)"))
            }
        }
        assertToolError(try CLIPTokenizer(folder: noVocab), contains: ["tokenizer"])
        let noScheduler = try folder { try FileManager.default.removeItem(at: $0.appendingPathComponent("scheduler/scheduler_config.json")) }
        assertToolError(try DDIMScheduler(folder: noScheduler), contains: ["scheduler"])
        // The tool prints it as one line.
        let r = try runTool("vae-encode", ["--model", noVAEConfig.root, Fixtures.path("sd1/cat.ppm")])
        assertRefused(r, tool: "vae-encode", contains: ["vae/config.json"])
    }

    func testConfigThatDoesNotMatchTheWeights() throws {
        let wider = try folder { m in
            try Hostile.editConfig(m.appendingPathComponent("unet/config.json")) { $0["block_out_channels"] = [32, 32, 32] }
        }
        assertToolError(try UNet2DCondition(folder: wider), contains: ["config and weights are from different models"])
        let vae = try folder { m in
            try Hostile.editConfig(m.appendingPathComponent("vae/config.json")) { $0["latent_channels"] = 8 }
        }
        assertToolError(try AutoencoderKL(folder: vae).makeEncoder(), contains: ["vae"])
        let text = try folder { m in
            try Hostile.editConfig(m.appendingPathComponent("text_encoder/config.json")) { $0["hidden_size"] = 48 }
        }
        assertToolError(try CLIPTextModel(folder: text), contains: ["text_encoder"])
    }

    /// Hostile config values: zero, negative and huge sizes are refused, never trap (found:
    /// norm_num_groups = 0 divided by zero, negative values crashed ranges).
    func testHostileConfigValues() throws {
        let edits: [(String, String, Any)] = [
            ("unet", "norm_num_groups", 0), ("unet", "norm_num_groups", -1), ("unet", "attention_head_dim", 0),
            ("unet", "layers_per_block", -3), ("unet", "block_out_channels", [16, -32, 32]),
            ("unet", "cross_attention_dim", 1e15),
            ("vae", "norm_num_groups", 0), ("vae", "block_out_channels", [-8, 8]), ("vae", "layers_per_block", -1),
            ("text_encoder", "num_attention_heads", 0), ("text_encoder", "hidden_size", -32),
            ("text_encoder", "num_hidden_layers", 1 << 40), ("text_encoder", "vocab_size", 0),
        ]
        for (component, key, value) in edits {
            let f = try folder { m in
                try Hostile.editConfig(m.appendingPathComponent("\(component)/config.json")) { $0[key] = value }
            }
            XCTAssertThrowsError(try {
                switch component {
                case "unet": _ = try UNet2DCondition(folder: f)
                case "vae": _ = try AutoencoderKL(folder: f).makeEncoder()
                default: _ = try CLIPTextModel(folder: f)
                }
            }(), "\(component).\(key) = \(value)") { e in
                XCTAssertTrue(e is ToolError, "\(component).\(key) = \(value): \(e)")
            }
        }
    }

    /// Scheduler configs are checked as strictly as UNet configs (issue 14, item 4): a schedule
    /// that is no noise schedule (beta_start 5, beta_end −1 gave all-NaN output with exit 0), a
    /// non-finite value, a clip range or steps offset out of range — each refused naming the
    /// file and the key, by both schedulers and through a tool, before any output.
    func testHostileSchedulerConfigValues() throws {
        let edits: [([String: Any], [String])] = [
            (["beta_start": 5.0, "beta_end": -1.0], ["beta_start 5.0", "between 0 and 1"]),
            (["beta_end": 1.0], ["beta_end 1.0"]),
            (["beta_start": 0.0], ["beta_start 0.0"]),
            (["beta_start": -0.001, "beta_schedule": "linear"], ["beta_start"]),
            (["beta_end": 1e300], ["beta_end"]),
            (["trained_betas": [Double](repeating: 0.01, count: 999) + [1.5]], ["trained_betas[999]"]),
            (["trained_betas": [Double](repeating: 0.01, count: 999) + [0]], ["trained_betas[999]"]),
            (["clip_sample_range": 0.0], ["clip_sample_range"]),
            (["clip_sample_range": -1.0], ["clip_sample_range"]),
            (["steps_offset": 1000], ["steps_offset 1000"]),
            (["num_train_timesteps": 0], ["num_train_timesteps"]),
            (["prediction_type": "flow"], ["prediction_type 'flow'"]),
            (["beta_schedule": "sigmoid"], ["beta_schedule 'sigmoid'"]),
            (["beta_start": "0.1"], ["beta_start", "a finite number"]),
            // ᾱ underflows to 0 in float32: every step would divide by √ᾱ = 0.
            (["beta_start": 0.9, "beta_end": 0.99, "beta_schedule": "linear", "num_train_timesteps": 1000], ["ᾱ reaches 0"]),
        ]
        for (edit, fragments) in edits {
            let f = try folder { m in
                try Hostile.editConfig(m.appendingPathComponent("scheduler/scheduler_config.json")) { c in
                    for (k, v) in edit { c[k] = v }
                }
            }
            assertToolError(try DDIMScheduler(folder: f), contains: ["scheduler/scheduler_config.json"] + fragments)
            assertToolError(try DDIMInverseScheduler(folder: f), contains: ["scheduler/scheduler_config.json"] + fragments)
        }
        // Through a tool: one line, nothing written.
        let f = try folder { m in
            try Hostile.editConfig(m.appendingPathComponent("scheduler/scheduler_config.json")) { $0["beta_start"] = 5.0; $0["beta_end"] = -1.0 }
        }
        let dir = try temporaryDirectory(self)
        let emb = try Hostile.embeddingsFile(dir, model: f.root)
        let post = try runTool("vae-encode", ["--model", f.root, Fixtures.path("sd1/cat.ppm")]).out
        for (tool, args) in [("invert", ["--prompt", emb]), ("noise-diff-mask", ["--source", emb, "--target", emb])] {
            let r = try runTool(tool, ["--model", f.root, "--steps", "4"] + args, stdin: post)
            assertRefused(r, tool: tool, contains: ["beta_start 5.0"])
            XCTAssertEqual(r.out, [])
        }
        // A steps_offset that fits the config but not this many steps: timestep 1000 of 1000.
        let offset = try folder { m in
            try Hostile.editConfig(m.appendingPathComponent("scheduler/scheduler_config.json")) { $0["steps_offset"] = 1 }
        }
        var s = try DDIMInverseScheduler(folder: offset)
        assertToolError(try s.setTimesteps(1000), contains: ["steps_offset 1", "timestep 1000"])
        var d = try DDIMScheduler(folder: offset)
        assertToolError(try d.setTimesteps(1000), contains: ["steps_offset 1", "timestep 1000"])
        XCTAssertNoThrow(try d.setTimesteps(50))
    }

    func testUnsupportedArchitecturesAreNamed() throws {
        let sdxl = try folder { m in
            try Hostile.editConfig(m.appendingPathComponent("unet/config.json")) {
                $0["addition_embed_type"] = "text_time"
                $0["addition_time_embed_dim"] = 256
            }
        }
        assertToolError(try UNet2DCondition(folder: sdxl), contains: ["addition_embed_type", "not supported"])
        let inpaint = try folder { m in
            try Hostile.editConfig(m.appendingPathComponent("unet/config.json")) { $0["in_channels"] = 9 }
        }
        assertToolError(try UNet2DCondition(folder: inpaint), contains: ["in_channels = 9", "inpainting"])
        let r = try runTool("unet-bench", ["--model", inpaint.root, "--runs", "1", "--height", "8", "--width", "8"])
        assertRefused(r, tool: "unet-bench", contains: ["inpainting"])
    }

    // MARK: safetensors headers

    func open(_ bytes: [UInt8]) throws -> SafeTensorsFile {
        let dir = try temporaryDirectory(self)
        return try SafeTensorsFile(path: Hostile.write(bytes, dir, "w.safetensors"))
    }

    func header(_ json: String) -> [UInt8] { Array(json.utf8) }

    func testHostileSafeTensorsHeaders() throws {
        let entry = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
        let ok = Hostile.safetensors(header: header(entry), data: [UInt8](repeating: 0, count: 8))
        XCTAssertEqual(try open(ok).names, ["a"])
        let cases: [(String, [UInt8], String)] = [
            ("short file", [1, 2, 3], "too short"),
            ("length past EOF", Hostile.safetensors(header: header(entry), data: [], declaredLength: 1 << 40), "past the end"),
            ("overlapping", Hostile.safetensors(header: header(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#), data: [UInt8](repeating: 0, count: 12)), "overlap"),
            ("out of range", Hostile.safetensors(header: header(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,80]}}"#), data: [UInt8](repeating: 0, count: 8)), "runs past"),
            ("negative offset", Hostile.safetensors(header: header(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}}"#), data: [UInt8](repeating: 0, count: 8)), "data_offsets"),
            ("shape × dtype ≠ bytes", Hostile.safetensors(header: header(#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#), data: [UInt8](repeating: 0, count: 8)), "needs 12"),
            ("huge shape", Hostile.safetensors(header: header(#"{"a":{"dtype":"F32","shape":[1099511627775,1099511627775],"data_offsets":[0,8]}}"#), data: [UInt8](repeating: 0, count: 8)), "shape"),
            ("fractional dim", Hostile.safetensors(header: header(#"{"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}}"#), data: [UInt8](repeating: 0, count: 8)), "dimension"),
            ("non-UTF-8 JSON", Hostile.safetensors(header: [0x7B, 0x22, 0xFF, 0xFE, 0x22, 0x3A, 0x31, 0x7D], data: []), "UTF-8"),
            ("not JSON", Hostile.safetensors(header: header("{not json"), data: []), "JSON"),
            ("not an object", Hostile.safetensors(header: header("[1,2]"), data: []), "object"),
            ("unknown dtype", Hostile.safetensors(header: header(#"{"a":{"dtype":"F8","shape":[2],"data_offsets":[0,2]}}"#), data: [0, 0]), "dtype"),
        ]
        for (what, bytes, fragment) in cases {
            assertToolError(try open(bytes), contains: [fragment])
            _ = what
        }
    }

    /// A 100 MB+ header is refused by its declared length, before anything is read or parsed
    /// (the file is sparse, so the test stays cheap).
    func testHundredMegabyteHeaderIsRefusedBeforeParsing() throws {
        let dir = try temporaryDirectory(self)
        let path = dir.appendingPathComponent("big.safetensors").path
        let declared = UInt64(SafeTensorsFile.maxHeaderBytes + 1)
        var bytes = [UInt8]()
        withUnsafeBytes(of: declared.littleEndian) { bytes += $0 }
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        let h = FileHandle(forWritingAtPath: path)!
        try h.truncate(atOffset: declared + 64)
        try h.close()
        // "past the limit" is the declared-length check's message: the refusal came from the
        // 8-byte length, not from reading or parsing the header (no timing assertion needed).
        assertToolError(try SafeTensorsFile(path: path), contains: ["past the limit"])
    }

    /// A model folder whose weights file is hostile, through a tool: one line, exit 1.
    func testToolWithHostileWeights() throws {
        let dir = try temporaryDirectory(self)
        let m = try Hostile.modelCopy(dir)
        try Data(Hostile.safetensors(header: header("{"), data: [])).write(to: m.appendingPathComponent("vae/diffusion_pytorch_model.safetensors"))
        let r = try runTool("vae-encode", ["--model", m.path, Fixtures.path("sd1/cat.ppm")])
        assertRefused(r, tool: "vae-encode", contains: ["corrupt safetensors header"])
    }
}
