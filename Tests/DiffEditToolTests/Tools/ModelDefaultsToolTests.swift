import DiffEditCore
import Foundation
import XCTest
import DiffEditTestSupport

/// The model folder's diffedit_defaults.json (man 5 diffedit-defaults) through the stage tools:
/// every key acts as its option, options not given take the file's values, and in the per-stage
/// sections, for every stage tool and every key its section takes, the section wins over the top
/// level and the command line wins over the section. Every expectation is another run of the tool,
/// on a model without the file, with the value on the command line: never a value the code under
/// test computed. A bad file or section is refused by every stage in one line naming the file, the
/// section and the key.
final class ModelDefaultsToolTests: XCTestCase {
    /// The file of the A/B runs: a top level and a section for every stage, each value of its own.
    static let file = """
        {"comment": "sections", "guidance": 5, "steps": 6, "strength": 0.5, "negative_prompt": "a blurry photo", "blend": "paper",
         "noise-diff-mask": {"guidance": 2, "steps": 20, "negative_prompt": "ugly", "threshold_ratio": 2, "maps": 3,
                             "encode_strength": 0.3, "dilate": 1, "comment": "the mask's"},
         "invert": {"guidance": 2.5, "steps": 8, "strength": 1, "negative_prompt": "a dog"},
         "denoise": {"guidance": 4, "negative_prompt": "ugly", "blend": "diffusers"}}
        """

    /// For each stage: its keys as (key, the section's value as options, the top level's (or,
    /// for a key the top level may not hold, the tool's default) as options, a third value as
    /// options). A negative prompt's options name the embeddings of its text.
    typealias Row = (key: String, section: [String], top: [String], cli: [String])
    static func rows(_ d: String) -> [String: [Row]] {
        // noise-diff-mask runs with its own target negative (base below): with one negative for
        // both captions the negative cancels from the map, and so does the guidance (the map is
        // (g − 1)·|ε(target) − ε(source)|, normalised), so neither key would show in the output.
        let maskNeg = { (t: String) in ["--source-negative", "\(d)/\(t).tensor"] }
        return [
            "noise-diff-mask": [
                ("guidance", ["--guidance", "2"], ["--guidance", "5"], ["--guidance", "3"]),
                // (At encode strength 0.3, 4 steps would take the same timestep as 6.)
                ("steps", ["--steps", "20"], ["--steps", "6"], ["--steps", "10"]),
                ("negative_prompt", maskNeg("ugly"), maskNeg("blurry"), maskNeg("cli")),
                ("threshold_ratio", ["--threshold-ratio", "2"], ["--threshold-ratio", "3"], ["--threshold-ratio", "1.5"]),
                ("maps", ["--maps", "3"], ["--maps", "10"], ["--maps", "2"]),
                ("encode_strength", ["--encode-strength", "0.3"], ["--encode-strength", "0.5"], ["--encode-strength", "0.7"]),
                ("dilate", ["--dilate", "1"], ["--dilate", "0"], ["--dilate", "2"]),
            ],
            "invert": [
                ("guidance", ["--guidance", "2.5"], ["--guidance", "5"], ["--guidance", "3"]),
                ("steps", ["--steps", "8"], ["--steps", "6"], ["--steps", "4"]),
                ("strength", ["--strength", "1"], ["--strength", "0.5"], ["--strength", "0.75"]),
                ("negative_prompt", ["--negative", "\(d)/dog.tensor"], ["--negative", "\(d)/blurry.tensor"], ["--negative", "\(d)/cli.tensor"]),
            ],
            "denoise": [
                ("guidance", ["--guidance", "4"], ["--guidance", "5"], ["--guidance", "3"]),
                ("negative_prompt", ["--negative", "\(d)/ugly.tensor"], ["--negative", "\(d)/blurry.tensor"], ["--negative", "\(d)/cli.tensor"]),
                ("blend", ["--blend", "diffusers"], ["--blend", "paper"], ["--blend", "paper"]),
            ],
        ]
    }

