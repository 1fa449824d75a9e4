import DiffEditCore
import Foundation
import XCTest

/// The per-stage sections of diffedit_defaults.json (man 5 diffedit-defaults, "Sections"): for
/// every stage tool and every key its section takes, the section wins over the top level and the
/// command line wins over the section. Every expectation is another run of the tool, on a model
/// without the file, with the value on the command line: never a value the code under test
/// computed. And every malformed section is refused in one line naming the file, the section and
/// the key.
final class ModelDefaultsSectionTests: XCTestCase {
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
        let maskNeg = { (t: String) in ["--source-negative", "\(d)/\(t).tensor", "--target-negative", "\(d)/\(t).tensor"] }
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
            case "noise-diff-mask": return ["--source", "\(d)/src.tensor", "--target", "\(d)/dst.tensor", "\(d)/post.tensor"]
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

    /// Every malformed section, and every key in the wrong place, is refused with one line naming
    /// the file, the section and the key.
    func testRefusesMalformedSections() {
        let path = "/models/x/diffedit_defaults.json"
        let cases: [(String, [String])] = [
            (#"{"mask": {"guidance": 3}}"#, ["unknown key 'mask'", "noise-diff-mask, invert, denoise"]),
            (#"{"invert": 3}"#, ["'invert' must be an object", "strength"]),
            (#"{"invert": null}"#, ["'invert' must be an object", "null"]),
            (#"{"invert": ["guidance"]}"#, ["'invert'", "a list"]),
            (#"{"invert": {"guidanc": 3}}"#, ["section 'invert'", "unknown key 'guidanc'", "known: guidance"]),
            (#"{"denoise": {"steps": 20}}"#, ["section 'denoise'", "'steps' does not apply to denoise", "noise-diff-mask and invert"]),
            (#"{"denoise": {"strength": 0.5}}"#, ["section 'denoise'", "'strength' does not apply to denoise"]),
            (#"{"noise-diff-mask": {"strength": 0.5}}"#, ["section 'noise-diff-mask'", "'strength' does not apply"]),
            (#"{"noise-diff-mask": {"blend": "paper"}}"#, ["section 'noise-diff-mask'", "'blend' does not apply"]),
            (#"{"invert": {"maps": 3}}"#, ["section 'invert'", "'maps' does not apply to invert", "noise-diff-mask only"]),
            (#"{"invert": {"dilate": 1}}"#, ["section 'invert'", "'dilate' does not apply"]),
            (#"{"invert": {"invert": {}}}"#, ["section 'invert'", "'invert' does not apply", "section of the top level"]),
            (#"{"maps": 3}"#, ["'maps' applies to noise-diff-mask only", "section \"noise-diff-mask\""]),
            (#"{"threshold_ratio": 2}"#, ["'threshold_ratio' applies to noise-diff-mask only"]),
            (#"{"invert": {"guidance": 101}}"#, ["section 'invert'", "'guidance' must be a number from 0 to 100"]),
            (#"{"invert": {"guidance": "3"}}"#, ["section 'invert'", "'guidance'", "\"3\""]),
            (#"{"invert": {"steps": 0}}"#, ["section 'invert'", "'steps' must be an integer from 1 to 1000"]),
            (#"{"invert": {"steps": 2.5}}"#, ["section 'invert'", "'steps'"]),
            (#"{"invert": {"strength": 0}}"#, ["section 'invert'", "'strength' must be a number above 0, at most 1"]),
            (#"{"denoise": {"blend": "nice"}}"#, ["section 'denoise'", "'blend'", "\"nice\""]),
            (#"{"denoise": {"negative_prompt": "a\nb"}}"#, ["section 'denoise'", "'negative_prompt' must be one line"]),
            (#"{"noise-diff-mask": {"threshold_ratio": 0}}"#, ["section 'noise-diff-mask'", "'threshold_ratio' must be a number above 0, at most 1000"]),
            (#"{"noise-diff-mask": {"threshold_ratio": 1000.5}}"#, ["'threshold_ratio'"]),
            (#"{"noise-diff-mask": {"maps": 0}}"#, ["section 'noise-diff-mask'", "'maps' must be an integer from 1 to 10000"]),
            (#"{"noise-diff-mask": {"maps": 10001}}"#, ["'maps'"]),
            (#"{"noise-diff-mask": {"maps": 2.5}}"#, ["'maps'"]),
            (#"{"noise-diff-mask": {"encode_strength": 0}}"#, ["'encode_strength' must be a number above 0, at most 1"]),
            (#"{"noise-diff-mask": {"encode_strength": 1.01}}"#, ["'encode_strength'"]),
            (#"{"noise-diff-mask": {"dilate": -1}}"#, ["'dilate' must be an integer from 0 to 64"]),
            (#"{"noise-diff-mask": {"dilate": 65}}"#, ["'dilate'"]),
            (#"{"noise-diff-mask": {"dilate": true}}"#, ["'dilate'", "true"]),
            (#"{"invert": {"guidance": 1}, "invert": {"guidance": 2}}"#, ["'invert' appears twice"]),
            (#"{"invert": {"guidance": 1, "guidance": 2}}"#, ["'guidance' appears twice"]),
        ]
        for (text, fragments) in cases {
            assertToolError(try ModelDefaults(bytes: Array(text.utf8), path: path), contains: [path] + fragments)
        }
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
}
