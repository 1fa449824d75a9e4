import DiffEditCore
import Foundation
import XCTest
import DiffEditTestSupport

/// Every numeric option of the stage tools at each end of its domain, as the man pages state
/// the domain (the expectation is read from the documentation, not from the code): a closed end
/// is accepted, an open end and a step past either end refused. The same for the keys of
/// diffedit_defaults.json at the ends man 5 diffedit-defaults gives. And an option given on the
/// command line wins over the model's defaults file, for every stage tool and every key.
final class OptionDomainTests: XCTestCase {
    static let repo = repositoryRoot

    /// (option, lower, lower included, upper, upper included, integer) for each numeric option in
    /// a man page's OPTIONS: "an integer from A to B", "a number from A to B", "a number above A,
    /// at most B".
    static func documentedDomains(_ tool: String) throws -> [(option: String, lo: String, loIn: Bool, hi: String, hiIn: Bool, integer: Bool)] {
        let text = try String(contentsOf: repo.appendingPathComponent("man/man1/\(tool).1"), encoding: .utf8)
        let entries = text.components(separatedBy: "\n.TP\n").dropFirst()
        var out: [(String, String, Bool, String, Bool, Bool)] = []
        for entry in entries {
            let lines = entry.split(separator: "\n", omittingEmptySubsequences: false)
            guard let head = lines.first, head.hasPrefix(".BI \\-\\-") else { continue }
            let option = "--" + head.dropFirst(".BI \\-\\-".count).split(separator: " ")[0].replacingOccurrences(of: "\\-", with: "-")
            let body = lines.dropFirst().joined(separator: " ").replacingOccurrences(of: "\\-", with: "-")
            let number = #"([0-9][0-9.]*)"#
            if let m = body.firstMatch(of: try Regex("an integer from \(number) to \(number)")) {
                out.append((option, String(m.output[1].substring!), true, String(m.output[2].substring!), true, true))
            } else if let m = body.firstMatch(of: try Regex("a number from \(number) to \(number)")) {
                out.append((option, String(m.output[1].substring!), true, String(m.output[2].substring!), true, false))
            } else if let m = body.firstMatch(of: try Regex("a number above \(number), at most \(number)")) {
                out.append((option, String(m.output[1].substring!), false, String(m.output[2].substring!), true, false))
            } else if let m = body.firstMatch(of: try Regex("a number from \(number), below \(number)")) {
                out.append((option, String(m.output[1].substring!), true, String(m.output[2].substring!), false, false))
            }
        }
        return out
    }

    /// Values just past `v` (down or up): one for an integer (exact, in decimal even past 2^64),
    /// a thousandth for a real.
    static func step(_ v: String, up: Bool, integer: Bool) -> String {
        if integer {
            if up { return String(decimalIncrement(v)) }
            return v == "0" ? "-1" : String(Int(v)! - 1)
        }
        return String(Double(v)! + (up ? 0.001 : -0.001))
    }

    static func decimalIncrement(_ v: String) -> String {
        var digits = Array(v.utf8).map { Int($0) - 48 }
        var i = digits.count - 1
        while i >= 0 { digits[i] += 1; if digits[i] < 10 { break }; digits[i] = 0; i -= 1 }
        if i < 0 { digits.insert(1, at: 0) }
        return String(digits.map { Character(String($0)) })
    }

    /// Required options of each stage tool, given files that are never reached: an accepted
    /// value passes parsing and the tool then stops on its empty stdin.
    static let required: [String: [String]] = [
        "noise-diff-mask": ["--source", "x.tensor", "--target", "x.tensor"],
        "invert": ["--prompt", "x.tensor"],
        "denoise": ["--prompt", "x.tensor", "--mask", "x.tensor"],
        // composite's inputs: /dev/null reads as an empty input.
        "composite": ["--original", "/dev/null", "--mask", "/dev/null"],
    ]