    func testSectionBeatsTopLevelAndCommandLineBeatsSectionForEveryStageAndKey() throws {
        let dir = try temporaryDirectory(self)
        let d = dir.path
        let withFile = try Hostile.modelCopy(dir), bare = try Hostile.modelCopy(dir)
        try Self.file.write(to: withFile.appendingPathComponent(ModelDefaults.fileName), atomically: true, encoding: .utf8)
        _ = try Hostile.write(try Hostile.posterior(), dir, "post.tensor")
        var script = "cd '\(d)'\n"
        for (name, text) in [("src", "a cat"), ("dst", "a dog"), ("blurry", "a blurry photo"), ("ugly", "ugly"), ("dog", "a dog"), ("cli", "a red square")] {
            script += "tokenize --model '\(bare.path)' '\(text)' | encode-text --model '\(bare.path)' > \(name).tensor\n"
        }
        // denoise's input: a stack made on the bare model, every setting given, and a mask of the
        // left half (so that the blending shows: an all-ones mask would blend nothing).
        script += """
            invert --model '\(bare.path)' --prompt src.tensor --negative blurry.tensor --steps 4 --guidance 1 post.tensor > inv.tensor
            """
        var pgm = Array("P5\n8 8\n255\n".utf8)
        for _ in 0..<8 { pgm += [UInt8](repeating: 255, count: 4) + [UInt8](repeating: 0, count: 4) }
        _ = try Hostile.write(pgm, dir, "mask.pgm")
        let prep = try sh(script)
        XCTAssertEqual(prep.status, 0, prep.err)
        let rows = Self.rows(d)
        func base(_ tool: String) -> [String] {
            switch tool {
            case "noise-diff-mask": return ["--source", "\(d)/src.tensor", "--target", "\(d)/dst.tensor",
                                            "--target-negative", "\(d)/dog.tensor", "\(d)/post.tensor"]
            case "invert": return ["--prompt", "\(d)/src.tensor", "\(d)/post.tensor"]
            default: return ["--prompt", "\(d)/dst.tensor", "--mask", "\(d)/mask.pgm", "\(d)/inv.tensor"]
            }
        }
        // A run's every record's values (noise-diff-mask: the mask on stdout and the soft map,
        // written by the same run).
        func output(_ tool: String, _ model: URL, _ options: [String]) throws -> [[Float]] {
            var args = ["--model", model.path] + base(tool) + options
            let soft = dir.appendingPathComponent("soft-\(UUID().uuidString).tensor").path
            if tool == "noise-diff-mask" { args += ["--soft-output", soft] }
            let r = try runTool(tool, args)
            XCTAssertEqual(r.status, 0, "\(tool) \(args.joined(separator: " ")): \(r.err)")
            let f = try Hostile.write(r.out, dir, "out-\(UUID().uuidString).tensor")
            var out = try TensorStream.readAll(path: f).map { $0.floats() }
            if tool == "noise-diff-mask" { out += try TensorStream.readAll(path: soft).map { $0.floats() } }
            XCTAssertFalse(out.isEmpty || out.contains { $0.isEmpty }, "\(tool): no output, the comparison would prove nothing")
            return out
        }
        var checked = 0
        for tool in ["noise-diff-mask", "invert", "denoise"] {
            let keys = rows[tool]!
            let section = keys.flatMap(\.section)
            // The file's values, no option given: the section's for every key.
            let fromFile = try output(tool, withFile, [])
            XCTAssertEqual(fromFile, try output(tool, bare, section), "\(tool): the section's values must win over the top level")
            for (i, row) in keys.enumerated() {
                let others = keys.enumerated().filter { $0.offset != i }.flatMap(\.element.section)
                // The key's top-level value (or the tool's default) gives another output, so
                // that the comparison above catches the section losing for this key.
                XCTAssertNotEqual(fromFile, try output(tool, bare, others + row.top),
                                  "\(tool) \(row.key): the section's and the top level's values must differ in output, or this proves nothing")
                // The command line wins over the section.
                XCTAssertEqual(try output(tool, withFile, row.cli), try output(tool, bare, others + row.cli),
                               "\(tool) \(row.key): the command line must win over the section")
                checked += 1
            }
        }
        XCTAssertEqual(checked, 14)
    }

