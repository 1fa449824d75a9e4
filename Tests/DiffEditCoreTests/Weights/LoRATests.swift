import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// LoRA adapters against diffusers' load_lora_weights + set_adapters (Tests/Fixtures/lora/K/ref.tensor,
/// made by Tests/Reference/fixtures_lora.py): a diffusers/PEFT file (rank and alpha patterns, conv
/// LoRA on the resnets' 3×3 convs, rslora in sd2) and a kohya one (f16, `.alpha` per module), alone
/// and together at other scales; the text encoder's output and the UNet's, in both modes (low-rank
/// terms and merged weights), at the same tolerances as without adapters.
final class LoRATests: XCTestCase {
    static let settings = ["peft", "kohya", "both"]

    /// The --lora arguments a reference record names, as paths under Tests/Fixtures/lora.
    static func adapters(_ record: TensorRecord, mode: LoRASet.Mode) throws -> LoRASet {
        let json = try XCTUnwrap(record.metadata["lora_json"])
        let args = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String])
        XCTAssertFalse(args.isEmpty)
        return LoRASet(try args.map { try LoRASet.adapter(argument: Fixtures.path("lora/" + $0)) }, mode: mode)
    }

    static func folder(_ key: String, _ lora: LoRASet?) throws -> ModelFolder {
        var f = try Fixtures.model(key)
        f.lora = lora
        return f
    }

    func testTextEncoderMatchesDiffusers() throws {
        for key in ["sd1", "sd2"] {
            let refs = try Fixtures.records("lora/\(key)/ref.tensor")
            for setting in Self.settings {
                let want = try XCTUnwrap(refs["\(setting).text.last_hidden"])
                let prompts = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(try XCTUnwrap(want.metadata["prompts_json"]).utf8)) as? [String])
                let tokenizer = try Fixtures.tokenizer(key)
                let ids = prompts.flatMap { tokenizer.inputIDs($0) }
                for mode in LoRASet.Mode.allCases {
                    let encoder = try CLIPTextModel(folder: Self.folder(key, Self.adapters(want, mode: mode)))
                    let got = try encoder.encode(ids: ids, batch: prompts.count, length: ids.count / prompts.count)
                    let c = assertClose(got, want, atol: Tolerance.textEmbeddings, "\(key) \(setting) \(mode.rawValue) text encoder")
                    print("\(key) \(setting) \(mode.rawValue): text encoder max err \(c.maxAbsError)")
                }
            }
        }
    }

    func testUNetMatchesDiffusers() throws {
        for key in ["sd1", "sd2"] {
            let refs = try Fixtures.records("lora/\(key)/ref.tensor")
            let x = try XCTUnwrap(refs["unet.sample"]).tensor()
            let enc = try XCTUnwrap(refs["unet.encoder_hidden_states"]).tensor()
            let plain = try UNet2DCondition(folder: Fixtures.model(key)).forward(sample: x, timesteps: [500], encoderHiddenStates: enc)
            for setting in Self.settings {
                let want = try XCTUnwrap(refs["\(setting).unet.out"])
                // The adapters move the output far past the tolerance: the comparison can fail.
                XCTAssertGreaterThan(closeness(plain.data, want.floats(), atol: 0).maxAbsError, 0.1, "\(key) \(setting)")
                for mode in LoRASet.Mode.allCases {
                    let unet = try UNet2DCondition(folder: Self.folder(key, Self.adapters(want, mode: mode)))
                    let got = try unet.forward(sample: x, timesteps: [500], encoderHiddenStates: enc)
                    let c = assertClose(got, want, atol: UNetTests.tolerance, "\(key) \(setting) \(mode.rawValue) UNet")
                    print("\(key) \(setting) \(mode.rawValue): UNet max err \(c.maxAbsError)")
                }
            }
        }
    }

    func testFilesReadAsTheirLayouts() throws {
        let peft = try LoRAFile(path: Fixtures.path("lora/sd2/style-peft.safetensors"))
        XCTAssertEqual(peft.layout, .peft)
        let kohya = try LoRAFile(path: Fixtures.path("lora/sd1/detail-kohya.safetensors"))
        XCTAssertEqual(kohya.layout, .kohya)
        // rslora (sd2's UNet): s = 8/√4; the alpha pattern's module: 3/√4; the text encoder: 4/4.
        let unet = try XCTUnwrap(peft.modules[.unet])
        XCTAssertEqual(try XCTUnwrap(unet["down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"]).factor, 4)
        XCTAssertEqual(try XCTUnwrap(unet["mid_block_attentions_0_proj_out"]).factor, 1.5)
        XCTAssertEqual(try XCTUnwrap(unet["down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]).rank, 2)
        XCTAssertEqual(try XCTUnwrap(peft.modules[.textEncoder]?["encoder_layers_0_mlp_fc1"]).factor, 1)
        // kohya: alpha / rank, 4/8 in the UNet and 2/8 in the text encoder.
        XCTAssertEqual(try XCTUnwrap(kohya.modules[.unet]?["down_blocks_1_downsamplers_0_conv"]).factor, 0.5)
        XCTAssertEqual(try XCTUnwrap(kohya.modules[.textEncoder]?["encoder_layers_2_self_attn_q_proj"]).factor, 0.25)
        // Scales and fingerprints.
        let a = try LoRASet.adapter(argument: Fixtures.path("lora/sd1/detail-kohya.safetensors") + ":-0.4")
        XCTAssertEqual(a.scale, -0.4)
        XCTAssertEqual(try LoRASet.adapter(argument: Fixtures.path("lora/sd1/detail-kohya.safetensors")).scale, 1)
        let set1 = LoRASet([a]), set2 = LoRASet([try LoRASet.adapter(argument: Fixtures.path("lora/sd1/detail-kohya.safetensors") + ":0.4")])
        XCTAssertNotEqual(set1.fingerprint, set2.fingerprint)
        XCTAssertEqual(LoRASet().fingerprint, "none")
    }

    func testRefusals() throws {
        let dir = try temporaryDirectory(self)
        func refused(_ path: String, _ phrase: String, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertThrowsError(try LoRASet.adapter(argument: path), file: file, line: line) { e in
                XCTAssertTrue("\(e)".contains(phrase), "\(e)", file: file, line: line)
            }
        }
        refused(Fixtures.path("lora/sd1/style-peft.safetensors") + ":x", "is not a number")
        refused(Fixtures.path("lora/sd1/style-peft.safetensors") + ":40", "is not a number in -16…16")
        refused("", "names no file")
        let pickle = dir.appendingPathComponent("lora.pt").path
        FileManager.default.createFile(atPath: pickle, contents: Data([0x50, 0x4B, 0x03, 0x04, 0, 0]))
        refused(pickle, "PyTorch pickle")
        func file(_ name: String, _ tensors: [String: [Int]]) throws -> String {
            let url = dir.appendingPathComponent(name)
            try writeSafeTensors(url, tensors.sorted { $0.key < $1.key }.map { ($0.key, $0.value, [Float](repeating: 0.01, count: $0.value.reduce(1, *))) })
            return url.path
        }
        refused(try file("sdxl.safetensors", ["lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [2, 4]]), "SDXL")
        refused(try file("dora.safetensors", ["unet.a.lora_A.weight": [2, 4], "unet.a.lora_B.weight": [4, 2], "unet.a.lora_magnitude_vector": [4]]), "DoRA")
        refused(try file("half.safetensors", ["unet.a.lora_A.weight": [2, 4]]), "no matching lora_up/lora_B")
        refused(try file("rank.safetensors", ["unet.a.lora_A.weight": [2, 4], "unet.a.lora_B.weight": [4, 3]]), "rank-2")
        refused(try file("other.safetensors", ["transformer.a.lora_A.weight": [2, 4]]), "names neither unet")
        // A LoRA of the other fixture model: its modules have other shapes, or match no layer.
        var sd1 = try Fixtures.model("sd1")
        sd1.lora = LoRASet([try LoRASet.adapter(argument: Fixtures.path("lora/sd2/style-peft.safetensors"))])
        XCTAssertThrowsError(try UNet2DCondition(folder: sd1)) { e in
            XCTAssertTrue("\(e)".contains("the LoRA is for another model"), "\(e)")
        }
        XCTAssertThrowsError(try CLIPTextModel(folder: sd1)) { e in
            XCTAssertTrue("\(e)".contains("the LoRA is for another model"), "\(e)")
        }
    }
}