    func testEveryNumericOptionAtTheEndsOfItsDocumentedDomain() throws {
        var checked = 0
        for tool in ["noise-diff-mask", "invert", "denoise", "composite"] {
            let domains = try Self.documentedDomains(tool)
            XCTAssertGreaterThanOrEqual(domains.count, ["denoise": 4, "composite": 3][tool] ?? 6, "\(tool)(1): too few domains read")
            for d in domains {
                let cases: [(String, Bool)] = [
                    (d.lo, d.loIn), (Self.step(d.lo, up: false, integer: d.integer), false),
                    (d.hi, d.hiIn), (Self.step(d.hi, up: true, integer: d.integer), false),
                ]
                let results = concurrently(cases) { value, _ in try runTool(tool, Self.required[tool]! + ["\(d.option)=\(value)"]) }
                for ((value, accepted), result) in zip(cases, results) {
                    let r = try result.get()
                    if accepted {
                        XCTAssertFalse(r.err.contains(d.option), "\(tool) \(d.option) \(value) is in the documented domain: \(r.err)")
                        XCTAssertTrue(r.err.contains("stdin") || r.err.contains("empty"), "\(tool) \(d.option) \(value) should reach the input: \(r.err)")
                    } else {
                        assertRefused(r, tool: tool, contains: [d.option])
                    }
                    checked += 1
                }
            }
        }
        XCTAssertGreaterThan(checked, 60)
    }

