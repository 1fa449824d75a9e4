import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// A model folder's diffedit_defaults.json (man 5 diffedit-defaults): parsed strictly, used by
/// noise-diff-mask, invert and denoise for options not given, shown by --help and --verbose.
final class ModelDefaultsTests: XCTestCase {
    func testParsesEveryKey() throws {
        let d = try ModelDefaults(bytes: Array("""
            {"comment": "x", "guidance": 2.5, "negative_prompt": "blurry", "steps": 20, "strength": 0.6, "blend": "paper"}
            """.utf8), path: "/m/diffedit_defaults.json")
        XCTAssertEqual(d.guidance, 2.5)
        XCTAssertEqual(d.negativePrompt, "blurry")
        XCTAssertEqual(d.steps, 20)
        XCTAssertEqual(d.strength, 0.6)
        XCTAssertEqual(d.blend, .paper)
        XCTAssertEqual(d.comment, "x")
        // Empty object: no values; the tools' own defaults.
        let empty = try ModelDefaults(bytes: Array("{}".utf8), path: "/m/diffedit_defaults.json")
        var used: [String] = []
        XCTAssertEqual(empty.pick(nil, \.guidance, "guidance", builtIn: 7.5, used: &used), 7.5)
        XCTAssertEqual(d.pick(nil, \.guidance, "guidance", builtIn: 7.5, used: &used), 2.5)
        XCTAssertEqual(d.pick(9, \.guidance, "guidance", builtIn: 7.5, used: &used), 9, "an option given wins")
        XCTAssertEqual(used, ["guidance 2.5"])
        // The demo model ships one: guidance 3, the empty negative prompt, 25 steps, and invert at
        // guidance 1 (demo/BENCHMARK.md, issue 25's tuning).
        let demo = try ModelDefaults(folder: ModelFolder(root: DemoScene.model))
        XCTAssertEqual(demo.guidance, 3)
        XCTAssertEqual(demo.negativePrompt, "")
        XCTAssertEqual(demo.steps, 25)
        XCTAssertEqual(demo.sections[.invert]?.guidance, 1)
        XCTAssertEqual(Set(demo.sections.keys), [.invert])
        XCTAssertNotNil(demo.path)
        XCTAssertNil(try ModelDefaults(folder: ModelFolder(root: Fixtures.path("sd1"))).path, "no file: no defaults")
    }

    /// Every malformed file is refused with one line naming the file (and the key), never ignored.
    func testRefusesMalformedFiles() {
        let path = "/models/x/diffedit_defaults.json"
        let cases: [(String, [String])] = [
            (#"{"guidance": 3, "guidance": 4}"#, ["'guidance' appears twice"]),
            (#"{"guidanc": 3}"#, ["unknown key 'guidanc'", "known: guidance"]),
            (#"{"negative": ""}"#, ["unknown key 'negative'"]),
            (#"{"guidance": "3"}"#, ["'guidance' must be a number from 0 to 100", "\"3\""]),
            (#"{"guidance": 101}"#, ["'guidance'"]),
            (#"{"guidance": -0.5}"#, ["'guidance'"]),
            (#"{"guidance": 1e39}"#, ["'guidance'"]),
            (#"{"guidance": null}"#, ["'guidance'", "null"]),
            (#"{"steps": 0}"#, ["'steps' must be an integer from 1 to 1000"]),
            (#"{"steps": 1001}"#, ["'steps'"]),
            (#"{"steps": 2.5}"#, ["'steps'"]),
            (#"{"steps": true}"#, ["'steps'", "true"]),
            (#"{"strength": 0}"#, ["'strength' must be a number above 0, at most 1"]),
            (#"{"strength": 1.5}"#, ["'strength'"]),
            (#"{"blend": "nice"}"#, ["'blend'", "\"nice\""]),
            (#"{"blend": ["paper"]}"#, ["'blend'", "a list"]),
            (#"{"negative_prompt": "a\nb"}"#, ["'negative_prompt' must be one line", "a?b"]),
            (#"{"negative_prompt": 5}"#, ["'negative_prompt'"]),
            (#"{"comment": {"a": 1}}"#, ["'comment'", "an object"]),
            (#"[1, 2]"#, ["is not a JSON object"]),
            (#""guidance""#, ["is not a JSON object"]),
            (#"{"guidance": 3"#, ["is not valid JSON"]),
            (#"{"guidance": NaN}"#, ["is not valid JSON"]),
            ("", ["is not valid JSON"]),
        ]
        for (text, fragments) in cases {
            assertToolError(try ModelDefaults(bytes: Array(text.utf8), path: path), contains: [path] + fragments)
        }
        assertToolError(try ModelDefaults(bytes: [UInt8](repeating: 0x20, count: (1 << 20) + 1), path: path),
                        contains: [path, "not a small settings file"])
        let huge = "{\"negative_prompt\": \"" + String(repeating: "a", count: ModelDefaults.maxTextLength + 1) + "\"}"
        assertToolError(try ModelDefaults(bytes: Array(huge.utf8), path: path), contains: [path, "at most 10000"])
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