    /// --verbose says where every value came from, and the metadata records the file's values
    /// with their section.
    func testVerboseAndMetadataNameTheSection() throws {
        let dir = try temporaryDirectory(self)
        let d = dir.path
        let model = try Hostile.modelCopy(dir)
        try #"{"guidance": 5, "negative_prompt": "", "invert": {"guidance": 1.5}}"#
            .write(to: model.appendingPathComponent(ModelDefaults.fileName), atomically: true, encoding: .utf8)
        let post = try Hostile.write(try Hostile.posterior(), dir, "post.tensor")
        let emb = try Hostile.embeddingsFile(dir)
        let r = try runTool("invert", ["--model", model.path, "--prompt", emb, "--steps", "2", "--verbose", post])
        XCTAssertEqual(r.status, 0, r.err)
        let file = model.path + "/" + ModelDefaults.fileName
        XCTAssertTrue(r.err.contains("invert: from \(file): negative prompt \"\", guidance 1.5 (section invert); "
                                     + "from the command line: steps 2; the tool's own: strength 0.8"), r.err)
        let out = try Hostile.write(r.out, dir, "inv.tensor")
        let inv = try TensorStream.readAll(path: out).first { $0.name == "inverted" }
        XCTAssertEqual(inv?.metadata["defaults"], "\(file): negative prompt \"\", guidance 1.5 (section invert)")
        XCTAssertEqual(inv?.metadata["guidance"], "1.5")
        _ = d
    }

    /// Through each tool: a file with a bad section stops it before any work, naming the file,
    /// the section and the key, even when the bad section is another stage's (the file is one
    /// file: a broken setting is never ignored because this tool does not read it).
    func testEveryStageRefusesABadSection() throws {
        let dir = try temporaryDirectory(self)
        let post = try Hostile.write(try Hostile.posterior(), dir, "post.tensor")
        let emb = try Hostile.embeddingsFile(dir)
        let model = try Hostile.modelCopy(dir)
        try #"{"guidance": 3, "denoise": {"steps": 20}}"#
            .write(to: model.appendingPathComponent(ModelDefaults.fileName), atomically: true, encoding: .utf8)
        let file = model.path + "/" + ModelDefaults.fileName
        let runs: [(String, [String])] = [
            ("noise-diff-mask", ["--source", emb, "--target", emb, post]),
            ("invert", ["--prompt", emb, post]),
            ("denoise", ["--prompt", emb, "--mask", emb, post]),
        ]
        for (tool, args) in runs {
            let r = try runTool(tool, ["--model", model.path] + args)
            assertRefused(r, tool: tool, contains: [file, "section 'denoise'", "'steps' does not apply to denoise"])
            XCTAssertTrue(r.out.isEmpty, "\(tool) wrote \(r.out.count) bytes")
        }
    }

