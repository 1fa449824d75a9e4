import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// Single-file checkpoints in the original LDM layout (SingleFileCheckpoint): the fixture pipelines
/// written as one file each (SingleFileFixtures; diffusers' from_single_file loads the same file to
/// the folder's weights, checked by Tests/Reference/fixtures_single_file.py) give every stage the
/// folder's numbers, checked against the same diffusers references at the same tolerances by the
/// same checks the folder tests run. The full-size SD 1.5 and 2.1 key sets (no weights) check the
/// architecture inference and the name mapping at real size.
final class SingleFileCheckpointTests: XCTestCase {
    static let pipelines = ["sd1", "sd2"]

    func model(_ key: String) throws -> ModelFolder { try Fixtures.model(key, singleFile: true) }

    // MARK: The file holds the folder's model

    /// Every weight of the folder is seen through the file's name view with the same dtype and the
    /// same bytes (one 1×1-conv shape aside: LDM's VAE attention projections), and the inferred
    /// configs plus the sidecar parse to the folder's configs.
    func testFileExposesTheFolderWeightsAndConfigs() throws {
        for key in Self.pipelines {
            let file = try model(key), folder = try Fixtures.model(key)
            XCTAssertNotNil(file.singleFile, key)
            XCTAssertEqual(file.singleFile?.family, key == "sd1" ? .sd1 : .sd2)
            for component in ["unet", "vae", "text_encoder"] {
                let want = try folder.weights(component), got = try file.weights(component)
                XCTAssertTrue(got.file === file.singleFile!.file, "\(key) \(component): one mapping for the whole checkpoint")
                XCTAssertFalse(want.file.entries.isEmpty)
                for (name, e) in want.file.entries {
                    guard let g = got.lookup(name) else { XCTFail("\(key) \(component): \(name) not found in the file"); continue }
                    XCTAssertEqual(g.dtype, e.dtype, "\(key) \(component) \(name)")
                    XCTAssertTrue(g.shape == e.shape || g.shape == e.shape + [1, 1], "\(key) \(component) \(name): \(g.shape) vs \(e.shape)")
                    XCTAssertTrue(got.file.rawBytes(g).elementsEqual(want.file.rawBytes(e)), "\(key) \(component) \(name): bytes differ")
                }
            }
            XCTAssertEqual(try CLIPTextConfig(file.config("text_encoder")), try CLIPTextConfig(folder.config("text_encoder")), key)
            XCTAssertEqual(try AutoencoderKLConfig(file.config("vae")), try AutoencoderKLConfig(folder.config("vae")), key)
            let u = try UNetConfig(file.config("unet")), v = try UNetConfig(folder.config("unet"))
            XCTAssertEqual(u.blockOutChannels, v.blockOutChannels, key)
            XCTAssertEqual(u.layersPerBlock, v.layersPerBlock, key)
            XCTAssertEqual(u.downBlockTypes, v.downBlockTypes, key)
            XCTAssertEqual(u.upBlockTypes, v.upBlockTypes, key)
            XCTAssertEqual(u.heads, v.heads, key)
            XCTAssertEqual(u.crossAttentionDim, v.crossAttentionDim, key)
            XCTAssertEqual(u.useLinearProjection, v.useLinearProjection, key)
            XCTAssertEqual(u.normNumGroups, v.normNumGroups, key)
            XCTAssertEqual(u.normEps, v.normEps, key)
            XCTAssertEqual(u.timeEmbeddingDim, v.timeEmbeddingDim, key)
            XCTAssertEqual([u.convInKernel, u.convOutKernel, u.inChannels, u.outChannels],
                           [v.convInKernel, v.convOutKernel, v.inChannels, v.outChannels], key)
            XCTAssertEqual([u.flipSinToCos], [v.flipSinToCos], key)
            XCTAssertEqual(u.freqShift, v.freqShift, key)
            // The scheduler: sd1's sidecar has no scheduler section, so this is the standard config.
            let a = try DDIMScheduler(config: file.schedulerConfig()), b = try DDIMScheduler(folder: folder)
            XCTAssertEqual(a.schedule.alphasCumprod, b.schedule.alphasCumprod, key)
            XCTAssertEqual([a.predictionType.rawValue, a.config.timestepSpacing.rawValue, "\(a.config.stepsOffset)", "\(a.config.clipSample)", "\(a.config.setAlphaToOne)"],
                           [b.predictionType.rawValue, b.config.timestepSpacing.rawValue, "\(b.config.stepsOffset)", "\(b.config.clipSample)", "\(b.config.setAlphaToOne)"], key)
        }
    }

