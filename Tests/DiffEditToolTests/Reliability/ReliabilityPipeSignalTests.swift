import DiffEditCore
import Foundation
import XCTest
import DiffEditTestSupport

/// Pipes, full disks, signals and terminals: the tools live in pipelines and must behave as
/// Unix filters do.
final class ReliabilityPipeSignalTests: XCTestCase {
    var m: String { Hostile.sd1 }

    /// A closed pipe downstream ends the tool through SIGPIPE (status 141 in the shell), silently.
    func testClosedPipeEndsQuietlyWith141() throws {
        let dir = try temporaryDirectory(self)
        let big = try Hostile.write(Hostile.stream([Hostile.f32("latents", [1, 4, 256, 256])]), dir, "big.tensor")
        let cases = [
            "seq 20000 | tokenize --model '\(m)'",                 // binary tensor output
            "seq 20000 | tokenize --model '\(m)' --show",          // text through print()
            "tensor pick -f '\(big)'",
            "tensor to-npy '\(big)'",
        ]
        for c in cases {
            let err = dir.appendingPathComponent("err").path
            let r = try sh("\(c) 2>'\(err)' | head -c 10 >/dev/null; echo ${PIPESTATUS[@]}")
            let statuses = String(decoding: r.out, as: UTF8.self).split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
            XCTAssertTrue(statuses.contains("141"), "\(c): statuses \(statuses)")
            XCTAssertEqual(try String(contentsOfFile: err, encoding: .utf8), "", "\(c) printed on a closed pipe")
        }
    }

    /// A write error (a full disk) is reported in one line with a non-zero status.
    func testWriteErrorIsReported() throws {
        let dir = try temporaryDirectory(self)
        let ids = try sh("tokenize --model '\(m)' 'a cat'").out
        let idsFile = try Hostile.write(ids, dir, "ids.tensor")
        let latents = try Hostile.write(Hostile.stream([Hostile.f32("latents", [1, 4, 2, 2])]), dir, "lat.tensor")
        let cases: [(String, String)] = [
            ("tokenize", "tokenize --model '\(m)' 'a cat'"),
            ("tokenize", "tokenize --model '\(m)' --show 'a cat'"),
            ("encode-text", "encode-text --model '\(m)' '\(idsFile)'"),
            ("vae-encode", "vae-encode --model '\(m)' '\(Fixtures.path("sd1/cat.ppm"))'"),
            ("vae-decode", "vae-decode --model '\(m)' '\(latents)'"),
            ("tensor", "tensor stats '\(latents)'"),
            ("tensor", "tensor head '\(latents)'"),
            ("tensor", "tensor pick '\(latents)'"),
        ]
        for (tool, c) in cases {
            let r = try sh("\(c) > /dev/full")
            assertRefused(r, tool: tool, contains: ["write error"])
        }
    }

