import Foundation
import XCTest
@testable import DiffEditCore
#if canImport(Glibc)
import Glibc
import DiffEditTestSupport
#endif

/// Issue 23 (Reliability 3), weights and configs: no model file is waited on when it is not a
/// regular file; a safetensors header means what the reference parser (huggingface/safetensors'
/// `SafeTensors::deserialize`) says it means, or is refused; configs and sidecars share one strict
/// reader; a model is the same model through symbolic links; --model pointed at part of a model is
/// told which folder to give; an installed tool never takes another tree's model.
final class ReliabilityWeightsTests: XCTestCase {
    /// A tool run that cannot stall the suite: a child still running after 20 s (far longer than any
    /// of these refusals takes) is killed, and its status fails the assertion.
    func run(_ tool: String, _ args: [String], stdin: [UInt8] = [], environment: [String: String]? = nil) throws
        -> (status: Int32, out: [UInt8], err: String) {
        try runProcess(toolPath(tool), args, stdin: stdin, environment: environment, hangGuard: 20)
    }

    /// A fixture single-file checkpoint (with its sidecar unless `sidecar` is false), after `edit`.
    func singleFile(_ dir: URL, name: String = "model", sidecar: Bool = true,
                    edit: (inout [SingleFileFixtures.Tensor]) -> Void = { _ in }) throws -> String {
        try SingleFileFixtures.write("sd1", in: dir, name: name, sidecar: sidecar, edit: edit)
    }

    // MARK: 1. Nothing blocks on a path that is not a regular file

    enum Plant { case fifo, directory, link(String) }

    /// Every file a tool opens by name in a model — weights, configs, the index, the defaults, the
    /// sidecar, the tokenizer — replaced by a FIFO, a directory or a link to a device: refused in one
    /// line naming the file and what it is, never waited on (before: open(2) hung on the FIFO).
    func testNothingBlocksOnAFileThatIsNotRegular() throws {
        let sd1Ids = TensorStream.encode(TensorRecord(name: "ids", shape: [1, 3], int32s: [49406, 320, 49407]))
        // invert's inputs without a model fingerprint, so that the tool reaches each file of the model.
        let inputs = try temporaryDirectory(self)
        let emb = try Hostile.write(TensorStream.encode(Hostile.f32("embeddings", [1, 77, 32])), inputs, "emb.tensor")
        let posterior = Hostile.stream([Hostile.f32("posterior.mean", [1, 4, 8, 8]), Hostile.f32("posterior.std", [1, 4, 8, 8])])
        func args(_ tool: String, _ model: String) -> ([String], [UInt8]) {
            switch tool {
            case "invert": return (["--model", model, "--prompt", emb, "--negative", emb, "--steps", "2"], posterior)
            case "vae-encode": return (["--model", model, Fixtures.path("sd1/cat.ppm")], [])
            case "encode-text": return (["--model", model], sd1Ids)
            case "unet-bench": return (["--model", model, "--height", "8", "--width", "8", "--runs", "1"], [])
            default: return (["--model", model, "a cat"], [])
            }
        }
        let members: [(String, String, Plant, String)] = [
            // (file in the model, tool that opens it, what is planted, word of the refusal)
            ("model.safetensors", "tokenize", .fifo, "FIFO"),                      // a single file
            ("model.diffedit.json", "tokenize", .fifo, "FIFO"),                    // its sidecar
            ("zero.safetensors", "tokenize", .link("/dev/zero"), "character device"),
            ("unet/diffusion_pytorch_model.safetensors", "invert", .fifo, "FIFO"),
            ("unet/config.json", "invert", .fifo, "FIFO"),
            ("scheduler/scheduler_config.json", "invert", .fifo, "FIFO"),
            ("model_index.json", "invert", .fifo, "FIFO"),
            ("diffedit_defaults.json", "invert", .fifo, "FIFO"),
            ("vae/config.json", "vae-encode", .fifo, "FIFO"),
            ("vae/diffusion_pytorch_model.safetensors", "vae-encode", .directory, "directory"),
            ("text_encoder/model.safetensors", "encode-text", .fifo, "FIFO"),
            ("text_encoder/config.json", "encode-text", .link("/dev/null"), "character device"),
            ("tokenizer/vocab.json", "tokenize", .fifo, "FIFO"),
            ("unet/diffusion_pytorch_model.safetensors", "unet-bench", .link("/dev/zero"), "character device"),
            ("model_index.json", "tokenize", .directory, "directory"),
        ]
        for (member, tool, plant, word) in members {
            let dir = try temporaryDirectory(self)
            let single = member.hasSuffix("safetensors") && !member.contains("/") || member.hasSuffix(".diffedit.json")
            let model: String
            if single {
                model = dir.path + "/" + (member.hasSuffix(".diffedit.json") ? "model.safetensors" : member)
            } else {
                model = try Hostile.modelCopy(dir).path
            }
            if member.hasSuffix(".diffedit.json") { _ = try singleFile(dir) }
            let target = single ? dir.path + "/" + member : model + "/" + member
            try? FileManager.default.removeItem(atPath: target)
            switch plant {
            case .fifo: XCTAssertEqual(mkfifo(target, 0o644), 0, member)
            case .directory: try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
            case .link(let device): try FileManager.default.createSymbolicLink(atPath: target, withDestinationPath: device)
            }
            let (a, stdin) = args(tool, model)
            let r = try run(tool, a, stdin: stdin)
            assertRefused(r, tool: tool, contains: [(member as NSString).lastPathComponent, word])
            XCTAssertEqual(r.out, [], "\(member): nothing written")
        }
    }

