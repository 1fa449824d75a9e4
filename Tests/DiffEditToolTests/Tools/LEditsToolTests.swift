import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// invert --method ledits and denoise --method ledits end to end: every fixture case of
/// Tests/Fixtures/{sd1,sd2}-ledits as a shell pipeline of the built tools (tokenize | encode-text
/// for the captions and concepts, vae-encode, invert, denoise, vae-decode) against diffusers'
/// LEditsPPPipelineStableDiffusion; each method refusing the other's stack and options; the
/// LEDITS++ options' one-line refusals; the `ledits` section of diffedit_defaults.json.
final class LEditsToolTests: XCTestCase {
    static let models = ["sd1-ledits", "sd2-ledits"]
    /// As LEditsParityTests' whole pipeline from the image (worst measured there 3.7e-5).
    static let latentTolerance = 4e-4

    static func run(_ script: String, in dir: URL, file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let r = try sh("set -e; cd '\(dir.path)'\n" + script)
        XCTAssertEqual(r.status, 0, "\(script)\n\(r.err)", file: file, line: line)
        return r.err
    }

    static func read(_ url: URL, _ name: String) throws -> TensorRecord {
        let all = try TensorStream.readAll(path: url.path)
        return try XCTUnwrap(all.first { $0.name == name }, "\(url.lastPathComponent) has no record \(name)")
    }