    /// No tool writes temporary files: none of the sources calls a file-creating API other than
    /// the descriptors it is given, and an interrupted run leaves its directory and $TMPDIR as
    /// they were.
    func testSignalsLeaveNoTemporaryFiles() throws {
        // Static half: the sources open files read-only and write only stdout.
        let sources = repositoryRoot.appendingPathComponent("Sources")
        let e = try XCTUnwrap(FileManager.default.enumerator(atPath: sources.path), "no Sources folder at \(sources.path)")
        var scanned = 0
        // SideOutput (noise-diff-mask --soft-output FILE) creates the file it is asked for, through
        // a temporary renamed over it with SIGINT/SIGTERM/SIGHUP held back meanwhile; MaskImportTests
        // checks that no temporary is left.
        for case let f as String in e where (f.hasSuffix(".swift") || f.hasSuffix(".c")) && f != "DiffEditCore/IO/SideOutput.swift" {
            scanned += 1
            let text = try String(contentsOfFile: sources.appendingPathComponent(f).path, encoding: .utf8)
            for api in ["mkstemp", "tmpfile(", "O_CREAT", "createFile(", "temporaryDirectory", "atomically:", "fopen("] {
                XCTAssertFalse(text.contains(api), "\(f) uses \(api): a signal could leave a temporary file behind")
            }
            // Foundation's Data.write(to: URL) creates a file; our images' write(to: ByteWriter) does not.
            XCTAssertNil(text.range(of: #"\.write\(to: *(URL|url|file)"#, options: .regularExpression),
                         "\(f) writes a file through Foundation: a signal could leave it half written")
        }
        XCTAssertGreaterThan(scanned, 20, "the static scan found too few source files in \(sources.path)")
        // Dynamic half: SIGINT and SIGTERM during invert (the longest stage on the fixture).
        let post = try Hostile.posterior()
        for sig in [SIGINT, SIGTERM] {
            let dir = try temporaryDirectory(self)
            let tmp = dir.appendingPathComponent("tmp")
            try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
            let emb = try Hostile.embeddingsFile(dir)
            let input = try Hostile.write(post, dir, "post.tensor")
            let before = try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
            let p = Process()
            p.executableURL = URL(fileURLWithPath: toolPath("invert"))
            // --progress writes a line to stderr after each finished step: its first byte proves the
            // tool is inside the 200-step loop, so the signal lands mid-run (no fixed sleep).
            p.arguments = ["--model", m, "--prompt", emb, "--steps", "200", "--strength", "1", "--progress", input]
            p.currentDirectoryURL = dir
            var env = ProcessInfo.processInfo.environment
            env["TMPDIR"] = tmp.path
            p.environment = env
            let errPipe = Pipe()
            p.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
            p.standardError = errPipe
            try p.run()
            let started = waitForFirstByte(errPipe.fileHandleForReading.fileDescriptor, timeout: childHangGuard)
            XCTAssertTrue(started, "signal \(sig): invert wrote no progress before exiting or the hang guard")
            kill(p.processIdentifier, sig)
            XCTAssertTrue(waitForExit(p, timeout: childHangGuard), "signal \(sig): invert still running (hang guard killed it)")
            try? errPipe.fileHandleForReading.close()
            XCTAssertEqual(p.terminationReason, .uncaughtSignal, "signal \(sig): the tool should die by the signal")
            XCTAssertEqual(p.terminationStatus, sig)
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted(), before)
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: tmp.path), [])
        }
    }

    /// Standard output that is also an input (issue 14, item 6): `tool < f > f` and
    /// `tool --mask f > f` find f emptied by the shell before the tool starts. Each tool says so —
    /// stdin or the named input, compared by device and inode as cat(1) does — in one line instead
    /// of "empty input"; with `>>` the input is left as it was. /dev/null on both sides is fine.
    func testStandardOutputThatIsAnInputIsRefused() throws {
        let dir = try temporaryDirectory(self)
        let emb = try Hostile.embeddingsFile(dir)
        try Data(try Hostile.posterior()).write(to: dir.appendingPathComponent("post.tensor"))
        let inv = try sh("cd '\(dir.path)' && invert --model '\(m)' --prompt '\(emb)' --steps 4 -q < post.tensor > inv.tensor")
        XCTAssertEqual(inv.status, 0, inv.err)
        let files: [String: Data] = [
            "post.tensor": Data(try Hostile.posterior()),
            "inv.tensor": try Data(contentsOf: dir.appendingPathComponent("inv.tensor")),
            "mask.tensor": Data(Hostile.stream([Hostile.f32("mask", [1, 1, 8, 8], fill: 1)])),
        ]
        let stage = "--model '\(m)'"
        let cases: [(String, String, String)] = [
            ("denoise", "denoise \(stage) --prompt '\(emb)' --mask mask.tensor < inv.tensor > inv.tensor", "standard input (\(dir.path)/inv.tensor) is also standard output"),
            ("denoise", "denoise \(stage) --prompt '\(emb)' --mask mask.tensor inv.tensor > inv.tensor", "'inv.tensor' is also standard output"),
            ("denoise", "denoise \(stage) --prompt '\(emb)' --mask mask.tensor < inv.tensor > mask.tensor", "--mask mask.tensor: 'mask.tensor' is also standard output"),
            ("invert", "invert \(stage) --prompt post.tensor < post.tensor > post.tensor", "is also standard output"),
            ("vae-encode", "cp '\(Fixtures.path("sd1/cat.ppm"))' cat.ppm && vae-encode \(stage) cat.ppm > cat.ppm", "'cat.ppm' is also standard output"),
            ("tokenize", "echo 'a cat' > p.txt && tokenize \(stage) < p.txt > p.txt", "standard input (\(dir.path)/p.txt) is also standard output"),
            ("tensor", "tensor stats post.tensor > post.tensor", "'post.tensor' is also standard output"),
            ("tensor", "tensor compare mask.tensor mask.tensor > mask.tensor", "'mask.tensor' is also standard output"),
        ]
        for (tool, script, fragment) in cases {
            // Each case on fresh copies: the shell empties the file a case names.
            for (name, bytes) in files { try bytes.write(to: dir.appendingPathComponent(name)) }
            let r = try sh("cd '\(dir.path)' && \(script)")
            assertRefused(r, tool: tool, contains: [fragment, "write the output to another file"])
        }
        for (name, bytes) in files { try bytes.write(to: dir.appendingPathComponent(name)) }
        // Appending (>>): refused too, and the input keeps every byte.
        let before = try Data(contentsOf: dir.appendingPathComponent("inv.tensor"))
        let app = try sh("cd '\(dir.path)' && denoise \(stage) --prompt '\(emb)' --mask mask.tensor < inv.tensor >> inv.tensor")
        assertRefused(app, tool: "denoise", contains: ["standard output appends to it"])
        XCTAssertEqual(try Data(contentsOf: dir.appendingPathComponent("inv.tensor")), before, "the input was changed")
        // Devices are shared by design: /dev/null in and out is an empty input, nothing else.
        let null = try sh("tensor stats < /dev/null > /dev/null")
        assertRefused(null, tool: "tensor", contains: ["empty input"])
        // And a different file is fine.
        let ok = try sh("cd '\(dir.path)' && denoise \(stage) --prompt '\(emb)' --mask mask.tensor -q < inv.tensor > out.tensor")
        XCTAssertEqual(ok.status, 0, ok.err)
    }

    /// Every tool with binary output refuses a terminal on stdout (and -f overrides it).
    func testBinaryOutputToTerminalIsRefused() throws {
        let dir = try temporaryDirectory(self)
        let emb = try Hostile.embeddingsFile(dir)
        let ids = try sh("tokenize --model '\(m)' 'a cat'").out
        let post = try Hostile.posterior()
        let mask = try Hostile.write(Hostile.stream([Hostile.f32("mask", [1, 1, 8, 8], fill: 1)]), dir, "mask.tensor")
        let cases: [(String, [String], [UInt8])] = [
            ("tokenize", ["--model", m, "cat"], []),
            ("encode-text", ["--model", m], ids),
            ("vae-encode", ["--model", m, Fixtures.path("sd1/cat.ppm")], []),
            ("vae-decode", ["--model", m], post),
            ("noise-diff-mask", ["--model", m, "--source", emb, "--target", emb], post),
            ("invert", ["--model", m, "--prompt", emb], post),
            ("denoise", ["--model", m, "--prompt", emb, "--mask", mask], []),
            ("tensor", ["pick"], post),
            ("tensor", ["to-npy"], post),
        ]
        var master: Int32 = 0, slave: Int32 = 0
        // Linux always offers ptys (/dev/ptmx); without one the refusal cannot be tested, which is a failure.
        guard openpty(&master, &slave, nil, nil, nil) == 0 else { return XCTFail("openpty failed (errno \(errno)): no pty to test terminal refusals") }
        defer { close(master); close(slave) }
        for (tool, args, stdin) in cases {
            let r = try runWithTerminalOutput(toolPath(tool), args, stdin: stdin, tty: slave)
            assertRefused((r.status, [], r.err), tool: tool, contains: ["terminal", "-f"])
        }
    }
}

/// Blocks until the first byte arrives on `fd` (consumes it; true) or EOF / `timeout` seconds pass
/// (false). The timeout is a hang guard, not a speed check.
func waitForFirstByte(_ fd: Int32, timeout: TimeInterval) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while deadline.timeIntervalSinceNow > 0 {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let n = poll(&pfd, 1, Int32(min(deadline.timeIntervalSinceNow, 60) * 1000) + 1)
        if n < 0 && errno != EINTR { return false }
        if n <= 0 { continue }
        var byte: UInt8 = 0
        return read(fd, &byte, 1) == 1  // readable: a byte, or 0 at EOF (the child exited silently)
    }
    return false
}
