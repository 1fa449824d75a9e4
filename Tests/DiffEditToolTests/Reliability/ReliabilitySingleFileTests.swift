import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// Hostile single-file checkpoints, made by editing the fixture files (SingleFileFixtures): missing
/// and mis-shaped weights, mixed layouts and models, pickles, truncated files, bad sidecars. Each is
/// refused by the tools with one line `tool: what — what to do` and exit status 1, never a trap.
final class ReliabilitySingleFileTests: XCTestCase {
    typealias Edit = (inout [SingleFileFixtures.Tensor]) -> Void

    /// A fixture file after `edit`, with its sidecar unless `sidecar` is false.
    func file(_ key: String = "sd1", sidecar: Bool = true, edit: @escaping Edit = { _ in }) throws -> String {
        try SingleFileFixtures.write(key, in: try temporaryDirectory(self), name: "model", sidecar: sidecar, edit: edit)
    }

    static func drop(_ key: String) -> Edit { { $0.removeAll { $0.key == key } } }

    /// Runs `tool` on the fixture cat / token ids as fits it.
    func run(_ tool: String, _ model: String) throws -> (status: Int32, out: [UInt8], err: String) {
        switch tool {
        case "encode-text":
            return try runTool(tool, ["--model", model],
                               stdin: TensorStream.encode(TensorRecord(name: "ids", shape: [1, 3], int32s: [49406, 320, 49407])))
        case "vae-encode": return try runTool(tool, ["--model", model, Fixtures.path("sd1/cat.ppm")])
        case "vae-decode":
            return try runTool(tool, ["--model", model], stdin: TensorStream.encode(Hostile.f32("latents", [1, 4, 8, 8])))
        case "unet-bench": return try runTool(tool, ["--model", model, "--height", "8", "--width", "8"])
        default: return try runTool(tool, ["--model", model, "a cat"])
        }
    }

    func testMissingWeightsAreNamedByTheirFileKey() throws {
        let cases: [(String, String)] = [
            ("unet-bench", "model.diffusion_model.input_blocks.1.0.in_layers.2.bias"),
            ("unet-bench", "model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn2.to_v.weight"),
            ("vae-decode", "first_stage_model.decoder.up.0.block.1.conv2.weight"),
            ("vae-encode", "first_stage_model.encoder.mid.attn_1.k.bias"),
            ("encode-text", "cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.weight"),
        ]
        for (tool, key) in cases {
            assertRefused(try run(tool, file(edit: Self.drop(key))), tool: tool, contains: ["missing weight '\(key)'", "incomplete"])
        }
        // SD 2.x: a fused q/k/v tensor.
        let sd2 = try file("sd2", edit: Self.drop("cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight"))
        assertRefused(try run("encode-text", sd2), tool: "encode-text",
                      contains: ["missing weight 'cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight'"])
        // Weights the architecture is read from.
        assertRefused(try run("unet-bench", file(edit: Self.drop("model.diffusion_model.out.2.weight"))), tool: "unet-bench",
                      contains: ["missing weight 'model.diffusion_model.out.2.weight'"])
        assertRefused(try run("vae-encode", file(edit: Self.drop("first_stage_model.decoder.conv_in.weight"))), tool: "vae-encode",
                      contains: ["first_stage_model.decoder.conv_in.weight"])
        // A whole network missing.
        let noVAE = try file { $0.removeAll { $0.key.hasPrefix("first_stage_model.") } }
        assertRefused(try run("vae-encode", noVAE), tool: "vae-encode", contains: ["holds no VAE"])
        XCTAssertEqual(try run("tokenize", noVAE).status, 0, "the other networks still work")
        let noText = try file { $0.removeAll { $0.key.hasPrefix("cond_stage_model.") } }
        assertRefused(try run("encode-text", noText), tool: "encode-text", contains: ["holds no text encoder"])
        let noUNet = try file { $0.removeAll { $0.key.hasPrefix("model.diffusion_model.") } }
        assertRefused(try run("tokenize", noUNet), tool: "tokenize", contains: ["no model.diffusion_model"])
    }

    func testWrongShapesAreRefused() throws {
        func reshape(_ key: String, _ shape: [Int]) -> Edit {
            { t in if let i = t.firstIndex(where: { $0.key == key }) { t[i].shape = shape } }
        }
        // The same bytes, transposed shape: [32, 64] → [64, 32].
        let k = "model.diffusion_model.input_blocks.4.0.emb_layers.1.weight"
        assertRefused(try run("unet-bench", file(edit: reshape(k, [64, 32]))), tool: "unet-bench",
                      contains: ["weight '\(k)' has shape [64, 32]", "imply [32, 64]"])
        let v = "first_stage_model.encoder.down.1.block.0.conv2.weight"
        assertRefused(try run("vae-encode", file(edit: reshape(v, [16, 144, 1, 1]))), tool: "vae-encode", contains: ["'\(v)' has shape [16, 144, 1, 1]"])
        // A fused q/k/v tensor whose rows do not split in three.
        let f = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
        assertRefused(try run("encode-text", file("sd2", edit: reshape(f, [40, 120]))), tool: "encode-text", contains: ["'\(f)' has shape [40, 120]"])
        // Shapes the architecture is read from.
        assertRefused(try run("unet-bench", file(edit: reshape("model.diffusion_model.input_blocks.0.0.weight", [16, 36]))), tool: "unet-bench",
                      contains: ["input_blocks.0.0.weight' has shape [16, 36], expected 4"])
        // A different resnet count in one level.
        let extra = try file { t in
            let level = t.filter { $0.key.hasPrefix("first_stage_model.encoder.down.2.block.0.") }
            t += level.map { var c = $0; c.key = c.key.replacingOccurrences(of: "block.0.", with: "block.1."); return c }
        }
        assertRefused(try run("vae-encode", extra), tool: "vae-encode", contains: ["resnets"])
        // A UNet whose output blocks do not match its input blocks.
        let fewer = try file { $0.removeAll { $0.key.hasPrefix("model.diffusion_model.output_blocks.8.") } }
        assertRefused(try run("unet-bench", fewer), tool: "unet-bench", contains: ["fewer output blocks"])
    }