    // MARK: Every stage from the file, against the folder's references

    func testTokenizerFromTheFileParity640Prompts() throws {
        let sd1 = try CLIPTokenizer(folder: model("sd1")), sd2 = try CLIPTokenizer(folder: model("sd2"))
        XCTAssertEqual([sd1.padToken, sd2.padToken], ["<|endoftext|>", "!"])
        XCTAssertEqual([sd1.padID, sd2.padID], [49407, 0])
        try TokenizerTests.checkPadded("sd1", sd1)
        try TokenizerTests.checkPadded("sd2", sd2)
    }

    func testTextEncoderFromTheFileMatchesTransformers() throws {
        for key in Self.pipelines {
            let label = "\(key) single file"
            try CLIPTextModelTests.checkLastHidden(key, model(key), label: label)
            let m = try CLIPTextModel(folder: model(key))
            try CLIPTextModelTests.checkClipSkip1(key, m, label: label)
            try CLIPTextModelTests.checkHiddenStates(key, m, label: label)
        }
    }

    /// SD 1.x files written before transformers 4 lack the text_model. level; a sidecar may stop
    /// the text encoder early (num_hidden_layers 2 of 3 is diffusers' clip_skip=1).
    func testTextEncoderNamingVariantsAndDepth() throws {
        let dir = try temporaryDirectory(self)
        let ids = try Fixtures.record("sd1/ref/text.tensor", "text.ids")
        let (tokenIDs, n, _) = try Fixtures.referenceIDs("sd1")
        let old = try SingleFileFixtures.write("sd1", in: dir, name: "old") { t in
            for i in t.indices { t[i].key = t[i].key.replacingOccurrences(of: "cond_stage_model.transformer.text_model.", with: "cond_stage_model.transformer.") }
        }
        let m = try CLIPTextModel(folder: ModelFolder(root: old))
        XCTAssertEqual(m.prefix, "")
        assertClose(try m.encode(ids: tokenIDs, batch: n, length: 77).data,
                    try Fixtures.record("sd1/ref/text.tensor", "text.last_hidden").floats(), atol: CLIPTextModelTests.atol, "sd1 file without text_model.")
        let shallow = try SingleFileFixtures.write("sd1", in: dir, name: "shallow", sidecar: false)
        var sidecar = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Fixtures.path("single-file/sd1.diffedit.json")))) as? [String: [String: Any]])
        sidecar["text_encoder"]?["num_hidden_layers"] = 2
        try JSONSerialization.data(withJSONObject: sidecar).write(to: dir.appendingPathComponent("shallow.diffedit.json"))
        let r = try runTool("encode-text", ["--model", shallow], stdin: TensorStream.encode(ids))
        XCTAssertEqual(r.status, 0, r.err)
        let got = try TensorStreamReader(ByteReader(fd: -1, label: "encode-text")).readAllFromBytes(r.out)[0]
        assertClose(got.floats(), try Fixtures.record("sd1/ref/text.tensor", "text.clip_skip1").floats(), atol: CLIPTextModelTests.atol,
                    "sd1 file, 2 of 3 text layers = clip_skip 1")
    }

    func testVAEFromTheFileMatchesDiffusers() throws {
        for key in Self.pipelines {
            let vae = try AutoencoderKL(folder: model(key)), refs = try Fixtures.records("\(key)/ref/vae.tensor")
            try VAETests.checkPosterior(vae, refs: refs, label: "\(key) single file")
            try VAETests.checkDecode(vae, refs: refs, label: "\(key) single file")
        }
    }

    func testUNetFromTheFileMatchesDiffusers() throws {
        for key in Self.pipelines {
            let unet = try UNet2DCondition(folder: model(key))
            try UNetTests.checkBlockOutputs(unet, fixture: key, label: "\(key) single file")
            try UNetTests.checkWholeUNet(unet, fixture: key, label: "\(key) single file")
        }
    }

    func testDiffEditStagesFromTheFileMatchDiffusers() throws {
        for key in Self.pipelines {
            let p = try DiffEditTests.pipeline(key, singleFile: true)
            try DiffEditTests.checkNoiseDiffMask(p)
            try DiffEditTests.checkInversion(p)
            try DiffEditTests.checkMaskedDenoising(p)
        }
    }

    // MARK: Full-size SD 1.5 and SD 2.1

    /// The LDM keys and shapes of the real checkpoints (Tests/Fixtures/single-file/sd15-shapes.json,
    /// sd21-shapes.json: made on torch's meta device, mapped back by diffusers' own converters) give
    /// the configs diffusers derives from the original LDM configs, and every weight diffusers'
    /// models have is found with its shape; every weight of the file is used (extras aside).
    func testRealSizeArchitecturesAreInferredAndMapped() throws {
        for name in ["sd15", "sd21"] {
            let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Fixtures.path("single-file/\(name)-shapes.json")))) as? [String: Any])
            let keys = try XCTUnwrap(json["ldm_keys"] as? [String: [Int]])
            let expected = try XCTUnwrap(json["expected"] as? [String: Any])
            let dir = try temporaryDirectory(self)
            let path = try Self.writeSparseCheckpoint(keys, to: dir.appendingPathComponent("\(name).safetensors"))
            let m = try ModelFolder(root: path)
            let sf = try XCTUnwrap(m.singleFile)
            XCTAssertEqual(sf.family, name == "sd15" ? .sd1 : .sd2, name)

            let unet = try UNetConfig(m.config("unet")), want = try XCTUnwrap(expected["unet"] as? [String: Any])
            XCTAssertEqual(unet.blockOutChannels, want["block_out_channels"] as? [Int], name)
            XCTAssertEqual(unet.layersPerBlock, [Int](repeating: want["layers_per_block"] as! Int, count: 4), name)
            XCTAssertEqual(unet.downBlockTypes, want["down_block_types"] as? [String], name)
            XCTAssertEqual(unet.upBlockTypes, want["up_block_types"] as? [String], name)
            XCTAssertEqual(unet.crossAttentionDim, [Int](repeating: want["cross_attention_dim"] as! Int, count: 4), name)
            let heads = (want["attention_head_dim"] as? [Int]) ?? [Int](repeating: want["attention_head_dim"] as! Int, count: 4)
            XCTAssertEqual(unet.heads, heads, "\(name) heads")
            XCTAssertEqual(unet.useLinearProjection, want["use_linear_projection"] as? Bool, name)
            XCTAssertEqual([unet.inChannels, unet.outChannels], [want["in_channels"] as! Int, want["out_channels"] as! Int])
            XCTAssertEqual(unet.normNumGroups, 32)

            let vae = try AutoencoderKLConfig(m.config("vae")), wantVAE = try XCTUnwrap(expected["vae"] as? [String: Any])
            XCTAssertEqual(vae.blockOutChannels, wantVAE["block_out_channels"] as? [Int], name)
            XCTAssertEqual(vae.layersPerBlock, wantVAE["layers_per_block"] as? Int, name)
            XCTAssertEqual(vae.latentChannels, wantVAE["latent_channels"] as? Int, name)
            XCTAssertEqual(Double(vae.scalingFactor), try XCTUnwrap(wantVAE["scaling_factor"] as? Double), accuracy: 1e-7)
            XCTAssertEqual(vae.normNumGroups, 32)

            let t = try XCTUnwrap(expected["text_encoder"] as? [String: Any])
            XCTAssertEqual(try CLIPTextConfig(m.config("text_encoder")), try CLIPTextConfig(JSONConfig(values: t, label: name)), name)

            // Every diffusers weight is found with its shape, and every file weight is used.
            let names = try XCTUnwrap(json["diffusers_names"] as? [String: [String: [Int]]])
            var used = Set<String>()
            for (component, shapes) in names {
                let store = try m.weights(component)
                // As CLIPTextModel asks: with transformers 4's text_model. level when the file has it.
                let level = component == "text_encoder" && store.contains("text_model.embeddings.token_embedding.weight") ? "text_model." : ""
                for (bare, shape) in shapes {
                    let n = level + bare
                    guard let e = store.lookup(n) else { XCTFail("\(name) \(component): \(n) (\(store.fileKey(n) ?? "no key")) not found"); continue }
                    XCTAssertTrue(e.shape == shape || e.shape == shape + [1, 1], "\(name) \(component) \(n): \(e.shape) vs \(shape)")
                    used.insert(e.name)
                }
            }
            let extras = Set(try XCTUnwrap(json["extra_keys"] as? [String]))
            let unused = Set(keys.keys).subtracting(used).subtracting(extras)
            // SD 2.x's last text block is in the file but not in its text encoder (which stops at the
            // penultimate block).
            XCTAssertEqual(unused.filter { !$0.hasPrefix("cond_stage_model.model.transformer.resblocks.23.") }.sorted(), [], name)
            XCTAssertEqual(unused.count, name == "sd21" ? 12 : 0, name)
            XCTAssertTrue(extras.isSubset(of: Set(keys.keys)) && !extras.isEmpty, name)

            // What the file cannot say: epsilon unless the sidecar says otherwise (with a note for SD 2.x).
            XCTAssertEqual(try DDIMScheduler(folder: m).predictionType, .epsilon)
            XCTAssertEqual(sf.predictionTypeNote != nil, name == "sd21", name)
            let wantPrediction = try XCTUnwrap(expected["prediction_type"] as? String)
            try Data("{\"scheduler\": {\"prediction_type\": \"\(wantPrediction)\"}}".utf8).write(to: URL(fileURLWithPath: sf.sidecarPath))
            let withSidecar = try ModelFolder(root: path)
            XCTAssertEqual(try DDIMScheduler(folder: withSidecar).predictionType.rawValue, wantPrediction, name)
            XCTAssertNil(withSidecar.singleFile?.predictionTypeNote)
            XCTAssertEqual(DiffEditSupport.schedulerFingerprint(withSidecar) == DiffEditSupport.schedulerFingerprint(m),
                           wantPrediction == "epsilon", "\(name): the scheduler's identity follows its config")
        }
    }

    /// A safetensors file of F16 tensors with these shapes whose data is a hole (a sparse file: no
    /// disk space, reads as zeros).
    static func writeSparseCheckpoint(_ shapes: [String: [Int]], to url: URL) throws -> String {
        var header: [String: Any] = [:]
        var offset = 0
        for (key, shape) in shapes.sorted(by: { $0.key < $1.key }) {
            let bytes = shape.reduce(1, *) * 2
            header[key] = ["dtype": "F16", "shape": shape, "data_offsets": [offset, offset + bytes]]
            offset += bytes
        }
        var json = [UInt8](try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]))
        while json.count % 8 != 0 { json.append(0x20) }
        var out = [UInt8]()
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out += $0 }
        try Data(out + json).write(to: url)
        let h = try FileHandle(forWritingTo: url)
        try h.truncate(atOffset: UInt64(8 + json.count + offset))
        try h.close()
        return url.path
    }
}