    /// The command lines of a fixture case, from its args_json: (invert's options, denoise's).
    static func options(_ refs: [String: TensorRecord], _ name: String, dir: URL) throws -> (source: String?, concepts: [String], invert: [String], denoise: [String]) {
        let latents = try Fixtures.ref(refs, "ledits.\(name).latents")
        let args = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(try XCTUnwrap(latents.metadata["args_json"]).utf8)) as? [String: Any])
        let inv = try XCTUnwrap(args["invert"] as? [String: Any]), call = try XCTUnwrap(args["call"] as? [String: Any])
        let source = inv["source_prompt"] as? String
        var invert = ["--method", "ledits", "--steps", "\(try XCTUnwrap(inv["num_inversion_steps"] as? Int))",
                      "--skip", "\(try XCTUnwrap(inv["skip"] as? Double))", "--seed", try XCTUnwrap(latents.metadata["seed"]),
                      "--scheduler", try XCTUnwrap(latents.metadata["scheduler"])]
        if let source, !source.isEmpty { invert += ["--prompt", "src.tensor", "--guidance", "\(try XCTUnwrap(inv["source_guidance_scale"] as? Double))"] }
        let concepts = try XCTUnwrap(call["editing_prompt"] as? [String])
        var denoise = ["--method", "ledits"]
        for k in concepts.indices { denoise += ["--edit", "c\(k).tensor"] }
        func list(_ key: String, _ option: String, _ show: (Any) -> String) {
            guard let v = call[key], !(v is NSNull) else { return }
            denoise += [option, (v as? [Any])?.map(show).joined(separator: ",") ?? show(v)]
        }
        list("reverse_editing_direction", "--edit-direction") { ($0 as! Bool) ? "remove" : "add" }
        list("edit_guidance_scale", "--edit-guidance") { "\($0 as! Double)" }
        list("edit_threshold", "--edit-threshold") { "\($0 as! Double)" }
        list("edit_warmup_steps", "--edit-warmup") { "\($0 as! Int)" }
        list("edit_cooldown_steps", "--edit-cooldown") { "\($0 as! Int)" }
        let intersect = call["use_intersect_mask"] as? Bool ?? true, cross = call["use_cross_attn_mask"] as? Bool ?? false
        if !intersect { denoise += ["--ledits-mask", cross ? "attention" : "noise"] }
        if let user = refs["ledits.\(name).user_mask"] {
            // The user mask as a tensor stream whose only record is a 0/1 mask [1, 1, h, w].
            let path = dir.appendingPathComponent("user.tensor").path
            try Data(TensorStream.encode(TensorRecord(name: RecordName.mask, tensor: user.tensor()))).write(to: URL(fileURLWithPath: path))
            denoise += ["--mask", "user.tensor"]
        }
        return (source.flatMap { $0.isEmpty ? nil : $0 }, concepts, invert, denoise)
    }

    /// Every fixture case through the tools: the masks identical, the latents close, the image
    /// within ±1 level.
    func testPipelineOfToolsMatchesDiffusers() throws {
        for key in Self.models {
            let refs = try Fixtures.records("\(key)/ref/ledits.tensor")
            let names = refs.keys.filter { $0.hasSuffix(".latents") }.map { String($0.dropFirst("ledits.".count).dropLast(".latents".count)) }.sorted()
            XCTAssertEqual(names.count, 7, "\(key): the fixture's cases")
            let model = Fixtures.path(key), cat = Fixtures.path("\(key)/cat.ppm")
            let m = "--model '\(model)'"
            for name in names {
                let dir = try temporaryDirectory(self)
                let o = try Self.options(refs, name, dir: dir)
                var script = "vae-encode \(m) < '\(cat)' > post.tensor\n"
                if let s = o.source { script += "tokenize \(m) '\(s)' | encode-text \(m) > src.tensor\n" }
                for (k, c) in o.concepts.enumerated() { script += "tokenize \(m) '\(c)' | encode-text \(m) > c\(k).tensor\n" }
                script += "invert \(m) \(o.invert.joined(separator: " ")) < post.tensor > stack.tensor\n"
                script += "denoise \(m) \(o.denoise.joined(separator: " ")) --masks-output masks.tensor < stack.tensor > edit.tensor\n"
                script += "vae-decode \(m) < edit.tensor > edit.ppm"
                let err = try Self.run(script, in: dir)
                XCTAssertEqual(err, "", "\(key) \(name): the tools write nothing on stderr without --progress")
                let label = "\(key) \(name) through the tools"
                // The stack: method, schedule and the noise maps of the pipeline.
                let start = try Self.read(dir.appendingPathComponent("stack.tensor"), RecordName.leditsStart)
                let noise = try Self.read(dir.appendingPathComponent("stack.tensor"), RecordName.leditsNoise)
                XCTAssertEqual(noise.metadata["method"], "ledits", label)
                XCTAssertEqual(noise.metadata["timesteps"], refs["ledits.\(name).noise"]?.metadata["timesteps"], "\(label): timesteps")
                XCTAssertEqual(noise.metadata["total_steps"], refs["ledits.\(name).noise"]?.metadata["total_steps"], "\(label): total steps")
                let cs = assertClose(start.floats(), try Fixtures.ref(refs, "ledits.\(name).start").floats(), atol: 1e-4, "\(label): x_T")
                // Our posterior mean (within 1e-5) is divided by the last DDIM step's σ ≈ 0.02 in the
                // noise maps, which reach |z| ≈ 40: relative to their magnitude (Reference/ledits-notes.md).
                let cz = assertClose(noise.floats(), try Fixtures.ref(refs, "ledits.\(name).noise").floats(), atol: 1e-4, rtol: 1e-4, "\(label): noise maps")
                // The masks: every cell as diffusers'; their union a 0/1 mask.
                let masks = try Self.read(dir.appendingPathComponent("masks.tensor"), "masks")
                let want = try Fixtures.ref(refs, "ledits.\(name).masks")
                XCTAssertEqual(masks.shape, want.shape, "\(label): masks shape")
                let differ = zip(masks.floats(), want.floats()).filter { $0 != $1 }.count
                XCTAssertEqual(differ, 0, "\(label): mask cells differ from diffusers'")
                let union = try Self.read(dir.appendingPathComponent("masks.tensor"), RecordName.mask)
                XCTAssertEqual(union.shape, [1, 1] + Array(want.shape.suffix(2)), "\(label): union mask shape")
                XCTAssertTrue(union.floats().allSatisfy { $0 == 0 || $0 == 1 }, "\(label): the union is a 0/1 mask")
                // The latents and the image.
                let latents = try Self.read(dir.appendingPathComponent("edit.tensor"), RecordName.latents)
                let cl = assertClose(latents.floats(), try Fixtures.ref(refs, "ledits.\(name).latents").floats(), atol: Self.latentTolerance, "\(label): latents")
                let image = try NetpbmImage.readAll(try ByteReader(path: dir.appendingPathComponent("edit.ppm").path))
                let u8 = try Fixtures.ref(refs, "ledits.\(name).image")
                XCTAssertEqual([image[0].height, image[0].width, image[0].depth], u8.shape, "\(label): image size")
                let levels = image[0].samples.map { ($0 * 255).rounded() }
                let cu = assertClose(levels, u8.floats(), atol: 1, "\(label): 8-bit image within ±1")
                print("\(label): x_T \(cs.maxAbsError), noise \(cz.maxAbsError), latents \(cl.maxAbsError), u8 worst \(cu.maxAbsError), \(differ) mask cells differ")
            }
        }
    }

    /// A stack made by one method is refused by the other's denoising, in one line naming the
    /// method to use; the stacks say which method made them.
    func testEachMethodRefusesTheOthersStack() throws {
        let dir = try temporaryDirectory(self)
        let model = Fixtures.path("sd1-ledits")
        let m = "--model '\(model)'"
        _ = try Self.run("""
            tokenize \(m) 'a cat' | encode-text \(m) > src.tensor
            vae-encode \(m) < '\(Fixtures.path("sd1-ledits/cat.ppm"))' > post.tensor
            invert \(m) --method ledits --steps 3 < post.tensor > ledits.tensor
            invert \(m) --prompt src.tensor --steps 3 < post.tensor > diffedit.tensor
            noise-diff-mask \(m) --source src.tensor --target src.tensor --steps 3 --maps 1 -q < post.tensor > mask.tensor
            """, in: dir)
        XCTAssertEqual(try Self.read(dir.appendingPathComponent("diffedit.tensor"), RecordName.inverted).metadata["method"], "diffedit")
        XCTAssertEqual(try Self.read(dir.appendingPathComponent("ledits.tensor"), RecordName.leditsStart).metadata["method"], "ledits")
        let d = dir.path
        let ledits = try runTool("denoise", ["--model", model, "--prompt", "\(d)/src.tensor", "--mask", "\(d)/mask.tensor", "\(d)/ledits.tensor"])
        assertRefused(ledits, tool: "denoise", contains: ["holds a LEDITS++ stack (invert --method ledits)", "--method ledits"])
        let diffedit = try runTool("denoise", ["--model", model, "--method", "ledits", "--edit", "\(d)/src.tensor", "\(d)/diffedit.tensor"])
        assertRefused(diffedit, tool: "denoise", contains: ["holds DiffEdit's inverted stack (invert --method diffedit)", "--method diffedit"])
        // Metadata alone says it too: DiffEdit's reading of a stack that says method=ledits.
        var rec = try Self.read(dir.appendingPathComponent("diffedit.tensor"), RecordName.inverted)
        rec.metadata["method"] = "ledits"
        assertToolError(try StackInfo.read(rec, folder: try Fixtures.model("sd1-ledits"), scheduler: nil, steps: nil, strength: nil),
                        contains: ["inverted for LEDITS++", "--method ledits"])
        // And LEDITS++'s reading of a noise record that does not say method=ledits.
        let start = try Self.read(dir.appendingPathComponent("ledits.tensor"), RecordName.leditsStart)
        var noise = try Self.read(dir.appendingPathComponent("ledits.tensor"), RecordName.leditsNoise)
        noise.metadata["method"] = "diffedit"
        assertToolError(try LEditsStack.read(start: start, noise: noise, folder: try Fixtures.model("sd1-ledits"), scheduler: nil, label: "stdin"),
                        contains: ["method=diffedit, not ledits"])
    }

    /// Bad LEDITS++ options and inputs: one line each, status 1 (64 for ArgumentParser's own).
    func testBadOptionsAreRefusedInOneLine() throws {
        let dir = try temporaryDirectory(self)
        let model = Fixtures.path("sd1-ledits")
        let m = "--model '\(model)'"
        _ = try Self.run("""
            tokenize \(m) 'a cat' | encode-text \(m) > a.tensor
            tokenize \(m) 'a dog' | encode-text \(m) > b.tensor
            tokenize \(m) 'a cat' 'a dog' | encode-text \(m) > two.tensor
            vae-encode \(m) < '\(Fixtures.path("sd1-ledits/cat.ppm"))' > post.tensor
            vae-encode \(m) --sample --seed 1 < '\(Fixtures.path("sd1-ledits/cat.ppm"))' > sample.tensor
            invert \(m) --method ledits --steps 3 < post.tensor > stack.tensor
            """, in: dir)
        let d = dir.path
        let edit = ["--model", model, "--method", "ledits", "--edit", "\(d)/a.tensor", "--edit", "\(d)/b.tensor", "\(d)/stack.tensor"]
        let cases: [(String, [String], [String])] = [
            // concept counts against the per-concept lists
            ("denoise", edit + ["--edit-direction", "add,remove,add"], ["--edit-direction lists 3 directions for 2 concepts"]),
            ("denoise", edit + ["--edit-guidance", "1,2,3"], ["--edit-guidance lists 3 values for 2 concepts"]),
            ("denoise", edit + ["--edit-warmup", "1,2,3"], ["--edit-warmup lists 3 values for 2 concepts"]),
            ("denoise", edit + ["--edit-direction", "up"], ["--edit-direction up is not a direction", "add or remove"]),
            // thresholds outside [0, 1], and other values outside their domains
            ("denoise", edit + ["--edit-threshold", "1.5"], ["--edit-threshold 1.5 is out of range", "a number from 0 to 1"]),
            ("denoise", edit + ["--edit-threshold", "0.5,-0.1"], ["--edit-threshold -0.1 is out of range"]),
            ("denoise", edit + ["--edit-guidance", "nan"], ["--edit-guidance nan is not a number"]),
            ("invert", ["--model", model, "--method", "ledits", "--skip", "1", "\(d)/post.tensor"], ["--skip 1 is out of range", "a number from 0, below 1"]),
            // the attention grid: a grid the UNet has no cross-attention at, and one not written HxW
            ("denoise", edit + ["--attention-grid", "3x3"], ["--attention-grid 3x3 has no up/down cross-attention", "8x8, 4x4, 2x2", "--ledits-mask noise"]),
            ("denoise", edit + ["--attention-grid", "2by2"], ["--attention-grid 2by2 is not a grid"]),
            ("denoise", edit + ["--attention-grid", "2x2", "--ledits-mask", "noise"], ["--ledits-mask noise does not read"]),
            // one concept per --edit
            ("denoise", ["--model", model, "--method", "ledits", "--edit", "\(d)/two.tensor", "\(d)/stack.tensor"], ["--edit", "holds 2 prompts"]),
            // the other method's options
            ("denoise", edit + ["--guidance", "3"], ["--guidance is DiffEdit's (--method diffedit)"]),
            ("denoise", edit + ["--prompt", "\(d)/a.tensor"], ["--prompt is DiffEdit's (--method diffedit)"]),
            ("denoise", ["--model", model, "--prompt", "\(d)/a.tensor", "--mask", "\(d)/a.tensor", "--edit-threshold", "0.5", "\(d)/stack.tensor"],
             ["--edit-threshold is LEDITS++'s (--method ledits)"]),
            ("invert", ["--model", model, "--method", "ledits", "--strength", "0.5", "\(d)/post.tensor"], ["--strength is DiffEdit's"]),
            ("invert", ["--model", model, "--prompt", "\(d)/a.tensor", "--skip", "0.1", "\(d)/post.tensor"], ["--skip is LEDITS++'s"]),
            // LEDITS++ starts from the posterior's mean, never a sample
            ("invert", ["--model", model, "--method", "ledits", "\(d)/sample.tensor"], ["posterior's mean", "without --sample"]),
            // a stack's scheduler is the edit's
            ("denoise", edit + ["--scheduler", "dpm"], ["--scheduler dpm differs from the scheduler the LEDITS++ stack was inverted with (ddim)"]),
        ]
        for (tool, args, fragments) in cases {
            let r = try runTool(tool, args)
            assertRefused(r, tool: tool, contains: fragments)
            XCTAssertEqual(r.out, [], "\(tool) \(args) wrote output")
        }
        // ArgumentParser's own: no concept (status 64, one line); DiffEdit still needs its options.
        for (tool, args, fragment) in [("denoise", ["--model", model, "--method", "ledits", "\(d)/stack.tensor"], "missing expected argument '--edit"),
                                       ("denoise", ["--model", model, "--prompt", "\(d)/a.tensor"], "missing expected argument '--mask"),
                                       ("invert", ["--model", model], "missing expected argument '--prompt")] {
            let r = try runTool(tool, args)
            XCTAssertEqual(r.status, 64, "\(tool) \(args): \(r.err)")
            XCTAssertEqual(r.err.split(separator: "\n").count, 1, r.err)
            XCTAssertTrue(r.err.contains(fragment), r.err)
        }
    }

    /// Progress on stderr as the other stages report it (--progress, or a terminal), and nothing with --quiet.
    func testProgressOnStderr() throws {
        let dir = try temporaryDirectory(self)
        let m = "--model '\(Fixtures.path("sd1-ledits"))'"
        _ = try Self.run("tokenize \(m) 'a dog' | encode-text \(m) > a.tensor\nvae-encode \(m) < '\(Fixtures.path("sd1-ledits/cat.ppm"))' > post.tensor", in: dir)
        let inv = try sh("cd '\(dir.path)' && invert \(m) --method ledits --steps 3 --progress < post.tensor > stack.tensor")
        XCTAssertEqual(inv.status, 0, inv.err)
        XCTAssertTrue(inv.err.contains("inversion step") && inv.err.contains("3/3"), inv.err)
        let den = try sh("cd '\(dir.path)' && denoise \(m) --method ledits --edit a.tensor --progress < stack.tensor > edit.tensor")
        XCTAssertEqual(den.status, 0, den.err)
        XCTAssertTrue(den.err.contains("denoising step") && den.err.contains("3/3"), den.err)
        let quiet = try sh("cd '\(dir.path)' && denoise \(m) --method ledits --edit a.tensor --progress --quiet < stack.tensor > edit.tensor")
        XCTAssertEqual(quiet.err, "")
    }

    /// The `ledits` section of diffedit_defaults.json: its values used when no option is given
    /// (and recorded), never the top level's DiffEdit values; checked strictly.
    func testDefaultsFileSectionLEdits() throws {
        let dir = try temporaryDirectory(self)
        let base = Fixtures.path("sd1-ledits")
        let model = dir.appendingPathComponent("model")
        try FileManager.default.createDirectory(at: model, withIntermediateDirectories: true)
        for item in try FileManager.default.contentsOfDirectory(atPath: base) where item != "ref" {
            try FileManager.default.createSymbolicLink(atPath: model.appendingPathComponent(item).path, withDestinationPath: "\(base)/\(item)")
        }
        let defaults = model.appendingPathComponent(ModelDefaults.fileName)
        try #"{"steps": 9, "guidance": 7, "ledits": {"steps": 4, "skip": 0.25, "edit_threshold": 0.5, "attention_grid": "4x4"}}"#
            .write(to: defaults, atomically: true, encoding: .utf8)
        let m = "--model '\(model.path)'"
        _ = try Self.run("""
            tokenize \(m) 'a dog' | encode-text \(m) > a.tensor
            vae-encode \(m) < '\(Fixtures.path("sd1-ledits/cat.ppm"))' > post.tensor
            invert \(m) --method ledits < post.tensor > stack.tensor
            denoise \(m) --method ledits --edit a.tensor < stack.tensor > file.tensor
            denoise \(m) --method ledits --edit a.tensor --edit-threshold 0.5 --attention-grid 4x4 < stack.tensor > given.tensor
            """, in: dir)
        let noise = try Self.read(dir.appendingPathComponent("stack.tensor"), RecordName.leditsNoise)
        XCTAssertEqual(noise.shape[1], 4, "the section's steps, not the top level's 9")
        XCTAssertEqual(noise.metadata["skip"], "0.25")
        XCTAssertEqual(noise.metadata["total_steps"], "5")
        XCTAssertTrue(noise.metadata["defaults"]?.contains("steps 4 (section ledits)") == true, noise.metadata["defaults"] ?? "no defaults key")
        let file = try Self.read(dir.appendingPathComponent("file.tensor"), RecordName.latents)
        let given = try Self.read(dir.appendingPathComponent("given.tensor"), RecordName.latents)
        XCTAssertEqual(file.floats(), given.floats(), "the section's threshold and grid are the options'")
        XCTAssertEqual(file.metadata["attention.grid"], "4x4")
        XCTAssertEqual(file.metadata["edit.threshold"], "0.5")
        // Strict: an unknown key, a value out of its domain, a grid not written HxW, the section misplaced.
        for (json, fragment) in [(#"{"ledits": {"stepz": 4}}"#, "section 'ledits': unknown key 'stepz'"),
                                 (#"{"ledits": {"skip": 1}}"#, "'skip' must be a number from 0, below 1"),
                                 (#"{"ledits": {"edit_threshold": 1.5}}"#, "'edit_threshold' must be a number from 0 to 1"),
                                 (#"{"ledits": {"attention_grid": "big"}}"#, "'attention_grid' must be a grid"),
                                 (#"{"ledits": 3}"#, "'ledits' must be an object"),
                                 (#"{"denoise": {"ledits": {}}}"#, "'ledits' does not apply to denoise")] {
            try json.write(to: defaults, atomically: true, encoding: .utf8)
            let r = try runTool("invert", ["--model", model.path, "--method", "ledits", "\(dir.path)/post.tensor"])
            assertRefused(r, tool: "invert", contains: [ModelDefaults.fileName, fragment])
        }
    }
}