    func testMixedLayoutsAndModelsAreRefused() throws {
        let sd2 = try SingleFileFixtures.tensors("sd2")
        // Both text encoders.
        let both = try file { $0 += sd2.filter { $0.key.hasPrefix("cond_stage_model.model.") } }
        assertRefused(try run("tokenize", both), tool: "tokenize", contains: ["both an SD 1.x text encoder", "mixes two models"])
        // sd1's UNet with sd2's text encoder (40 wide, the UNet reads 32).
        let swapped = try file { t in
            t.removeAll { $0.key.hasPrefix("cond_stage_model.") }
            t += sd2.filter { $0.key.hasPrefix("cond_stage_model.") }
        }
        assertRefused(try run("encode-text", swapped), tool: "encode-text", contains: ["mixes models", "40 wide", "reads 32"])
        // diffusers names inside the LDM prefixes.
        let renamed = try file { t in
            if let i = t.firstIndex(where: { $0.key == "model.diffusion_model.input_blocks.1.0.in_layers.0.weight" }) {
                t.append(SingleFileFixtures.Tensor(key: "model.diffusion_model.down_blocks.0.resnets.0.norm1.weight",
                                                   dtype: t[i].dtype, shape: t[i].shape, bytes: t[i].bytes))
            }
        }
        assertRefused(try run("unet-bench", renamed), tool: "unet-bench", contains: ["mixes layouts", "down_blocks.0.resnets.0.norm1.weight"])
        let vaeRenamed = try file { t in
            for i in t.indices where t[i].key.hasPrefix("first_stage_model.encoder.down.0.") {
                t[i].key = t[i].key.replacingOccurrences(of: "encoder.down.0.block.", with: "encoder.down_blocks.0.resnets.")
            }
        }
        assertRefused(try run("vae-encode", vaeRenamed), tool: "vae-encode", contains: ["mixes layouts"])
        // An SDXL file, a diffusers component, a LoRA.
        let sdxl = try file { t in t.append(SingleFileFixtures.Tensor(key: "conditioner.embedders.0.transformer.text_model.final_layer_norm.bias", dtype: "F32", shape: [1], bytes: [0, 0, 0, 0])) }
        assertRefused(try run("tokenize", sdxl), tool: "tokenize", contains: ["SDXL"])
        assertRefused(try run("unet-bench", Fixtures.path("sd1/unet/diffusion_pytorch_model.safetensors")), tool: "unet-bench",
                      contains: ["one component of a diffusers folder", "point --model at the folder"])
        let lora = try Hostile.write(SingleFileFixtures.safetensors([.init(key: "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", dtype: "F32", shape: [1], bytes: [0, 0, 0, 0])]),
                                     try temporaryDirectory(self), "lora.safetensors")
        assertRefused(try run("tokenize", lora), tool: "tokenize", contains: ["LoRA"])
    }

    func testPicklesAreRefusedWithTheConversion() throws {
        let dir = try temporaryDirectory(self)
        let zip = try Hostile.write([0x50, 0x4B, 0x03, 0x04] + [UInt8](repeating: 0, count: 60), dir, "model.ckpt")
        let legacy = try Hostile.write([0x80, 0x02, 0x8A, 0x0A] + [UInt8](repeating: 0, count: 60), dir, "weights.safetensors")
        let named = try Hostile.write(Array("not even a pickle".utf8), dir, "model.pt")
        for (path, tool) in [(zip, "tokenize"), (legacy, "vae-encode"), (named, "invert")] {
            let r = tool == "invert" ? try runTool(tool, ["--model", path, "--prompt", "x"], stdin: try Hostile.posterior())
                                     : try run(tool, path)
            assertRefused(r, tool: tool, contains: ["pickle", "unpickling can run arbitrary code", "safetensors", "weights_only=True"])
        }
    }

