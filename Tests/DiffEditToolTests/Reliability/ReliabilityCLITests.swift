@testable import DiffEditCore
import Foundation
import XCTest
import DiffEditTestSupport

/// The command-line items of issue 23 ("Reliability 3"), each as a table over the tools: memory
/// estimates in the stage tools and $DIFFEDIT_MEMORY_LIMIT everywhere (a), the stack's recorded
/// timesteps (b), an unknown option reported first (c), the process name after the BLAS restart
/// (d), integer options in decimal digits only (e).
final class ReliabilityCLITests: XCTestCase {
    /// A posterior, embeddings, a mask and DDIM/DPM stacks of the fixture model, made once.
    struct Inputs {
        var dir: URL
        var emb: String
        var mask: String
        var posterior: [UInt8]
        var ddim: [UInt8]
        var dpm: [UInt8]
    }

    nonisolated(unsafe) static var cached: Inputs?

    func inputs() throws -> Inputs {
        if let c = Self.cached, FileManager.default.fileExists(atPath: c.emb) { return c }
        // Kept for the whole test process (removed with the system's temporary files).
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("diffedit-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let emb = try Hostile.embeddingsFile(dir)
        let mask = try Hostile.write(Hostile.stream([Hostile.f32("mask", [1, 1, 8, 8], fill: 1)]), dir, "mask.tensor")
        let post = try Hostile.posterior()
        var stacks: [[UInt8]] = []
        for kind in ["ddim", "dpm"] {
            let r = try runTool("invert", ["--model", Hostile.sd1, "--prompt", emb, "--steps", "4", "--scheduler", kind, "-q"], stdin: post)
            XCTAssertEqual(r.status, 0, r.err)
            stacks.append(r.out)
        }
        let c = Inputs(dir: dir, emb: emb, mask: mask, posterior: post, ddim: stacks[0], dpm: stacks[1])
        Self.cached = c
        return c
    }

    /// Each stage tool's command line on the fixture model (a few steps, two maps).
    func stageRuns(_ c: Inputs) -> [(tool: String, args: [String], stdin: [UInt8])] {
        let m = ["--model", Hostile.sd1, "-q"]
        return [
            ("noise-diff-mask", m + ["--source", c.emb, "--target", c.emb, "--steps", "4", "--maps", "2"], c.posterior),
            ("invert", m + ["--prompt", c.emb, "--steps", "4"], c.posterior),
            ("denoise", m + ["--prompt", c.emb, "--mask", c.mask], c.ddim),
        ]
    }

    func environment(_ set: [String: String?]) -> [String: String] {
        var env = ProcessInfo.processInfo.environment
        for (k, v) in set { env[k] = v }
        return env
    }

    // MARK: a. memory

    /// Before: invert, noise-diff-mask and denoise never consulted $DIFFEDIT_MEMORY_LIMIT (even
    /// `abc`). Now each estimates its peak and refuses one past the limit; a generous limit runs.
    func testStageToolsRefusePastTheMemoryLimit() throws {
        let c = try inputs()
        for run in stageRuns(c) {
            for (limit, fragments) in [("1000", ["needs about", "more than the 1000 bytes $DIFFEDIT_MEMORY_LIMIT allows", "DIFFEDIT_MEMORY_LIMIT"]),
                                       ("50000000", ["needs about", "more than the 47.7 MB"])] {
                let r = try runTool(run.tool, run.args, stdin: run.stdin, environment: environment(["DIFFEDIT_MEMORY_LIMIT": limit]))
                assertRefused(r, tool: run.tool, contains: fragments)
                XCTAssertEqual(r.out, [], "\(run.tool) wrote output past the limit")
            }
            let ok = try runTool(run.tool, run.args, stdin: run.stdin, environment: environment(["DIFFEDIT_MEMORY_LIMIT": "100000000000"]))
            XCTAssertEqual(ok.status, 0, "\(run.tool) with a generous limit: \(ok.err)")
            XCTAssertFalse(ok.out.isEmpty)
        }
    }

    /// A malformed $DIFFEDIT_MEMORY_LIMIT is refused by every tool, naming the variable — not
    /// only by the two VAE tools, which were the only ones to read it.
    func testEveryToolRefusesAMalformedMemoryLimit() throws {
        let c = try inputs()
        var runs = stageRuns(c).map { ($0.tool, $0.args, $0.stdin) }
        runs += [("tensor", ["head"], c.posterior), ("tokenize", ["--model", Hostile.sd1, "a cat"], []),
                 ("encode-text", ["--model", Hostile.sd1], []), ("vae-encode", ["--model", Hostile.sd1, Fixtures.path("sd1/cat.ppm")], []),
                 ("vae-decode", ["--model", Hostile.sd1], c.posterior), ("unet-bench", ["--gemm", "4", "4", "4"], [])]
        for (tool, args, stdin) in runs {
            for bad in ["abc", "-1", "1e3x", "0", "8 GB"] {
                let r = try runTool(tool, args, stdin: stdin, environment: environment(["DIFFEDIT_MEMORY_LIMIT": bad]))
                assertRefused(r, tool: tool, contains: ["$DIFFEDIT_MEMORY_LIMIT '\(bad)' is not a number of bytes", "positive integer"])
                XCTAssertEqual(r.out, [], "\(tool) with DIFFEDIT_MEMORY_LIMIT=\(bad) wrote output")
            }
        }
    }

    /// The UNet estimate stays above every measured workspace of its calibration table
    /// (MemoryBudget.unetBytes), and within 3× of it at the sizes that matter.
    func testUNetEstimateCoversTheMeasuredWorkspace() throws {
        let sd15 = try UNetConfig(JSONConfig(values: UNetConfig.stableDiffusion15JSON, label: "sd15"))
        let demo = try UNetConfig(ModelFolder(root: Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("demo/model").path).config("unet"))
        let fixture = try UNetConfig(Fixtures.model("sd1").config("unet"))
        let MiB = 1048576.0
        let rows: [(UNetConfig, Int, Int, Double)] = [
            (sd15, 1, 8, 11.9), (sd15, 2, 32, 342.7), (sd15, 8, 32, 1095.0), (sd15, 2, 64, 1000.2),
            (demo, 2, 16, 18.2), (demo, 8, 16, 59.9), (demo, 2, 32, 67.5), (demo, 2, 64, 163.2), (demo, 2, 128, 405.3),
            (fixture, 2, 16, 4.2), (fixture, 8, 16, 14.2), (fixture, 2, 32, 22.8), (fixture, 2, 64, 50.2), (fixture, 2, 128, 147.1),
        ]
        for (config, batch, side, measured) in rows {
            let estimate = MemoryBudget.unetBytes(config: config, batch: batch, latentHeight: side, latentWidth: side, threads: 2)
            XCTAssertGreaterThan(estimate, measured * MiB, "\(config.blockOutChannels) \(batch)×\(side)²")
            if measured > 300 { XCTAssertLessThan(estimate, 3 * measured * MiB, "\(config.blockOutChannels) \(batch)×\(side)²") }
        }
        // The stage estimates grow with what the stage holds.
        let folder = try Fixtures.model("sd1")
        let shape = StageMemory.Shape(images: 1, latentHeight: 64, latentWidth: 64, tokens: 77, embeddingWidth: 32)
        XCTAssertGreaterThan(try StageMemory.noiseDiffMask(folder: folder, shape: shape, maps: 1000, maxBatch: 10),
                             try StageMemory.noiseDiffMask(folder: folder, shape: shape, maps: 10, maxBatch: 10))
        XCTAssertGreaterThan(try StageMemory.noiseDiffMask(folder: folder, shape: shape, maps: 10, maxBatch: 40),
                             try StageMemory.noiseDiffMask(folder: folder, shape: shape, maps: 10, maxBatch: 10))
        XCTAssertGreaterThan(try StageMemory.invert(folder: folder, shape: shape, steps: 1000, guidance: 7.5),
                             try StageMemory.invert(folder: folder, shape: shape, steps: 10, guidance: 7.5))
        XCTAssertGreaterThan(try StageMemory.denoise(folder: folder, shape: shape, stackLatents: 8, guidance: 7.5),
                             try StageMemory.denoise(folder: folder, shape: shape, stackLatents: 8, guidance: 1))
    }

    // MARK: b. the stack's timesteps

    /// Before: a DPM stack that lost its `scheduler` key was denoised with DDIM, status 0, another
    /// result. denoise now checks the recorded timesteps against the schedule it would run.
    func testDenoiseChecksTheStackTimesteps() throws {
        let c = try inputs()
        func stack(_ bytes: [UInt8], _ edit: (inout [String: String]) -> Void) throws -> [UInt8] {
            var records = try TensorStreamReader(pipeReader(bytes)).readAll()
            edit(&records[0].metadata)
            return records.flatMap(TensorStream.encode)
        }
        func latents(_ bytes: [UInt8]) throws -> [Float] { try TensorStreamReader(pipeReader(bytes)).readAll().first?.floats() ?? [] }
        let d = ["--model", Hostile.sd1, "--prompt", c.emb, "--mask", c.mask, "-q"]
        let dpmEdit = try runTool("denoise", d, stdin: c.dpm)
        XCTAssertEqual(dpmEdit.status, 0, dpmEdit.err)
        let ddimEdit = try runTool("denoise", d, stdin: c.ddim)
        XCTAssertEqual(ddimEdit.status, 0, ddimEdit.err)
        XCTAssertNotEqual(try latents(dpmEdit.out), try latents(ddimEdit.out))

        // (stack, extra arguments, nil = runs and gives `same`'s output, else the refusal's fragments)
        let noScheduler = try stack(c.dpm) { $0["scheduler"] = nil }
        let onlySteps = try stack(c.dpm) { m in m = ["steps": "4", "strength": "0.8"] }
        let cases: [(String, [UInt8], [String], [String]?, [UInt8])] = [
            ("DPM stack without its scheduler key", noScheduler, [],
             ["timesteps (401,201,1) are not those of --scheduler ddim at 4 steps", "ddim was assumed", "--scheduler dpm at 4 steps"], []),
            ("the same, --scheduler dpm", noScheduler, ["--scheduler", "dpm"], nil, dpmEdit.out),
            ("the same, --scheduler ddim", noScheduler, ["--scheduler", "ddim"], ["not those of --scheduler ddim", "--scheduler dpm at 4 steps"], []),
            ("DPM stack with steps and strength only (to-npy/from-npy)", onlySteps, [],
             ["records neither its timesteps nor its scheduler", "--scheduler ddim or dpm"], []),
            ("the same, --scheduler dpm", onlySteps, ["--scheduler", "dpm"], nil, dpmEdit.out),
            ("DPM timesteps in a stack that says ddim", try stack(c.dpm) { $0["scheduler"] = "ddim" }, [],
             ["--scheduler dpm at 4 steps, though the stack names scheduler ddim", "invert again"], []),
            ("DDIM stack without the key (inverted before --scheduler existed)", try stack(c.ddim) { $0["scheduler"] = nil }, [], nil, ddimEdit.out),
            ("timesteps of no schedule", try stack(c.ddim) { $0["timesteps"] = "7,5,1" }, [],
             ["nor those of any scheduler and step count", "invert again"], []),
            ("malformed timesteps", try stack(c.ddim) { $0["timesteps"] = "501,x,1" }, [], ["not a list of timesteps", "invert again"], []),
            ("timesteps for another count", try stack(c.ddim) { $0["timesteps"] = "501,1" }, [], ["holds 3 latents but its metadata lists 2 timesteps"], []),
        ]
        for (what, bytes, extra, refusal, same) in cases {
            let r = try runTool("denoise", d + extra, stdin: bytes)
            if let refusal {
                assertRefused(r, tool: "denoise", contains: refusal)
                XCTAssertEqual(r.out, [], what)
            } else {
                XCTAssertEqual(r.status, 0, "\(what): \(r.err)")
                XCTAssertEqual(try latents(r.out), try latents(same), what)
            }
        }
        // The issue's own detour, through the tools.
        let pickDir = c.dir.path
        try Data(c.dpm).write(to: c.dir.appendingPathComponent("dpm.tensor"))
        let detour = try sh("cd '\(pickDir)' && tensor to-npy --name inverted dpm.tensor | tensor from-npy --name inverted --meta steps=4 --meta strength=0.8 | denoise --model '\(Hostile.sd1)' --prompt '\(c.emb)' --mask '\(c.mask)' -q")
        assertRefused(detour, tool: "denoise", contains: ["records neither its timesteps nor its scheduler"])
    }

    /// The check itself, in the core: what invert records for each schedule.
    func testStackScheduleTimesteps() throws {
        let folder = try Fixtures.model("sd1")
        XCTAssertEqual(try StackSchedule.timesteps(.ddim, folder: folder, steps: 4, strength: 0.8), [501, 251, 1])
        XCTAssertEqual(try StackSchedule.timesteps(.dpm, folder: folder, steps: 4, strength: 0.8), [401, 201, 1])
        XCTAssertNoThrow(try StackSchedule.check(metadata: ["timesteps": "401,201,1"], count: 3, kind: .dpm, schedulerGiven: true,
                                                 steps: 4, strength: 0.8, folder: folder))
        XCTAssertNoThrow(try StackSchedule.check(metadata: ["scheduler": "dpm"], count: 3, kind: .dpm, schedulerGiven: false,
                                                 steps: 4, strength: 0.8, folder: folder), "no timesteps, the scheduler named: taken")
        assertToolError(try StackSchedule.check(metadata: [:], count: 3, kind: .ddim, schedulerGiven: false, steps: 4, strength: 0.8, folder: folder),
                        contains: ["neither its timesteps nor its scheduler"])
        // Ambiguous timesteps: other steps and strengths fit; all are named.
        assertToolError(try StackSchedule.check(metadata: ["timesteps": "401,201,1"], count: 3, kind: .ddim, schedulerGiven: false,
                                                steps: 7, strength: 0.5, folder: folder),
                        contains: ["--scheduler ddim --steps 5", "--scheduler dpm --steps 4"])
    }

    // MARK: c. unknown options first

    /// Before: `invert --promt x` said "missing expected argument '--prompt'"; the typo was named
    /// only once every required option was there. Now it comes first, in every tool.
    func testUnknownOptionIsReportedFirst() throws {
        let cases: [(String, [String], String, String?)] = [
            ("invert", ["--promt", "x"], "--promt", "--prompt"),
            ("invert", ["--steps", "0x10", "--promt", "x"], "--promt", "--prompt"),  // before a refused value too
            ("invert", ["-q", "--zzzzzzzz"], "--zzzzzzzz", nil),
            ("invert", ["-qx"], "-x", nil),
            ("denoise", ["--promt", "x"], "--promt", "--prompt"),
            ("denoise", ["--prompt", "--msk", "m"], "--msk", "--mask"),
            ("noise-diff-mask", ["--sorce", "x"], "--sorce", "--source"),
            ("noise-diff-mask", ["--source=x", "--taget=y"], "--taget", "--target"),
            ("tensor", ["compare", "--atoll", "1"], "--atoll", "--atol"),
            ("tensor", ["to-image", "--chanel", "1"], "--chanel", "--channel"),
            ("tokenize", ["--max-lenght", "10", "a cat"], "--max-lenght", "--max-length"),
            ("encode-text", ["--clip-skp", "1"], "--clip-skp", "--clip-skip"),
            ("vae-encode", ["--sampel"], "--sampel", "--sample"),
            ("vae-decode", ["--dept", "8"], "--dept", "--depth"),
            ("unet-bench", ["--runz", "1"], "--runz", "--runs"),
        ]
        for (tool, args, name, suggestion) in cases {
            let r = try runTool(tool, args)
            XCTAssertEqual(r.status, 64, "\(tool) \(args): \(r.err)")
            XCTAssertEqual(r.err.split(separator: "\n").count, 1, "\(tool) \(args): \(r.err)")
            let expected = "\(tool): unknown option '\(name)' — " + (suggestion.map { "did you mean '\($0)'? (see \(tool) --help)" } ?? "see \(tool) --help")
            XCTAssertEqual(r.err, expected + "\n", "\(tool) \(args)")
            XCTAssertEqual(r.out, [])
        }
        // Not unknown: a value, a known short group, the = form; ArgumentParser's own complaint stays.
        for (tool, args, fragment) in [("denoise", ["--prompt=x", "-qv"], "missing expected argument '--mask"),
                                       ("invert", ["--steps", "-1"], "--steps -1 is out of range"),
                                       ("invert", ["--negative", "-", "-f"], "missing expected argument '--prompt")] {
            let r = try runTool(tool, args)
            XCTAssertFalse(r.err.contains("unknown option"), "\(tool) \(args): \(r.err)")
            XCTAssertTrue(r.err.contains(fragment), "\(tool) \(args): \(r.err)")
            XCTAssertEqual(r.err.split(separator: "\n").count, 1, r.err)
        }
        // ArgumentParser's help and usage still work, a typo beside them or not.
        for (tool, args, text) in [("invert", ["--help"], "USAGE: invert"), ("invert", ["--promt", "x", "--help"], "USAGE: invert"),
                                   ("tensor", ["help", "compare"], "USAGE: tensor compare"), ("tensor", ["compare", "-h"], "USAGE: tensor compare")] {
            let r = try runTool(tool, args)
            XCTAssertEqual(r.status, 0, "\(tool) \(args): \(r.err)")
            XCTAssertTrue(String(decoding: r.out, as: UTF8.self).contains(text), "\(tool) \(args)")
        }
    }

    // MARK: d. the process name

    /// Before: the BLAS restart exec'd /proc/self/exe, so every tool ran as "exe" (ps, top,
    /// pgrep -x, killall, ps -C). The restarted tool keeps its own name.
    func testToolsKeepTheirNameAfterTheBLASRestart() throws {
        let runs: [(String, [String])] = [
            ("tensor", ["head"]), ("tokenize", ["--model", Hostile.sd1]), ("encode-text", ["--model", Hostile.sd1]),
            ("vae-encode", ["--model", Hostile.sd1]), ("vae-decode", ["--model", Hostile.sd1]),
            ("noise-diff-mask", ["--model", Hostile.sd1, "--source", "x", "--target", "y"]),
            ("invert", ["--model", Hostile.sd1, "--prompt", "x"]), ("denoise", ["--model", Hostile.sd1, "--prompt", "x", "--mask", "y"]),
        ]
        // No OPENBLAS_THREAD_TIMEOUT: BLASKernel.prepare restarts every tool once to set it.
        let env = environment(["OPENBLAS_THREAD_TIMEOUT": nil, BLASKernel.restartMarker: nil])
        for (tool, args) in runs {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: toolPath(tool))
            p.arguments = args
            p.environment = env
            let input = Pipe()  // held open: the tool waits on stdin, after its restart
            p.standardInput = input
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            let pid = p.processIdentifier
            var restarted = false
            let deadline = Date().addingTimeInterval(60)
            while !restarted && Date() < deadline && p.isRunning {
                let environ = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/environ"))) ?? Data()
                restarted = environ.split(separator: 0).contains { $0.starts(with: Array("\(BLASKernel.restartMarker)=".utf8)) }
                if !restarted { usleep(5000) }
            }
            let comm = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?
                .trimmingCharacters(in: .newlines)
            try input.fileHandleForWriting.close()
            waitForExit(p, timeout: 60)
            XCTAssertTrue(restarted, "\(tool) did not restart (or exited first)")
            XCTAssertEqual(comm, String(tool.prefix(15)), "\(tool): /proc/PID/comm after the restart")
        }
    }