    /// Through the tools: a bad file stops each stage with one line naming it, before any work,
    /// and writes nothing.
    func testEveryStageRefusesABadDefaultsFile() throws {
        let dir = try temporaryDirectory(self)
        try DemoScene.prepare(dir)
        let bad = try DemoScene.modelCopy(dir, defaults: #"{"guidance": 3, "sampler": "ddim"}"#)
        let file = bad + "/diffedit_defaults.json"
        let d = dir.path
        let runs: [(String, [String], String)] = [
            ("noise-diff-mask", ["--model", bad, "--source", "\(d)/src.tensor", "--target", "\(d)/dst.tensor"], "posterior.tensor"),
            ("invert", ["--model", bad, "--prompt", "\(d)/src.tensor"], "posterior.tensor"),
        ]
        for (tool, args, input) in runs {
            let r = try runTool(tool, args, stdin: [UInt8](try Data(contentsOf: dir.appendingPathComponent(input))))
            assertRefused(r, tool: tool, contains: [file, "unknown key 'sampler'"])
            XCTAssertTrue(r.out.isEmpty, "\(tool) wrote \(r.out.count) bytes")
        }
        let inverted = try runTool("invert", ["--model", DemoScene.model, "--prompt", "\(d)/src.tensor", "--steps", "4"],
                                   stdin: [UInt8](try Data(contentsOf: dir.appendingPathComponent("posterior.tensor"))))
        XCTAssertEqual(inverted.status, 0, inverted.err)
        let mask = try runTool("noise-diff-mask", ["--model", DemoScene.model, "--source", "\(d)/src.tensor", "--target", "\(d)/dst.tensor", "--maps", "1"],
                               stdin: [UInt8](try Data(contentsOf: dir.appendingPathComponent("posterior.tensor"))))
        XCTAssertEqual(mask.status, 0, mask.err)
        try Data(mask.out).write(to: dir.appendingPathComponent("mask.tensor"))
        let r = try runTool("denoise", ["--model", bad, "--mask", "\(d)/mask.tensor", "--prompt", "\(d)/dst.tensor"], stdin: inverted.out)
        assertRefused(r, tool: "denoise", contains: [file, "unknown key 'sampler'"])
        XCTAssertTrue(r.out.isEmpty)
        // A value out of its domain, through a tool.
        let outOfDomain = try DemoScene.modelCopy(dir, defaults: #"{"guidance": 1e30}"#)
        let r2 = try runTool("invert", ["--model", outOfDomain, "--prompt", "\(d)/src.tensor"],
                             stdin: [UInt8](try Data(contentsOf: dir.appendingPathComponent("posterior.tensor"))))
        assertRefused(r2, tool: "invert", contains: [outOfDomain + "/diffedit_defaults.json", "'guidance' must be a number from 0 to 100"])
    }

    /// The demo model's file gives what the options would: no --guidance on the demo model is
    /// --guidance 3 on the same model without the file; an option given wins; --verbose and the
    /// metadata say where each value came from; --help says where the defaults come from.
    func testToolsUseTheModelsDefaultsForOptionsNotGiven() throws {
        let dir = try temporaryDirectory(self)
        try DemoScene.prepare(dir)
        let plain = try DemoScene.modelCopy(dir, defaults: nil)
        let d = dir.path
        let mask = "noise-diff-mask --source \(d)/src.tensor --target \(d)/dst.tensor --maps 2 < \(d)/posterior.tensor"
        let r = try sh("""
            \(mask) --model '\(DemoScene.model)' --verbose > \(d)/m-defaults.tensor
            \(mask) --model '\(plain)' --guidance 3 --steps 25 > \(d)/m-explicit.tensor
            \(mask) --model '\(DemoScene.model)' --guidance 7.5 --steps 50 > \(d)/m-override.tensor
            \(mask) --model '\(plain)' > \(d)/m-builtin.tensor
            invert --model '\(DemoScene.model)' --prompt \(d)/src.tensor < \(d)/posterior.tensor > \(d)/i-defaults.tensor
            invert --model '\(plain)' --prompt \(d)/src.tensor --guidance 1 --steps 25 < \(d)/posterior.tensor > \(d)/i-explicit.tensor
            """)
        XCTAssertEqual(r.status, 0, r.err)
        let file = DemoScene.model + "/diffedit_defaults.json"
        XCTAssertTrue(r.err.contains("noise-diff-mask: from \(file): negative prompt \"\", steps 25, guidance 3.0"), r.err)
        let fromDefaults = try DemoScene.record("\(d)/m-defaults.tensor"), explicit = try DemoScene.record("\(d)/m-explicit.tensor")
        let overridden = try DemoScene.record("\(d)/m-override.tensor"), builtIn = try DemoScene.record("\(d)/m-builtin.tensor")
        XCTAssertEqual(fromDefaults.metadata["guidance"], "3.0")
        XCTAssertEqual(fromDefaults.metadata["clamp"], explicit.metadata["clamp"])
        XCTAssertEqual(fromDefaults.floats(), explicit.floats(), "the file's guidance 3 and steps 25 are --guidance 3 --steps 25")
        XCTAssertEqual(fromDefaults.metadata["defaults"], "\(file): negative prompt \"\", steps 25, guidance 3.0")
        XCTAssertNil(explicit.metadata["defaults"], "a folder without the file records none")
        XCTAssertEqual(overridden.metadata["guidance"], "7.5", "an option given wins over the file")
        XCTAssertEqual(overridden.metadata["clamp"], builtIn.metadata["clamp"])
        XCTAssertFalse(overridden.metadata["defaults"]?.contains("guidance") ?? false)
        XCTAssertEqual(builtIn.metadata["guidance"], "7.5", "no file, no option: diffusers' 7.5")
        XCTAssertNotEqual(fromDefaults.metadata["clamp"], builtIn.metadata["clamp"], "guidance 3 and 7.5 must differ, or this test proves nothing")
        // invert takes its section's guidance 1 over the top level's 3, and the top level's 25 steps.
        let invDefaults = try DemoScene.record("\(d)/i-defaults.tensor", "inverted"), invExplicit = try DemoScene.record("\(d)/i-explicit.tensor", "inverted")
        XCTAssertEqual(invDefaults.floats(), invExplicit.floats(), "the demo file's invert section is --guidance 1 --steps 25")
        XCTAssertEqual(invDefaults.metadata["defaults"], "\(file): negative prompt \"\", steps 25, guidance 1.0 (section invert)")

        for tool in ["noise-diff-mask", "invert", "denoise"] {
            let help = try runTool(tool, ["--help"])
            XCTAssertTrue(help.out.count > 0 && String(decoding: help.out, as: UTF8.self).contains("diffedit_defaults.json"),
                          "\(tool) --help does not say where its defaults come from")
        }
    }

    /// Every key reaches the stage it names: a file with a negative prompt, steps, strength,
    /// guidance and blend gives exactly what the same options on the command line give.
    func testEveryKeyActsAsItsOption() throws {
        let dir = try temporaryDirectory(self)
        try DemoScene.prepare(dir)
        let plain = try DemoScene.modelCopy(dir, defaults: nil)
        let custom = try DemoScene.modelCopy(dir, defaults: """
            {"comment": "test", "guidance": 2, "negative_prompt": "a green square", "steps": 10, "strength": 0.5, "blend": "paper"}
            """)
        let d = dir.path
        let r = try sh("""
            cd \(d)
            tokenize 'a green square' | encode-text --model '\(plain)' > neg.tensor
            noise-diff-mask --model '\(custom)' --source src.tensor --target dst.tensor --maps 2 < posterior.tensor > mask-file.tensor
            noise-diff-mask --model '\(plain)' --source src.tensor --target dst.tensor --maps 2 --guidance 2 --steps 10 \
                --source-negative neg.tensor --target-negative neg.tensor < posterior.tensor > mask-options.tensor
            invert --model '\(custom)' --prompt src.tensor < posterior.tensor > inv-file.tensor
            invert --model '\(plain)' --prompt src.tensor --guidance 2 --steps 10 --strength 0.5 --negative neg.tensor < posterior.tensor > inv-options.tensor
            denoise --model '\(custom)' --mask mask-file.tensor --prompt dst.tensor < inv-file.tensor > ed-file.tensor
            denoise --model '\(plain)' --mask mask-file.tensor --prompt dst.tensor --guidance 2 --blend paper --negative neg.tensor < inv-file.tensor > ed-options.tensor
            denoise --model '\(plain)' --mask mask-file.tensor --prompt dst.tensor < inv-file.tensor > ed-builtin.tensor
            """)
        XCTAssertEqual(r.status, 0, r.err)
        for (a, b) in [("mask-file", "mask-options"), ("inv-file", "inv-options"), ("ed-file", "ed-options")] {
            let x = try TensorStream.readAll(path: "\(d)/\(a).tensor"), y = try TensorStream.readAll(path: "\(d)/\(b).tensor")
            XCTAssertEqual(x.map(\.name), y.map(\.name), a)
            XCTAssertEqual(x.map(\.shape), y.map(\.shape), a)
            XCTAssertFalse(x.isEmpty, "\(a): no records, the comparison below would prove nothing")
            for (p, q) in zip(x, y) { XCTAssertEqual(p.floats(), q.floats(), "\(a) vs \(b): record \(p.name)") }
        }
        let inv = try DemoScene.record("\(d)/inv-file.tensor", "inverted")
        XCTAssertEqual(inv.shape[1], 5, "steps 10 × strength 0.5 = 5 latents")
        XCTAssertEqual(inv.metadata["steps"], "10")
        XCTAssertEqual(inv.metadata["strength"], "0.5")
        XCTAssertEqual(inv.metadata["guidance"], "2.0")
        let ed = try DemoScene.record("\(d)/ed-file.tensor")
        XCTAssertEqual(ed.metadata["blend"], "paper")
        XCTAssertTrue(ed.metadata["defaults"]?.contains("negative prompt \"a green square\"") ?? false, ed.metadata["defaults"] ?? "none")
        XCTAssertNotEqual(ed.floats(), try DemoScene.record("\(d)/ed-builtin.tensor").floats(), "the file must change the edit, or this test proves nothing")
    }
}