    /// The fingerprint of a model whose configs are FIFOs returns at once: vae-encode, which reads
    /// neither, still works and records the model's identity. (Foundation's contents(atPath:),
    /// which it used, happens not to block here; InputFile makes sure of it.)
    func testFingerprintDoesNotWaitOnAFIFO() throws {
        let dir = try temporaryDirectory(self)
        let m = try Hostile.modelCopy(dir)
        for f in ["text_encoder/config.json", "scheduler/scheduler_config.json"] {
            try FileManager.default.removeItem(at: m.appendingPathComponent(f))
            XCTAssertEqual(mkfifo(m.appendingPathComponent(f).path, 0o644), 0)
        }
        // In a child, so that a regression hangs the child (killed after 20 s), not the suite.
        let r = try run("vae-encode", ["--model", m.path, Fixtures.path("sd1/cat.ppm")])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertNotNil(try TensorStreamReader(Self.reader(r.out)).readAll().first?.metadata["model.fingerprint"])
    }

    static func reader(_ bytes: [UInt8]) -> ByteReader { ReliabilityFuzzTests.reader(bytes) }

    // MARK: 4. A safetensors file is parsed as the reference parses it

    func open(_ bytes: [UInt8]) throws -> SafeTensorsFile {
        try SafeTensorsFile(path: Hostile.write(bytes, try temporaryDirectory(self), "w.safetensors"))
    }

    static func file(_ header: String, _ dataBytes: Int) -> [UInt8] {
        Hostile.safetensors(header: Array(header.utf8), data: (0..<dataBytes).map { UInt8(truncatingIfNeeded: $0) })
    }