    // MARK: e. integers in decimal digits

    /// Before: `--steps 0x10` ran 16 steps and `1e1` 10 (Swift's Double(_:) reads hexadecimal
    /// and exponents). Every integer option of every tool now takes decimal digits only.
    func testIntegerOptionsTakeDecimalDigitsOnly() throws {
        let integers = try ReliabilityOptionTests.allOptions().filter {
            guard let d = $0.domain else { return false }
            return d.hasPrefix("an integer ") || !d.hasPrefix("a number ")  // "8 or 16": integer choices
        }
        XCTAssertGreaterThanOrEqual(integers.count, 25, integers.map(\.name).description)
        for tool in ReliabilityOptionTests.tools {
            XCTAssertTrue(integers.contains { $0.command[0] == tool }, "\(tool) shows no integer option")
        }
        let cases = integers.flatMap { o in ["0x10", "1e1", "1_0", " 10", "10.0", "0x1p3"].map { (o, $0) } }
        let results = concurrently(cases) { o, value in try runTool(o.command[0], Array(o.command.dropFirst()) + [o.name, value] + o.required) }
        for ((o, value), result) in zip(cases, results) {
            let r = try result.get()
            assertRefused(r, tool: o.command[0], contains: ["\(o.name) ", "\(o.name) takes \(o.domain!)"])
            XCTAssertEqual(r.out, [], "\(o.command.joined(separator: " ")) \(o.name) \(value) wrote output")
        }
        XCTAssertGreaterThan(cases.count, 150)
        // What is taken: decimal digits, an optional sign, leading zeros (decimal, not octal).
        let steps = NumberOption<Int>("--steps", .steps)
        for (text, value) in [("10", 10), ("+10", 10), ("010", 10), ("0010", 10)] { XCTAssertEqual(try steps.parse(text), value, text) }
        let seed = NumberOption<UInt64>("--seed", .seed)
        XCTAssertEqual(try seed.parse("-0"), 0)
        XCTAssertEqual(try seed.parse("+18446744073709551615"), .max)
        assertToolError(try seed.parse("0x10"), contains: ["--seed 0x10 is not written in decimal digits", "--seed takes an integer from 0", "digits 0-9"])
        assertToolError(try seed.parse("-5"), contains: ["--seed -5 is out of range"])
        // Real options still take exponents.
        XCTAssertEqual(try NumberOption<Float>("--guidance", .guidance).parse("1e1"), 10)
        let c = try inputs()
        let r = try runTool("invert", ["--model", Hostile.sd1, "--prompt", c.emb, "--steps", "+4", "--seed", "007", "-q"], stdin: c.posterior)
        XCTAssertEqual(r.status, 0, r.err)
    }
}
