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
}