    func testDefaultsFileKeysAtTheEndsOfTheirDomains() throws {
        let dir = try temporaryDirectory(self)
        let post = try Hostile.write(try Hostile.posterior(), dir, "post.tensor")
        let emb = try Hostile.embeddingsFile(dir)
        // man 5 diffedit-defaults: guidance 0…100, steps 1…1000 (integer), strength (0, 1].
        let rows: [(json: String, accepted: Bool)] = [
            (#"{"guidance": 0}"#, true), (#"{"guidance": 100}"#, true), (#"{"guidance": -0.001}"#, false), (#"{"guidance": 100.001}"#, false),
            (#"{"steps": 1}"#, true), (#"{"steps": 1000}"#, true), (#"{"steps": 0}"#, false), (#"{"steps": 1001}"#, false), (#"{"steps": 2.5}"#, false),
            (#"{"strength": 1}"#, true), (#"{"strength": 0.001}"#, true), (#"{"strength": 0}"#, false), (#"{"strength": 1.001}"#, false),
        ]
        for row in rows {
            let model = try Hostile.modelCopy(dir)
            try row.json.write(to: model.appendingPathComponent(ModelDefaults.fileName), atomically: true, encoding: .utf8)
            // invert reads every one of these keys. An accepted value may still make no schedule
            // with the other settings (1000 steps with steps_offset 1): then the refusal is the
            // schedule's, never the file's.
            var args = ["--model", model.path, "--prompt", emb, post]
            if !row.json.contains("steps") { args += ["--steps", "2"] }
            let r = try runTool("invert", args)
            if row.accepted {
                XCTAssertFalse(r.err.contains(ModelDefaults.fileName), "\(row.json) is in the documented domain: \(r.err)")
            } else {
                assertRefused(r, tool: "invert", contains: [ModelDefaults.fileName])
            }
        }
    }

    /// For each stage tool and each key it reads: a model whose file sets every key to a value
    /// of its own, run with that key given on the command line, gives the same tensor as a model
    /// without the file run with the key on the command line and the file's other values given
    /// as options. If the file won for that key, the two would differ.
    func testCommandLineWinsOverTheDefaultsFileForEveryToolAndKey() throws {
        let dir = try temporaryDirectory(self)
        let d = dir.path
        let file = try Hostile.modelCopy(dir)
        let bare = try Hostile.modelCopy(dir)
        try #"{"guidance": 5, "steps": 6, "strength": 0.5, "negative_prompt": "a blurry photo", "blend": "paper"}"#
            .write(to: file.appendingPathComponent(ModelDefaults.fileName), atomically: true, encoding: .utf8)
        _ = try Hostile.write(try Hostile.posterior(), dir, "post.tensor")
        let script = """
            cd '\(d)'
            tokenize --model '\(bare.path)' 'a cat' | encode-text --model '\(bare.path)' > src.tensor
            tokenize --model '\(bare.path)' 'a dog' | encode-text --model '\(bare.path)' > dst.tensor
            tokenize --model '\(bare.path)' 'a blurry photo' | encode-text --model '\(bare.path)' > fileneg.tensor
            tokenize --model '\(bare.path)' 'ugly' | encode-text --model '\(bare.path)' > clineg.tensor
            """
        XCTAssertEqual(try sh(script).status, 0)
        // The file's values as options, and a value of the command line's own for each key.
        let fileValue: [String: [String]] = ["guidance": ["--guidance", "5"], "steps": ["--steps", "6"], "strength": ["--strength", "0.5"],
                                             "blend": ["--blend", "paper"]]
        let cliValue: [String: [String]] = ["guidance": ["--guidance", "2"], "steps": ["--steps", "4"], "strength": ["--strength", "1"],
                                            "blend": ["--blend", "diffusers"]]
        func tensor(_ r: (status: Int32, out: [UInt8], err: String), _ what: String) throws -> [Float] {
            XCTAssertEqual(r.status, 0, "\(what): \(r.err)")
            let f = dir.appendingPathComponent("out-\(UUID().uuidString).tensor")
            try Data(r.out).write(to: f)
            return try TensorStream.readAll(path: f.path).first?.floats() ?? []
        }
        // invert: guidance, steps, strength, negative_prompt.
        let invertKeys = ["guidance", "steps", "strength"]
        for key in invertKeys + ["negative_prompt"] {
            var withFile = ["--model", file.path, "--prompt", "\(d)/src.tensor", "\(d)/post.tensor"]
            var without = ["--model", bare.path, "--prompt", "\(d)/src.tensor", "\(d)/post.tensor"]
            for k in invertKeys {
                if k == key { withFile += cliValue[k]!; without += cliValue[k]! } else { without += fileValue[k]! }
            }
            if key == "negative_prompt" { withFile += ["--negative", "\(d)/clineg.tensor"]; without += ["--negative", "\(d)/clineg.tensor"] }
            else { without += ["--negative", "\(d)/fileneg.tensor"] }
            let a = try tensor(try runTool("invert", withFile), "invert with the file, \(key) given")
            let b = try tensor(try runTool("invert", without), "invert without the file")
            XCTAssertFalse(a.isEmpty)
            XCTAssertEqual(a, b, "invert: the command line's \(key) must win over \(ModelDefaults.fileName)")
        }
        // noise-diff-mask: guidance, steps, negative_prompt (both negatives).
        let maskKeys = ["guidance", "steps"]
        for key in maskKeys + ["negative_prompt"] {
            let base = ["--source", "\(d)/src.tensor", "--target", "\(d)/dst.tensor", "--soft", "--maps", "2", "\(d)/post.tensor"]
            var withFile = ["--model", file.path] + base, without = ["--model", bare.path] + base
            for k in maskKeys {
                if k == key { withFile += cliValue[k]!; without += cliValue[k]! } else { without += fileValue[k]! }
            }
            let neg = key == "negative_prompt" ? "clineg" : "fileneg"
            if key == "negative_prompt" { withFile += ["--source-negative", "\(d)/clineg.tensor", "--target-negative", "\(d)/clineg.tensor"] }
            without += ["--source-negative", "\(d)/\(neg).tensor", "--target-negative", "\(d)/\(neg).tensor"]
            let a = try tensor(try runTool("noise-diff-mask", withFile), "noise-diff-mask with the file, \(key) given")
            let b = try tensor(try runTool("noise-diff-mask", without), "noise-diff-mask without the file")
            XCTAssertFalse(a.isEmpty)
            XCTAssertEqual(a, b, "noise-diff-mask: the command line's \(key) must win over \(ModelDefaults.fileName)")
        }
        // denoise: guidance, blend, negative_prompt (steps and strength come from the stack).
        let prep = try runTool("invert", ["--model", bare.path, "--prompt", "\(d)/src.tensor", "--steps", "4", "--guidance", "1", "\(d)/post.tensor"])
        XCTAssertEqual(prep.status, 0, prep.err)
        _ = try Hostile.write(prep.out, dir, "inv.tensor")
        let mask = try runTool("noise-diff-mask", ["--model", bare.path, "--source", "\(d)/src.tensor", "--target", "\(d)/dst.tensor",
                                                   "--maps", "2", "--steps", "4", "\(d)/post.tensor"])
        _ = try Hostile.write(mask.out, dir, "mask.tensor")
        let denoiseKeys = ["guidance", "blend"]
        for key in denoiseKeys + ["negative_prompt"] {
            let base = ["--prompt", "\(d)/dst.tensor", "--mask", "\(d)/mask.tensor", "\(d)/inv.tensor"]
            var withFile = ["--model", file.path] + base, without = ["--model", bare.path] + base
            for k in denoiseKeys {
                if k == key { withFile += cliValue[k]!; without += cliValue[k]! } else { without += fileValue[k]! }
            }
            if key == "negative_prompt" { withFile += ["--negative", "\(d)/clineg.tensor"]; without += ["--negative", "\(d)/clineg.tensor"] }
            else { without += ["--negative", "\(d)/fileneg.tensor"] }
            let a = try tensor(try runTool("denoise", withFile), "denoise with the file, \(key) given")
            let b = try tensor(try runTool("denoise", without), "denoise without the file")
            XCTAssertFalse(a.isEmpty)
            XCTAssertEqual(a, b, "denoise: the command line's \(key) must win over \(ModelDefaults.fileName)")
        }
    }
}