    /// Each header the reference refuses is refused, naming what is wrong; well-formed files the
    /// reference reads (space-padded header, entries in any order, empty tensors) still load.
    func testHeadersAreReadAsTheReferenceReadsThem() throws {
        let a = #""a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#
        let cases: [(String, [UInt8], [String])] = [
            // A key twice, the second entry over appended bytes: a scanner checks one, a loader runs another.
            ("duplicate key", Self.file("{\(a),\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16), ["'a' appears twice"]),
            ("duplicate field", Self.file(#"{"a":{"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}}"#, 8), ["'dtype' appears twice"]),
            ("duplicate metadata", Self.file("{\"__metadata__\":{\"f\":\"pt\"},\"__metadata__\":{},\(a)}", 8), ["'__metadata__' appears twice"]),
            // Data offsets must tile the data section from 0 to its end (InvalidOffset, MetadataIncompleteBuffer).
            ("gap at the start", Self.file(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#, 16), ["'a'", "begins at data byte 8", "no tensor"]),
            ("gap between", Self.file("{\(a),\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}", 16), ["'b'", "'a' ends at 8", "no tensor"]),
            ("trailing bytes", Self.file("{\(a)}", 12), ["ends at byte 8 of the 12-byte", "trailing"]),
            ("trailing bytes, no tensors", Self.file("{}", 4), ["trailing"]),
            ("overlap", Self.file("{\(a),\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12), ["'a'", "'b'", "overlap"]),
            // The header is a JSON object from its first byte (InvalidHeaderStart).
            ("byte-order mark", Hostile.safetensors(header: [0xEF, 0xBB, 0xBF] + Array("{\(a)}".utf8), data: [UInt8](repeating: 0, count: 8)), ["byte-order mark"]),
            ("leading space", Self.file(" {\(a)}", 8), ["starts with", "not '{'"]),
            ("array", Self.file("[1]", 0), ["not a JSON object"]),
            // __metadata__ is an object of string → string.
            ("metadata number", Self.file("{\"__metadata__\":{\"format\":1},\(a)}", 8), ["__metadata__", "'format'", "not a string"]),
            ("metadata nested", Self.file("{\"__metadata__\":{\"x\":{\"y\":\"z\"}},\(a)}", 8), ["__metadata__", "'x'"]),
            ("metadata string", Self.file("{\"__metadata__\":\"pt\",\(a)}", 8), ["__metadata__", "not an object"]),
            // Byte count = product(shape) × dtype size (TensorInvalidInfo), without overflow (ValidationOverflow).
            ("bytes ≠ shape × size", Self.file(#"{"a":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}}"#, 8), ["'a'", "holds 8 bytes", "needs 6"]),
            ("size overflows", Self.file(#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#, 8), ["'a'", "overflows"]),
            ("negative dimension", Self.file(#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, 8), ["'a'", "dimension"]),
            ("three offsets", Self.file(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}}"#, 8), ["'a'", "data_offsets"]),
            // JSON as serde_json reads it: no leading zeros, no bare '+'.
            ("leading zero", Self.file(#"{"a":{"dtype":"F32","shape":[02],"data_offsets":[0,8]}}"#, 8), ["not valid JSON", "leading zero"]),
            ("plus sign", Self.file(#"{"a":{"dtype":"F32","shape":[+2],"data_offsets":[0,8]}}"#, 8), ["not valid JSON"]),
        ]
        for (what, bytes, fragments) in cases {
            assertToolError(try open(bytes), contains: ["corrupt safetensors header"] + fragments)
            _ = what
        }
        // Files the reference reads.
        var padded = Array("{\(a)}".utf8)
        while padded.count % 8 != 0 { padded.append(0x20) }
        padded += [UInt8](repeating: 0x20, count: 8)  // more than alignment needs: still only spaces
        let ok: [(String, [UInt8], [String])] = [
            ("space-padded header", Hostile.safetensors(header: padded, data: [UInt8](repeating: 0, count: 8)), ["a"]),
            ("entries out of offset order", Self.file("{\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[8,12]},\(a)}", 12), ["a", "b"]),
            ("empty tensors", Self.file("{\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]},\(a),\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,8]}}", 8), ["a", "e", "z"]),
            ("metadata and unknown fields", Self.file("{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"note\":[1]}}", 8), ["a"]),
            ("no tensors", Self.file("{}      ", 0), []),
        ]
        for (what, bytes, names) in ok {
            XCTAssertEqual(try open(bytes).names, names, what)
        }
        XCTAssertEqual(try open(ok[3].1).metadata, ["format": "pt"])
    }

    /// Through a tool: a checkpoint whose header lists a key twice, the second entry pointing at
    /// bytes appended after the data, is refused (it used to load the appended bytes, exit 0).
    func testToolRefusesACheckpointListingAKeyTwice() throws {
        let dir = try temporaryDirectory(self)
        let path = try singleFile(dir)
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        let n = Int(bytes.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self).littleEndian })
        let key = "model.diffusion_model.out.2.bias"
        let entry = try XCTUnwrap(try SafeTensorsFile(path: path).entries[key])
        let dataSize = bytes.count - 8 - n
        var header = String(decoding: bytes[8..<(8 + n)], as: UTF8.self).trimmingCharacters(in: .whitespaces)
        header.removeLast()  // the closing brace
        header += ",\"\(key)\":{\"dtype\":\"\(entry.dtype.rawValue)\",\"shape\":\(entry.shape),\"data_offsets\":[\(dataSize),\(dataSize + entry.end - entry.begin)]}}"
        var h = Array(header.utf8)
        while h.count % 8 != 0 { h.append(0x20) }
        bytes = Hostile.safetensors(header: h, data: Array(bytes[(8 + n)...]) + [UInt8](repeating: 0x7F, count: entry.end - entry.begin))
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        assertRefused(try run("unet-bench", ["--model", path, "--height", "8", "--width", "8", "--runs", "1"]), tool: "unet-bench",
                      contains: [path, "'\(key)' appears twice"])
    }

    // MARK: Should-fix: configs and sidecars, one strict reader

    /// The sidecar reads Python's bare -Infinity and Infinity as the folder configs do (it refused
    /// them as "not a JSON object").
    func testSidecarReadsPythonsNonFiniteTokens() throws {
        let dir = try temporaryDirectory(self)
        let path = try singleFile(dir, sidecar: false)
        let sidecar = #"{"scheduler": {"lambda_min_clipped": -Infinity, "_note": Infinity}, "text_encoder": {"num_attention_heads": 4}, "unet": {"attention_head_dim": 4, "norm_num_groups": 8}, "vae": {"norm_num_groups": 4}}"#
        try Data(sidecar.utf8).write(to: dir.appendingPathComponent("model.diffedit.json"))
        let config = try XCTUnwrap(try ModelFolder(root: path).singleFile).schedulerConfig()
        XCTAssertEqual(try config.doubleOrInfinity("lambda_min_clipped"), -.infinity)
        XCTAssertEqual(try config.doubleOrInfinity("_note"), .infinity)
        let r = try run("encode-text", ["--model", path], stdin: TensorStream.encode(TensorRecord(name: "ids", shape: [1, 3], int32s: [49406, 320, 49407])))
        XCTAssertEqual(r.status, 0, r.err)
    }

    /// A key given twice in a folder config, a sidecar or diffedit_defaults.json is refused by name
    /// (they were read last-wins, silently).
    func testRepeatedKeysAreRefusedByName() throws {
        /// The text of a JSON object with `"key": value,` put first (before the file's own key).
        func repeating(_ text: String, _ key: String, _ value: String) -> String {
            let open = text.firstIndex(of: "{")!
            return String(text[...open]) + "\"\(key)\": \(value), " + String(text[text.index(after: open)...])
        }
        let folderCases: [(String, String, String, String)] = [
            ("unet/config.json", "sample_size", "8", "unet-bench"),
            ("vae/config.json", "latent_channels", "4", "vae-encode"),
            ("scheduler/scheduler_config.json", "beta_end", "0.012", "invert"),
            ("text_encoder/config.json", "hidden_size", "32", "encode-text"),
            ("diffedit_defaults.json", "guidance", "3", "invert"),
        ]
        let inputs = try temporaryDirectory(self)
        let emb = try Hostile.write(TensorStream.encode(Hostile.f32("embeddings", [1, 77, 32])), inputs, "emb.tensor")
        let posterior = Hostile.stream([Hostile.f32("posterior.mean", [1, 4, 8, 8]), Hostile.f32("posterior.std", [1, 4, 8, 8])])
        for (file, key, value, tool) in folderCases {
            let m = try Hostile.modelCopy(try temporaryDirectory(self))
            let url = m.appendingPathComponent(file)
            let text = (try? String(contentsOf: url, encoding: .utf8)) ?? "{\"\(key)\": \(value)}"
            try Data(repeating(text, key, value).utf8).write(to: url)
            let r: (status: Int32, out: [UInt8], err: String)
            switch tool {
            case "invert": r = try run(tool, ["--model", m.path, "--prompt", emb, "--negative", emb, "--steps", "2"], stdin: posterior)
            case "vae-encode": r = try run(tool, ["--model", m.path, Fixtures.path("sd1/cat.ppm")])
            case "encode-text": r = try run(tool, ["--model", m.path], stdin: TensorStream.encode(TensorRecord(name: "ids", shape: [1, 3], int32s: [49406, 320, 49407])))
            default: r = try run(tool, ["--model", m.path, "--height", "8", "--width", "8", "--runs", "1"])
            }
            assertRefused(r, tool: tool, contains: [file, "'\(key)' appears twice"])
        }
        // The sidecar: a section twice, a key twice inside a section.
        let sidecars: [(String, String)] = [
            (#"{"unet": {"attention_head_dim": 4, "norm_num_groups": 8}, "text_encoder": {"num_attention_heads": 4}, "vae": {"norm_num_groups": 4}, "unet": {"attention_head_dim": 2, "norm_num_groups": 8}}"#, "'unet' appears twice"),
            (#"{"unet": {"attention_head_dim": 4, "norm_num_groups": 8, "norm_num_groups": 16}, "text_encoder": {"num_attention_heads": 4}, "vae": {"norm_num_groups": 4}}"#, "'norm_num_groups' appears twice"),
        ]
        for (text, fragment) in sidecars {
            let dir = try temporaryDirectory(self)
            let path = try singleFile(dir, sidecar: false)
            try Data(text.utf8).write(to: dir.appendingPathComponent("model.diffedit.json"))
            assertRefused(try run("unet-bench", ["--model", path, "--height", "8", "--width", "8", "--runs", "1"]), tool: "unet-bench",
                          contains: ["model.diffedit.json", fragment])
        }
    }

    /// X.SAFETENSORS finds X.diffedit.json (it looked for X.SAFETENSORS.diffedit.json and went on
    /// without one); two sidecars whose names differ only in case are refused.
    func testSidecarIsFoundWhateverTheCase() throws {
        let ids = TensorStream.encode(TensorRecord(name: "ids", shape: [1, 3], int32s: [49406, 320, 49407]))
        for (file, sidecar) in [("model.SAFETENSORS", "model.diffedit.json"), ("Model.Safetensors", "Model.DIFFEDIT.JSON")] {
            let dir = try temporaryDirectory(self)
            let written = try singleFile(dir, name: "tmp")
            try FileManager.default.moveItem(atPath: written, toPath: dir.appendingPathComponent(file).path)
            try FileManager.default.moveItem(at: dir.appendingPathComponent("tmp.diffedit.json"), to: dir.appendingPathComponent(sidecar))
            // The tiny fixture needs its sidecar's heads: without it encode-text is refused.
            let r = try run("encode-text", ["--model", dir.appendingPathComponent(file).path], stdin: ids)
            XCTAssertEqual(r.status, 0, "\(file) + \(sidecar): \(r.err)")
        }
        let dir = try temporaryDirectory(self)
        let path = try singleFile(dir)
        try FileManager.default.copyItem(at: dir.appendingPathComponent("model.diffedit.json"), to: dir.appendingPathComponent("MODEL.diffedit.json"))
        assertRefused(try run("tokenize", ["--model", path, "a cat"]), tool: "tokenize",
                      contains: ["MODEL.diffedit.json", "model.diffedit.json", "differ only in case"])
    }

    // MARK: Should-fix: one model through symbolic links

    /// A model folder in the Hugging Face cache layout (snapshots/<rev>/… → ../../blobs/<hash>) and a
    /// single file reached through a link have the fingerprint of a plain copy (the links' own sizes
    /// were measured, so intermediates were refused across them).
    func testSymlinkedModelIsTheSameModel() throws {
        let dir = try temporaryDirectory(self)
        let plain = try Hostile.modelCopy(dir)
        let cache = dir.appendingPathComponent("hub")
        let blobs = cache.appendingPathComponent("blobs"), snapshot = cache.appendingPathComponent("snapshots/0123abc")
        try FileManager.default.createDirectory(at: blobs, withIntermediateDirectories: true)
        let files = try XCTUnwrap(FileManager.default.enumerator(atPath: plain.path)).compactMap { $0 as? String }
        for (k, rel) in files.enumerated() {
            var isDir: ObjCBool = false
            FileManager.default.fileExists(atPath: plain.appendingPathComponent(rel).path, isDirectory: &isDir)
            if isDir.boolValue { continue }
            let blob = "blob\(k)"
            try FileManager.default.copyItem(at: plain.appendingPathComponent(rel), to: blobs.appendingPathComponent(blob))
            let link = snapshot.appendingPathComponent(rel)
            try FileManager.default.createDirectory(at: link.deletingLastPathComponent(), withIntermediateDirectories: true)
            let up = String(repeating: "../", count: rel.split(separator: "/").count + 1)
            try FileManager.default.createSymbolicLink(atPath: link.path, withDestinationPath: up + "blobs/" + blob)
        }
        let linked = try ModelFolder(root: snapshot.path)
        XCTAssertEqual(try linked.weights("unet").file.names, try ModelFolder(root: plain.path).weights("unet").file.names)
        XCTAssertEqual(DiffEditIO.modelFingerprint(linked), DiffEditIO.modelFingerprint(try ModelFolder(root: plain.path)))
        XCTAssertEqual(DiffEditSupport.schedulerFingerprint(linked), DiffEditSupport.schedulerFingerprint(try ModelFolder(root: plain.path)))
        // --model at a linked component file names the snapshot, not the blobs folder it links to.
        assertRefused(try run("tokenize", ["--model", snapshot.path + "/unet/diffusion_pytorch_model.safetensors", "a cat"]), tool: "tokenize",
                      contains: ["one component of a diffusers folder", "--model \(snapshot.path)"])
        // A single file and its sidecar, reached through links.
        let real = dir.appendingPathComponent("real"), links = dir.appendingPathComponent("links")
        try FileManager.default.createDirectory(at: real, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: links, withIntermediateDirectories: true)
        let file = try singleFile(real)
        for name in ["model.safetensors", "model.diffedit.json"] {
            try FileManager.default.createSymbolicLink(atPath: links.appendingPathComponent(name).path, withDestinationPath: "../real/" + name)
        }
        XCTAssertEqual(DiffEditIO.modelFingerprint(try ModelFolder(root: links.appendingPathComponent("model.safetensors").path)),
                       DiffEditIO.modelFingerprint(try ModelFolder(root: file)))
        // Through the tools: a posterior made with the copy is accepted by the linked model.
        let post = try run("vae-encode", ["--model", plain.path, Fixtures.path("sd1/cat.ppm")])
        XCTAssertEqual(post.status, 0, post.err)
        let decoded = try run("vae-decode", ["--model", snapshot.path], stdin: post.out)
        XCTAssertEqual(decoded.status, 0, decoded.err)
        XCTAssertFalse(decoded.err.contains("fingerprint"), decoded.err)
    }

    // MARK: Should-fix: LDM and diffusers names in one file

    /// A single file holding the LDM layout and diffusers-named weights beside it is refused by
    /// name (README: refused; it loaded silently, the diffusers-named weights ignored).
    func testMixedLayoutsInOneFileAreRefused() throws {
        for key in ["down_blocks.0.resnets.0.norm1.weight", "text_model.encoder.layers.0.mlp.fc1.bias",
                    "encoder.down_blocks.0.resnets.0.conv1.bias", "decoder.up_blocks.0.resnets.0.norm1.bias"] {
            let path = try singleFile(try temporaryDirectory(self)) { t in
                t.append(SingleFileFixtures.Tensor(key: key, dtype: "F32", shape: [1], bytes: [0, 0, 0, 0]))
            }
            assertRefused(try run("tokenize", ["--model", path, "a cat"]), tool: "tokenize", contains: ["mixes layouts", "'\(key)'", "model.diffusion_model"])
        }
    }

    // MARK: Should-fix: --model at part of a diffusers folder

    /// --model naming a component folder, the index or a file inside a diffusers folder says which
    /// folder to give (it suggested a file that was then refused, or reported a corrupt safetensors
    /// header and a re-download).
    func testModelPointedAtPartOfAFolderNamesTheFolder() throws {
        let m = Fixtures.path("sd1")
        let cases: [(String, [String])] = [
            (m + "/unet", ["unet folder", "point --model at the folder above it", "--model \(m)"]),
            (m + "/unet/", ["point --model at the folder above it", "--model \(m)"]),
            (m + "/scheduler", ["scheduler folder", "--model \(m)"]),
            (m + "/tokenizer", ["tokenizer folder", "--model \(m)"]),
            (m + "/model_index.json", ["index of the diffusers model folder", "--model \(m)"]),
            (m + "/unet/diffusion_pytorch_model.safetensors", ["one component of a diffusers folder", "point --model at the folder above it", "--model \(m)"]),
            (m + "/unet/config.json", ["one component of a diffusers folder", "--model \(m)"]),
            (m + "/tokenizer/vocab.json", ["--model \(m)"]),
        ]
        for (given, fragments) in cases {
            let r = try run("tokenize", ["--model", given, "a cat"])
            assertRefused(r, tool: "tokenize", contains: fragments)
            XCTAssertFalse(r.err.contains("re-download") || r.err.contains("corrupt"), r.err)
        }
        // A sidecar or another JSON file given as the model.
        let dir = try temporaryDirectory(self)
        let path = try singleFile(dir)
        assertRefused(try run("tokenize", ["--model", dir.appendingPathComponent("model.diffedit.json").path, "a cat"]), tool: "tokenize",
                      contains: ["is a sidecar", "--model \(path)"])
        let other = try Hostile.write(Array("{}".utf8), dir, "settings.json")
        assertRefused(try run("tokenize", ["--model", other, "a cat"]), tool: "tokenize", contains: ["JSON file, not a checkpoint"])
    }

    // MARK: Should-fix: an installed tool's model

    /// An installed tool (outside a SwiftPM .build folder) whose share/diffedit/model is missing says
    /// so in one line; it used to fall back silently to the demo model of the tree it was built in.
    func testInstalledToolWithoutItsModelSaysSo() throws {
        let prefix = try temporaryDirectory(self).appendingPathComponent("prefix")
        try FileManager.default.createDirectory(at: prefix.appendingPathComponent("bin"), withIntermediateDirectories: true)
        let tool = prefix.appendingPathComponent("bin/tokenize").path
        try FileManager.default.copyItem(atPath: toolPath("tokenize"), toPath: tool)
        var env = ProcessInfo.processInfo.environment
        env.removeValue(forKey: ModelFolder.environmentVariable)
        let r = try runProcess(tool, ["a cat"], stdin: [], environment: env, hangGuard: 20)
        assertRefused(r, tool: "tokenize", contains: ["installed", "\(prefix.path)/share/diffedit/model", "missing", "reinstall", "--model", "$DIFFEDIT_MODEL"])
        // With its model installed, it uses it.
        try FileManager.default.createDirectory(at: prefix.appendingPathComponent("share/diffedit"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: prefix.appendingPathComponent("share/diffedit/model").path, withDestinationPath: Fixtures.path("sd1"))
        let ok = try runProcess(tool, ["a cat"], stdin: [], environment: env, hangGuard: 20)
        XCTAssertEqual(ok.status, 0, ok.err)
        // --model and $DIFFEDIT_MODEL still work without it.
        try FileManager.default.removeItem(atPath: prefix.appendingPathComponent("share/diffedit/model").path)
        env[ModelFolder.environmentVariable] = Fixtures.path("sd1")
        XCTAssertEqual(try runProcess(tool, ["a cat"], stdin: [], environment: env, hangGuard: 20).status, 0)
    }
}
