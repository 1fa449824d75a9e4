@testable import DiffEditCore
import Foundation
import XCTest
import DiffEditTestSupport

/// Hostile option values and settings (issue 14, items 1, 3, 5, 7, 9): every numeric option of
/// every tool has a documented domain (in --help and the man page) and every value outside it —
/// NaN, ±Inf, negative, huge, not a number — is refused before any work with one line
/// `tool: --option value is …: --option takes <domain> — what to do`, exit status 1, nothing on
/// stdout. Found by reading each tool's own option list, so a new option is covered as it comes.
final class ReliabilityOptionTests: XCTestCase {
    static let tools = ["tensor", "tokenize", "encode-text", "vae-encode", "vae-decode", "noise-diff-mask", "invert",
                        "denoise", "composite", "unet-bench"]

    /// One option of a tool as ArgumentParser describes it (--experimental-dump-help).
    struct OptionInfo {
        var command: [String]   // ["tensor", "compare"] or ["invert"]
        var name: String        // "--steps"
        var abstract: String
        var parsing: String
        /// The domain words of the help text ("an integer from 1 to 1000"), nil for a non-numeric option.
        var domain: String?
        var required: [String]  // the command's required options and positionals, as dummy arguments
    }

    /// The numeric part of a help text: "…: an integer from 1 to 1000 (default: 50)." → the domain.
    static func domain(of abstract: String) -> String? {
        var a = abstract
        while a.hasSuffix(".") { a.removeLast() }
        if let r = a.range(of: " (default: ", options: .backwards), a.hasSuffix(")") { a = String(a[..<r.lowerBound]) }
        guard let colon = a.range(of: ": ", options: .backwards) else { return nil }
        let d = String(a[colon.upperBound...])
        let numeric = d.hasPrefix("an integer ") || d.hasPrefix("a number ")
            || d.range(of: #"^[0-9]+( or [0-9]+|(, [0-9]+)+ or [0-9]+)$"#, options: .regularExpression) != nil
        return numeric ? d : nil
    }

    /// Every option of every tool and subcommand.
    static func allOptions() throws -> [OptionInfo] {
        var out: [OptionInfo] = []
        func walk(_ command: [String: Any], path: [String]) {
            let args = command["arguments"] as? [[String: Any]] ?? []
            var required: [String] = []
            for a in args where (a["isOptional"] as? Bool) == false {
                if a["kind"] as? String == "option", let n = (a["preferredName"] as? [String: Any])?["name"] as? String {
                    required += ["--\(n)", "x"]
                } else if a["kind"] as? String == "positional" {
                    required.append("x\(required.count)")
                }
            }
            for a in args where a["kind"] as? String == "option" {
                guard let pn = a["preferredName"] as? [String: Any], pn["kind"] as? String == "long",
                      let n = pn["name"] as? String, n != "help", n != "version" else { continue }
                let abstract = a["abstract"] as? String ?? ""
                out.append(OptionInfo(command: path, name: "--\(n)", abstract: abstract,
                                      parsing: a["parsingStrategy"] as? String ?? "", domain: domain(of: abstract),
                                      required: required))
            }
            for sub in command["subcommands"] as? [[String: Any]] ?? [] {
                guard let name = sub["commandName"] as? String, name != "help" else { continue }
                walk(sub, path: path + [name])
            }
        }
        for tool in tools {
            let r = try runTool(tool, ["--experimental-dump-help"])
            XCTAssertEqual(r.status, 0, "\(tool) --experimental-dump-help: \(r.err)")
            let json = try JSONSerialization.jsonObject(with: Data(r.out)) as? [String: Any]
            guard let command = json?["command"] as? [String: Any] else { throw ToolError("\(tool): no command in the help dump") }
            walk(command, path: [tool])
        }
        return out
    }

    /// The refusal every out-of-domain value gets: one line naming the option and its domain, exit
    /// status 1, nothing written.
    func testEveryNumericOptionRefusesValuesOutsideItsDomain() throws {
        let options = try Self.allOptions()
        let numeric = options.filter { $0.domain != nil }
        // Every tool has some (the count guards against a dump that silently lost the options).
        XCTAssertGreaterThanOrEqual(numeric.count, 40, numeric.map(\.name).description)
        for tool in Self.tools {
            XCTAssertTrue(numeric.contains { $0.command[0] == tool }, "\(tool) shows no numeric option with a domain")
        }
        var refusals: [(OptionInfo, String)] = []
        for o in numeric {
            let bounded = o.domain!.contains(" to ") || o.domain!.contains("at most") || o.domain!.contains(" or ")
            var hostile = ["nan", "inf", "abc"]
            if bounded { hostile += ["1e30", "99999999999999999999"] }
            // A negative value: the range error, not ArgumentParser's "Missing value" (every domain
            // starts at 0 or above). An array option (--gemm M N K) stops at anything that looks
            // like an option, so there it is ArgumentParser's one-line complaint, status 64.
            if o.parsing == "upToNextOption" {
                for v in ["-1", "-inf"] {
                    let r = try runTool(o.command[0], Array(o.command.dropFirst()) + [o.name, v] + o.required)
                    XCTAssertEqual(r.status, 64, "\(o.name) \(v): \(r.err)")
                    XCTAssertEqual(r.err.split(separator: "\n").count, 1, r.err)
                }
            } else {
                XCTAssertEqual(o.parsing, "unconditional", "\(o.command.joined(separator: " ")) \(o.name): a numeric option must take '-1' as its value (parsing: .unconditional)")
                hostile += ["-1", "-5", "-inf", ""]
            }
            refusals += hostile.map { (o, $0) }
        }
        let results = concurrently(refusals) { o, v in try runTool(o.command[0], Array(o.command.dropFirst()) + [o.name, v] + o.required) }
        for ((o, v), result) in zip(refusals, results) {
            let r = try result.get()
            assertRefused(r, tool: o.command[0], contains: ["\(o.name) ", "\(o.name) takes \(o.domain ?? "?")"])
            XCTAssertEqual(r.out, [], "\(o.command.joined(separator: " ")) \(o.name) \(v) wrote output")
        }
        XCTAssertGreaterThan(refusals.count, 300)
    }

    /// The issue's own cases, with the messages they now get.
    func testIssueCasesGetTheRealRangeError() throws {
        let dir = try temporaryDirectory(self)
        let emb = try Hostile.embeddingsFile(dir)
        let cases: [(String, [String], String)] = [
            ("invert", ["--prompt", emb, "--seed", "-1"], "--seed -1 is out of range: --seed takes an integer from 0 to 18446744073709551615"),
            ("invert", ["--prompt", emb, "--steps", "-1"], "--steps -1 is out of range: --steps takes an integer from 1 to 1000"),
            ("invert", ["--prompt", emb, "--guidance", "-5"], "--guidance -5 is out of range: --guidance takes a number from 0 to 100"),
            ("invert", ["--prompt", emb, "--guidance", "inf"], "--guidance inf is out of range"),
            ("denoise", ["--prompt", emb, "--mask", emb, "--guidance", "nan"], "--guidance nan is not a number"),
            ("noise-diff-mask", ["--source", emb, "--target", emb, "--guidance", "1e30"], "--guidance 1e30 is out of range"),
            ("invert", ["--prompt", emb, "--lambda-kl", "nan"], "--lambda-kl nan is not a number"),
            ("tokenize", ["--max-length", "99999999999", "a cat"], "--max-length 99999999999 is out of range: --max-length takes an integer from 2 to 4096"),
            ("denoise", ["--prompt", emb, "--mask", emb, "--strength", "2"], "--strength 2 is out of range: --strength takes a number above 0, at most 1"),
            ("tensor", ["compare", "--atol", "nan", emb, emb], "--atol nan is not a number"),
            ("tensor", ["compare", "--rtol", "nan", emb, emb], "--rtol nan is not a number"),
            ("invert", ["--prompt", emb, "--reg-steps", "100000"], "--reg-steps 100000 is out of range: --reg-steps takes an integer from 0 to 100"),
            ("vae-encode", ["--sample", "--seed", "-3"], "--seed -3 is out of range"),
            ("invert", ["--prompt", emb, "--steps", "2.5"], "--steps 2.5 is not an integer"),
            // --range lo:hi is two numbers in one option: each finite, lo < hi, and hi − lo finite.
            ("tensor", ["to-image", "--range", "nan:1", emb], "--range 'nan:1' should be lo:hi, two finite numbers"),
            ("tensor", ["to-image", "--range", "-inf:1", emb], "--range '-inf:1' should be lo:hi"),
            ("tensor", ["to-image", "--range", "1:1", emb], "--range '1:1' should be lo:hi"),
            ("tensor", ["to-image", "--range", "-3e38:3e38", emb], "--range '-3e38:3e38' should be lo:hi"),
            // A missing value: the next option was taken for it, and the message says so.
            ("invert", ["--steps", "--prompt", emb], "is the value missing?"),
        ]
        for (tool, args, fragment) in cases {
            let r = try runTool(tool, (tool == "tensor" ? [] : ["--model", Hostile.sd1]) + args, stdin: try Hostile.posterior())
            assertRefused(r, tool: tool, contains: [fragment])
            XCTAssertEqual(r.out, [])
        }
        // Values inside the domain, written as negatives or in float notation, are taken.
        let ok = try runTool("tensor", ["compare", "--atol", "0", "--rtol", "1e-3", emb, emb])
        XCTAssertEqual(ok.status, 0, ok.err)
        let range = try sh("tensor to-image --range -1:1 '\(emb)' | head -c 2")
        XCTAssertEqual(range.out, Array("P5".utf8), range.err)
    }

    /// The parser behind every numeric option, in-process: each way of writing a number in the
    /// domain is taken, everything else refused with the domain's words.
    func testNumberOptionParsing() throws {
        let steps = NumberOption<Int>("--steps", .steps)
        for (text, value) in [("50", 50), ("+50", 50), ("050", 50), ("1000", 1000), ("1", 1)] {
            XCTAssertEqual(try steps.parse(text), value, text)
        }
        // An integer is written in decimal digits (issue 23): 5e1 and 50.0 are refused, not read as 50.
        for (text, problem) in [("50.5", "is not an integer"), ("0", "is out of range"), ("1001", "is out of range"),
                                ("5e1", "is not written in decimal digits"), ("50.0", "is not written in decimal digits"),
                                ("-1", "is out of range"), ("1e300", "is not written in decimal digits"), ("nan", "is not a number"),
                                ("inf", "is out of range"), ("", "'' is not a number"), ("5 0", "'5 0' is not a number"),
                                ("--quiet", "(is the value missing?)"), ("9223372036854775808", "is out of range")] {
            assertToolError(try steps.parse(text), contains: ["--steps ", problem, "--steps takes an integer from 1 to 1000"])
        }
        let seed = NumberOption<UInt64>("--seed", .seed)
        XCTAssertEqual(try seed.parse("18446744073709551615"), .max)
        XCTAssertEqual(try seed.parse("0"), 0)
        for text in ["18446744073709551616", "-1", "1e30", "-0.5"] {
            assertToolError(try seed.parse(text), contains: ["--seed \(text) is "])
        }
        let guidance = NumberOption<Float>("--guidance", .guidance)
        XCTAssertEqual(try guidance.parse("7.5"), 7.5)
        XCTAssertEqual(try guidance.parse("-0").sign, .plus, "−0 is stored as 0")
        for text in ["1e39", "100.01", "-1e-30", "nan", "-inf", "infinity"] {
            assertToolError(try guidance.parse(text), contains: ["--guidance takes a number from 0 to 100"])
        }
        XCTAssertThrowsError(try guidance.check(.nan))
        XCTAssertThrowsError(try NumberOption<Double>("--atol", .atLeast(0)).check(.infinity), "a domain without an upper bound is still finite")
        // The words of each kind of domain (--help, the man pages and the refusals use them).
        XCTAssertEqual(NumberDomain<Double>.fraction.description, "a number above 0, at most 1")
        XCTAssertEqual(NumberDomain<Int>.atLeast(0).description, "an integer of at least 0")
        XCTAssertEqual(NumberDomain<Int>.oneOf([8, 16]).description, "8 or 16")
        XCTAssertEqual(NumberDomain<Float>.guidance.description, "a number from 0 to 100")
        XCTAssertEqual(steps.helpText("Inference steps.", default: "50"), "Inference steps: an integer from 1 to 1000 (default: 50).")
        // A value from elsewhere (metadata) names where it came from and what to do.
        assertToolError(try steps.parse("0", subject: "the stack's metadata steps=", remedy: "invert again"),
                        contains: ["the stack's metadata steps=0 is out of range: --steps takes", "— invert again"])
    }

    /// Before: `tensor compare --atol nan` reported "ok" for streams differing by 5 — now refused,
    /// and the comparison itself counts a NaN tolerance as outside.
    func testCompareWithNaNToleranceNeverSaysOk() throws {
        let a = TensorRecord(name: "x", shape: [2], floats: [0, 0]), b = TensorRecord(name: "x", shape: [2], floats: [5, 0])
        XCTAssertEqual(TensorComparison(a, b, atol: .nan, rtol: 0).outside, 1)
        XCTAssertEqual(TensorComparison(a, b, atol: 0, rtol: .nan).outside, 1)
        XCTAssertEqual(TensorComparison(a, b, atol: 6, rtol: 0).outside, 0)
    }

    /// ArgumentParser's own complaints (an unknown option, a missing required option) are one
    /// line too, status 64 as the man pages say; --help and --version still print in full.
    func testCommandLineErrorsAreOneLine() throws {
        for (tool, args) in [("invert", ["--bogus"]), ("denoise", ["--prompt"]), ("tensor", ["nosuch"]), ("tensor", ["compare"]),
                             ("vae-decode", ["--record"])] {
            let r = try runTool(tool, args)
            XCTAssertEqual(r.status, 64, "\(tool) \(args): \(r.err)")
            XCTAssertEqual(r.err.split(separator: "\n").count, 1, "\(tool) \(args): \(r.err)")
            XCTAssertTrue(r.err.hasPrefix("\(tool): ") && r.err.contains(" — see \(tool) --help"), r.err)
        }
        let help = try runTool("invert", ["--help"])
        XCTAssertEqual(help.status, 0)
        XCTAssertTrue(String(decoding: help.out, as: UTF8.self).contains("--steps <steps>"))
        let version = try runTool("tensor", ["--version"])
        XCTAssertEqual(version.status, 0)
        XCTAssertTrue(String(decoding: version.out, as: UTF8.self).hasPrefix("diffedit "))
    }

    /// Every numeric option is declared from its NumberOption (`@Option(Numbers.x, …)`, which
    /// brings the transform and `.unconditional` parsing), or spells both out: read from the sources, so an option added without a domain fails here even before
    /// it shows in --help.
    func testNumericOptionsAreDeclaredWithADomain() throws {
        let sources = repositoryRoot.appendingPathComponent("Sources")
        var files = Self.tools.map { sources.appendingPathComponent("\($0)/main.swift").path }
        files += try FileManager.default.contentsOfDirectory(atPath: sources.appendingPathComponent("DiffEditCLI").path)
            .map { sources.appendingPathComponent("DiffEditCLI/\($0)").path }
        let numericVar = try NSRegularExpression(pattern: #"^\s*(public )?var \w+(: (Int|Int32|Int64|UInt64|Float|Double|\[Int\]|\[Float\]|\[Double\])\??| = -?[0-9][0-9_.e]*)\b"#)
        var declarations = 0
        for f in files {
            let lines = try String(contentsOfFile: f, encoding: .utf8).components(separatedBy: "\n")
            var pending: String?
            for line in lines {
                if line.contains("@Option(") { pending = "" }
                if pending != nil { pending! += line + "\n" }
                if let decl = pending, line.range(of: #"^\s*(public )?var "#, options: .regularExpression) != nil {
                    pending = nil
                    guard numericVar.firstMatch(in: line, range: NSRange(line.startIndex..., in: line)) != nil else { continue }
                    declarations += 1
                    // `@Option(Numbers.steps, …)`: declared from its NumberOption, which gives the
                    // transform and .unconditional parsing (NumberOptionDeclaration.swift).
                    if decl.range(of: #"@Option\(\w+\.\w+,"#, options: .regularExpression) != nil { continue }
                    XCTAssertTrue(decl.contains("transform:"), "\(f): a numeric option without its NumberOption transform:\n\(decl)")
                    XCTAssertTrue(decl.contains(".unconditional") || decl.contains(".upToNextOption"),
                                  "\(f): a numeric option that ArgumentParser would not give '-1':\n\(decl)")
                }
            }
        }
        XCTAssertGreaterThanOrEqual(declarations, 35, "the source scan found too few numeric options")
    }

    /// Every numeric option's domain, as --help states it, is in its man page too.
    func testManPagesStateEveryOptionDomain() throws {
        let man = repositoryRoot.appendingPathComponent("man/man1")
        var checked = 0
        for o in try Self.allOptions() where o.domain != nil {
            let raw = try String(contentsOf: man.appendingPathComponent("\(o.command[0]).1"), encoding: .utf8)
            // The man page's words, without font escapes and with the lines of a paragraph joined.
            let text = raw.replacingOccurrences(of: "\\-", with: "-").replacingOccurrences(of: "\\fB", with: "")
                .replacingOccurrences(of: "\\fI", with: "").replacingOccurrences(of: "\\fR", with: "")
                .replacingOccurrences(of: "\\fP", with: "")
                .replacingOccurrences(of: "\\(en", with: "-")
            let paragraphs = text.components(separatedBy: "\n.TP\n").map {
                $0.components(separatedBy: "\n").map { l in l.hasPrefix(".") ? l.split(separator: " ", maxSplits: 1).dropFirst().joined() : l }
                    .joined(separator: " ").replacingOccurrences(of: "\"", with: "")
            }
            let mine = paragraphs.filter { $0.hasPrefix(o.name + " ") || $0.hasPrefix(o.name + ",") || $0.contains(", " + o.name + " ") }
            XCTAssertFalse(mine.isEmpty, "\(o.command[0]).1 has no paragraph for \(o.name)")
            XCTAssertTrue(mine.contains { $0.contains(o.domain!) }, "\(o.command[0]).1: the paragraph of \(o.name) lacks '\(o.domain!)': \(mine)")
            checked += 1
        }
        XCTAssertGreaterThanOrEqual(checked, 40)
    }

    /// Settings that were silently ignored are refused: a DIFFEDIT_MEMORY_LIMIT that is not a
    /// positive number of bytes, and an empty --model (it fell back to the demo model).
    func testMalformedSettingsAreRefused() throws {
        var env = ProcessInfo.processInfo.environment
        for bad in ["abc", "-1", "0", "1.5e9", "12 GB"] {
            env["DIFFEDIT_MEMORY_LIMIT"] = bad
            let r = try runTool("vae-encode", ["--model", Hostile.sd1, Fixtures.path("sd1/cat.ppm")], environment: env)
            assertRefused(r, tool: "vae-encode", contains: ["DIFFEDIT_MEMORY_LIMIT", "positive integer"])
            XCTAssertEqual(r.out, [])
        }
        env["DIFFEDIT_MEMORY_LIMIT"] = "100000000000"
        XCTAssertEqual(try runTool("vae-encode", ["--model", Hostile.sd1, Fixtures.path("sd1/cat.ppm")], environment: env).status, 0)
        env["DIFFEDIT_MEMORY_LIMIT"] = ""  // set but empty: unset
        XCTAssertEqual(try runTool("vae-encode", ["--model", Hostile.sd1, Fixtures.path("sd1/cat.ppm")], environment: env).status, 0)
        // The opt-in bf16 products: a malformed DIFFEDIT_PRECISION is refused in one line; bf16
        // asked of a CPU without AVX512-BF16 runs in f32 with a note, and the output says which ran.
        env["DIFFEDIT_PRECISION"] = "fp8"
        let badPrecision = try runTool("vae-encode", ["--model", Hostile.sd1, Fixtures.path("sd1/cat.ppm")], environment: env)
        assertRefused(badPrecision, tool: "vae-encode", contains: ["DIFFEDIT_PRECISION=fp8", "bf16"])
        XCTAssertEqual(badPrecision.out, [])
        env["DIFFEDIT_PRECISION"] = "bf16"
        let dir = try temporaryDirectory(self)
        let emb = try Hostile.embeddingsFile(dir)
        let bf = try runTool("invert", ["--model", Hostile.sd1, "--prompt", emb, "--steps", "2"], stdin: try Hostile.posterior(),
                             environment: env)
        XCTAssertEqual(bf.status, 0, bf.err)
        let records = try TensorStreamReader(pipeReader(bf.out)).readAll()
        if Precision.bf16Available {
            XCTAssertEqual(records.first?.metadata["precision"], "bf16")
            XCTAssertFalse(bf.err.contains("lacks"), bf.err)
        } else {
            XCTAssertNil(records.first?.metadata["precision"], "f32 ran: the output must not claim bf16")
            XCTAssertTrue(bf.err.contains("bf16 needs AVX512-BF16"), bf.err)
        }
        env["DIFFEDIT_PRECISION"] = nil

        for (tool, args, stdin) in [("tokenize", ["a cat"], [UInt8]()), ("vae-encode", [Fixtures.path("sd1/cat.ppm")], []),
                                    ("invert", ["--prompt", emb], try Hostile.posterior())] {
            let r = try runTool(tool, ["--model", ""] + args, stdin: stdin)
            assertRefused(r, tool: tool, contains: ["--model is empty"])
            XCTAssertEqual(r.out, [])
        }
    }

    /// denoise's steps and strength from the stack's metadata meet the same domains: an absurd
    /// value is named as such (it said "has no steps/strength metadata"), and a --strength out of
    /// range gets the range error, not "invert again with --strength 2.0".
    func testStackMetadataOutOfDomain() throws {
        let dir = try temporaryDirectory(self)
        let emb = try Hostile.embeddingsFile(dir)
        let mask = try Hostile.write(Hostile.stream([Hostile.f32("mask", [1, 1, 8, 8], fill: 1)]), dir, "mask.tensor")
        for (key, value, fragment) in [("steps", "99999999999999999999", "the stack's metadata steps=99999999999999999999 is out of range"),
                                       ("steps", "0", "steps=0 is out of range"), ("strength", "nan", "strength=nan is not a number"),
                                       ("strength", "7", "strength=7 is out of range")] {
            var meta = ["steps": "4", "strength": "0.8"]
            meta[key] = value
            let stack = Hostile.stream([Hostile.f32("inverted", [1, 3, 4, 8, 8], metadata: meta)])
            let r = try runTool("denoise", ["--model", Hostile.sd1, "--prompt", emb, "--mask", mask], stdin: stack)
            assertRefused(r, tool: "denoise", contains: [fragment, "invert again"])
            XCTAssertEqual(r.out, [])
        }
    }

    /// Unbounded work is bounded (--reg-steps, --auto-corr-rolls, --maps, unet-bench's sizes),
    /// and a long inversion step shows its regularisation progress inside the step.
    func testRegularisationIsBoundedAndShowsProgress() throws {
        let dir = try temporaryDirectory(self)
        let emb = try Hostile.embeddingsFile(dir)
        let post = try Hostile.posterior()
        for (option, value) in [("--reg-steps", "101"), ("--auto-corr-rolls", "101"), ("--lambda-auto-corr", "1001")] {
            assertRefused(try runTool("invert", ["--model", Hostile.sd1, "--prompt", emb, option, value], stdin: post), tool: "invert",
                          contains: ["\(option) \(value) is out of range"])
        }
        assertRefused(try runTool("noise-diff-mask", ["--model", Hostile.sd1, "--source", emb, "--target", emb, "--maps", "10001"], stdin: post),
                      tool: "noise-diff-mask", contains: ["--maps 10001 is out of range"])
        assertRefused(try runTool("unet-bench", ["--height", "100000"]), tool: "unet-bench", contains: ["--height 100000 is out of range"])
        // The regulariser reports each of its steps, and invert shows them inside the inversion
        // step (a log gets such a line at most once a second; here every one, to count them).
        var heard: [Int] = []
        let reg = InversionRegularizer(steps: 3, lambdaAutoCorr: 20, lambdaKL: 20, rolls: 2)
        let pred = Tensor(shape: [1, 4, 8, 8], data: TorchGenerator(seed: 1).randn(count: 256))
        _ = reg.apply(pred, sample: pred, predictionType: .epsilon, alphaProd: 0.5, generator: TorchGenerator(seed: 2),
                      progress: { heard.append($0) })
        XCTAssertEqual(heard, [1, 2, 3])
        let folder = try ModelFolder(root: Hostile.sd1)
        var options = DiffEditInversion.Options()
        options.steps = 2
        options.strength = 1
        options.regularizer = reg
        var inv = DiffEditInversion(unet: try UNet2DCondition(folder: folder), scheduler: try DDIMInverseScheduler(folder: folder), options: options)
        let text = Tensor(shape: [1, 77, 32], data: TorchGenerator(seed: 3).randn(count: 77 * 32))
        let lines = ProgressLineCapture.lines { p in
            p.partLogInterval = 0
            _ = try? inv.invert(latents: pred, prompt: text, negative: text, generator: TorchGenerator(seed: 4), progress: p)
        }
        XCTAssertEqual(lines.map { $0.components(separatedBy: "  elapsed")[0] }, [
            "invert: inversion step 1/2, regularisation 1/3", "invert: inversion step 1/2, regularisation 2/3",
            "invert: inversion step 1/2, regularisation 3/3", "invert: inversion step 1/2",
            "invert: inversion step 2/2, regularisation 1/3", "invert: inversion step 2/2, regularisation 2/3",
            "invert: inversion step 2/2, regularisation 3/3", "invert: inversion step 2/2",
        ])
    }
}

/// Captures what a ProgressReporter writes on stderr (it writes with fputs to the process's stderr).
enum ProgressLineCapture {
    static func lines(_ body: (ProgressReporter) -> Void) -> [String] {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("progress-\(UUID().uuidString)")
        let saved = dup(2)
        let fd = open(dir.path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        fflush(stderr)
        dup2(fd, 2)
        close(fd)
        body(ProgressReporter(tool: "invert", quiet: false, force: true))
        fflush(stderr)
        dup2(saved, 2)
        close(saved)
        let text = (try? String(contentsOf: dir, encoding: .utf8)) ?? ""
        try? FileManager.default.removeItem(at: dir)
        return text.split(separator: "\n").map(String.init)
    }
}