    func testTruncatedAndCorruptFilesAreRefused() throws {
        let whole = try [UInt8](Data(contentsOf: URL(fileURLWithPath: SingleFileFixtures.path("sd1"))))
        let dir = try temporaryDirectory(self)
        for (name, bytes) in [("half", Array(whole.prefix(whole.count / 2))), ("header", Array(whole.prefix(100))),
                              ("tiny", Array(whole.prefix(5))), ("empty", [])] {
            let path = try Hostile.write(bytes, dir, "\(name).safetensors")
            let r = try run("tokenize", path)
            assertRefused(r, tool: "tokenize", contains: [path])
        }
        // A directory with one checkpoint in it: the message names the file to use.
        let folder = dir.appendingPathComponent("models")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        _ = try SingleFileFixtures.write("sd1", in: folder, name: "v1-5")
        assertRefused(try run("tokenize", folder.path), tool: "tokenize", contains: ["--model \(folder.path)/v1-5.safetensors"])
    }

    func testSidecarsAreChecked() throws {
        func withSidecar(_ text: String, key: String = "sd1") throws -> String {
            let path = try file(key, sidecar: false)
            try Data(text.utf8).write(to: URL(fileURLWithPath: path.replacingOccurrences(of: ".safetensors", with: ".diffedit.json")))
            return path
        }
        assertRefused(try run("tokenize", withSidecar("{not json")), tool: "tokenize", contains: ["model.diffedit.json is not valid JSON"])
        assertRefused(try run("tokenize", withSidecar("[1]")), tool: "tokenize", contains: ["not a JSON object"])
        assertRefused(try run("tokenize", withSidecar("{\"unet\": {\"block_out_channels\": [8, 8, 8]}}")), tool: "tokenize",
                      contains: ["unet.block_out_channels is read from the weights"])
        assertRefused(try run("tokenize", withSidecar("{\"defaults\": {}}")), tool: "tokenize", contains: ["unknown section 'defaults'"])
        assertRefused(try run("tokenize", withSidecar("{\"vae\": 3}")), tool: "tokenize", contains: ["'vae' is not a JSON object"])
        assertRefused(try run("encode-text", withSidecar("{\"text_encoder\": {\"num_hidden_layers\": 7, \"num_attention_heads\": 4}}")), tool: "encode-text",
                      contains: ["3 text transformer layers, fewer than the 7"])
        let badHeads = try withSidecar("{\"unet\": {\"attention_head_dim\": 3, \"norm_num_groups\": 8}, \"text_encoder\": {\"num_attention_heads\": 4}, \"vae\": {\"norm_num_groups\": 4}}")
        assertRefused(try run("unet-bench", badHeads), tool: "unet-bench", contains: ["unet.attention_head_dim [3, 3, 3] does not split the widths [16, 32, 32]"])
        let badPrediction = try withSidecar("{\"scheduler\": {\"prediction_type\": \"flow\"}, \"unet\": {\"attention_head_dim\": 4, \"norm_num_groups\": 8}, \"text_encoder\": {\"num_attention_heads\": 4}, \"vae\": {\"norm_num_groups\": 4}}")
        let emb = try Hostile.embeddingsFile(try temporaryDirectory(self), model: badPrediction)
        assertRefused(try runTool("invert", ["--model", badPrediction, "--prompt", emb], stdin: try Hostile.posterior(model: badPrediction)),
                      tool: "invert", contains: ["prediction_type 'flow'"])
        // Without its sidecar the tiny fixture cannot be read as Stable Diffusion (32 GroupNorm
        // groups do not split 16 channels; 32-wide text does not split into heads of 64).
        let bare = try file(sidecar: false)
        assertRefused(try run("unet-bench", bare), tool: "unet-bench", contains: ["32 GroupNorm groups", "norm_num_groups in model.diffedit.json"])
        assertRefused(try run("vae-encode", bare), tool: "vae-encode", contains: ["norm_num_groups in model.diffedit.json"])
        assertRefused(try run("encode-text", bare), tool: "encode-text", contains: ["model.diffedit.json", "num_attention_heads"])
    }

    /// An SD 2.x file whose sidecar does not say the prediction type works with a one-line note
    /// (nothing with --quiet).
    func testSD2WithoutPredictionTypeGetsANote() throws {
        let path = try file("sd2", sidecar: false)
        try Data("{\"unet\": {\"attention_head_dim\": [2, 4], \"norm_num_groups\": 16}, \"text_encoder\": {\"num_attention_heads\": 5}, \"vae\": {\"norm_num_groups\": 2}}".utf8)
            .write(to: URL(fileURLWithPath: path.replacingOccurrences(of: ".safetensors", with: ".diffedit.json")))
        let dir = try temporaryDirectory(self)
        let emb = try Hostile.embeddingsFile(dir, model: path)
        let post = try Hostile.posterior(model: path)
        let r = try runTool("invert", ["--model", path, "--prompt", emb, "--steps", "2"], stdin: post)
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.err.split(separator: "\n").count, 1, r.err)
        XCTAssertTrue(r.err.contains("SD 2.x checkpoint") && r.err.contains("v_prediction") && r.err.contains("model.diffedit.json"), r.err)
        let q = try runTool("invert", ["--model", path, "--prompt", emb, "--steps", "2", "--quiet"], stdin: post)
        XCTAssertEqual(q.status, 0, q.err)
        XCTAssertEqual(q.err, "")
    }
}
