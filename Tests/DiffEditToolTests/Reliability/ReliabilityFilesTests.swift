import DiffEditCore
import Foundation
import XCTest
import DiffEditTestSupport

/// Issue 23's classes 1, 2, 7 and 8 as classes: named streams never block on open and pipes
/// work where stdin would; a named output replaces nothing but a regular file and fails before
/// any work; nothing hangs under `ulimit -v`; CRLF text is text.
final class ReliabilityFilesTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("rel-files-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    /// Bounded runs: a hang becomes status 124 from timeout(1) instead of stalling the suite.
    func bounded(_ script: String, seconds: Int = 60) throws -> (status: Int32, out: [UInt8], err: String) {
        try sh("cd '\(dir.path)' && timeout -k 5 \(seconds) bash -c \(shellQuote(script))")
    }

    func shellQuote(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }

    // MARK: 1 — named streams may be pipes (they wait for their writer, as stdin does); files
    // that must be whole are refused unless regular, without blocking.

    func testNamedStreamInputsArePipesWhereStdinCouldBe() throws {
        let sd1 = Hostile.sd1
        let emb = try Hostile.embeddingsFile(dir, prompt: "a cat")
        _ = try Hostile.write(try Hostile.posterior(), dir, "post.tensor")
        // Each row: a tool reading one named stream from a FIFO whose writer starts a second
        // later (so a read before the writer opens would see an empty input).
        let rows: [(what: String, fifo: String, writer: String, command: String)] = [
            ("--prompt embeddings", "p.fifo", "cat '\(emb)'", "invert --model '\(sd1)' --steps 2 --prompt p.fifo < post.tensor"),
            ("posterior argument", "q.fifo", "cat post.tensor", "invert --model '\(sd1)' --steps 2 --prompt '\(emb)' q.fifo"),
            ("tensor stats input", "s.fifo", "cat post.tensor", "tensor stats s.fifo"),
            ("vae-encode image", "i.fifo", "cat '\(Fixtures.path("sd1/cat.ppm"))'", "vae-encode --model '\(sd1)' i.fifo"),
        ]
        for row in rows {
            let r = try bounded("mkfifo \(row.fifo); (sleep 1; \(row.writer) > \(row.fifo)) & \(row.command) > /dev/null")
            XCTAssertEqual(r.status, 0, "\(row.what) from a FIFO: \(r.err)")
        }
    }

    func testFilesThatMustBeWholeAreRefusedWithoutBlocking() throws {
        // A FIFO, a socket-like node and a directory in place of tokenizer files: refused at once.
        let nodes: [(name: String, make: String)] = [
            ("tokenizer/vocab.json", "rm %@ && mkfifo %@"),
            ("tokenizer/merges.txt", "rm %@ && mkfifo %@"),
            ("tokenizer/vocab.json", "rm %@ && mkdir %@"),
            ("tokenizer/merges.txt", "rm %@ && ln -s /dev/zero %@"),
        ]
        for node in nodes {
            let model = try Hostile.modelCopy(dir)
            let path = model.appendingPathComponent(node.name).path
            let make = node.make.replacingOccurrences(of: "%@", with: "'\(path)'")
            XCTAssertEqual(try sh(make).status, 0)
            let r = try bounded("tokenize --model '\(model.path)' 'a cat'", seconds: 30)
            XCTAssertNotEqual(r.status, 124, "\(node.make) \(node.name): tokenize hung")
            assertRefused(r, tool: "tokenize", contains: [node.name.split(separator: "/").last.map(String.init)!])
        }
    }

    // MARK: 2 — a named output replaces nothing but a regular file, and fails before any work.

    func testSoftOutputWritesDevicesAndPipesInPlaceAndReplacesOnlyRegularFiles() throws {
        _ = try Hostile.write(try Hostile.posterior(), dir, "post.tensor")
        let src = try Hostile.embeddingsFile(dir, prompt: "a cat")
        let dst = try Hostile.embeddingsFile(dir, prompt: "a dog")
        let mask = "noise-diff-mask --model '\(Hostile.sd1)' --steps 4 --source '\(src)' --target '\(dst)' --quiet"
        // A link to /dev/null: written through (the link stays a link; a rename would replace it).
        XCTAssertEqual(try sh("ln -s /dev/null '\(dir.path)/null-link'").status, 0)
        var r = try bounded("\(mask) --soft-output null-link < post.tensor > m.tensor")
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: dir.appendingPathComponent("null-link").path), "/dev/null")
        // A FIFO: written in place, read by its reader, still a FIFO afterwards.
        r = try bounded("mkfifo soft.fifo; cat soft.fifo > got.tensor & \(mask) --soft-output soft.fifo < post.tensor > m.tensor; wait; test -p soft.fifo && tensor head got.tensor")
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(String(decoding: r.out, as: UTF8.self).contains("soft"), String(decoding: r.out, as: UTF8.self))
        // Process substitution (a pipe on /dev/fd).
        r = try bounded("\(mask) --soft-output >(tensor head > ps.txt) < post.tensor > m.tensor; sleep 1; cat ps.txt")
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(String(decoding: r.out, as: UTF8.self).contains("soft"))
        // A link to a regular file: the file is replaced, the link stays.
        r = try bounded("echo old > target.tensor && ln -s target.tensor file-link && \(mask) --soft-output file-link < post.tensor > m.tensor && test -L file-link && tensor head target.tensor")
        XCTAssertEqual(r.status, 0, r.err)
        // Nodes that are neither: refused before any work, the node untouched.
        r = try bounded("python3 -c \"import socket; s = socket.socket(socket.AF_UNIX); s.bind('sock')\" && \(mask) --soft-output sock < post.tensor > m.tensor; s=$?; test -S sock && exit $s")
        assertRefused(r, tool: "noise-diff-mask", contains: ["socket"])
    }

    func testSoftOutputProblemsAreFoundBeforeAnyWork() throws {
        let src = try Hostile.embeddingsFile(dir, prompt: "a cat")
        let dst = try Hostile.embeddingsFile(dir, prompt: "a dog")
        let mask = "noise-diff-mask --model '\(Hostile.sd1)' --steps 4 --source '\(src)' --target '\(dst)'"
        let long = String(repeating: "x", count: 300) + ".tensor"
        // stdin is not a stream at all: a check made after reading it would report that instead.
        let rows: [(file: String, fragment: String)] = [
            (long, "shorter name"),
            ("/proc/diffedit-soft.tensor", "cannot create a file in '/proc'"),
            ("no/such/folder/soft.tensor", "cannot write in 'no/such/folder'"),
            ("post.tensor/soft.tensor", "cannot write in 'post.tensor'"),
        ]
        _ = try Hostile.write(Array("not a tensor stream".utf8), dir, "post.tensor")
        for row in rows {
            let r = try bounded("\(mask) --soft-output '\(row.file)' < post.tensor > m.tensor")
            assertRefused(r, tool: "noise-diff-mask", contains: [row.fragment])
        }
        // A 250-byte name is a name the filesystem takes: it works, and no temporary is left.
        let ok = String(repeating: "y", count: 243) + ".tensor"
        _ = try Hostile.write(try Hostile.posterior(), dir, "post.tensor")
        let r = try bounded("\(mask) --quiet --soft-output '\(ok)' < post.tensor > m.tensor && tensor head '\(ok)' > /dev/null && ls -A")
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertFalse(String(decoding: r.out, as: UTF8.self).contains(".tmp"), String(decoding: r.out, as: UTF8.self))
    }

    // MARK: 7 — nothing hangs under ulimit -v.

    func testEveryToolFinishesOrFailsInOneLineUnderAnAddressSpaceLimit() throws {
        _ = try Hostile.write(try Hostile.posterior(), dir, "post.tensor")
        let emb = try Hostile.embeddingsFile(dir, prompt: "a cat")
        let sd1 = Hostile.sd1
        let commands: [(tool: String, line: String)] = [
            ("tensor", "tensor --version"),
            ("tokenize", "tokenize --model '\(sd1)' 'a cat'"),
            ("vae-encode", "vae-encode --model '\(sd1)' '\(Fixtures.path("sd1/cat.ppm"))'"),
            ("invert", "invert --model '\(sd1)' --steps 2 --prompt '\(emb)' post.tensor"),
        ]
        // Below what the dynamic loader needs (≈ 120 MB) nothing of ours runs; from there on,
        // one thread, two threads, no limit.
        let cases = [200_000, 260_000, 320_000, 450_000, 700_000, 2_000_000].flatMap { limit in commands.map { (limit, $0) } }
        let results = concurrently(cases) { limit, c in try self.bounded("ulimit -v \(limit); \(c.line) > /dev/null", seconds: 60) }
        for ((limit, c), result) in zip(cases, results) {
            let r = try result.get()
            XCTAssertNotEqual(r.status, 124, "\(c.line) hung under ulimit -v \(limit)")
            if r.status != 0 {
                assertRefused(r, tool: c.tool, contains: ["address-space limit (ulimit -v \(limit))"])
            }
        }
        // Enough room: every tool runs.
        for (c, result) in zip(commands, concurrently(commands) { c in try self.bounded("ulimit -v 2000000; \(c.line) > /dev/null") }) {
            let r = try result.get()
            XCTAssertEqual(r.status, 0, "\(c.line): \(r.err)")
        }
    }

    func testThreadsThatFitTheLimit() {
        let mib = 1 << 20
        let base = 120 * mib, stack = 8 * mib
        XCTAssertEqual(AddressSpace.threadsThatFit(limit: 100 * mib, baseline: base, wanted: 2, stack: stack), 0)
        XCTAssertEqual(AddressSpace.threadsThatFit(limit: 300 * mib, baseline: base, wanted: 2, stack: stack), 1)
        XCTAssertEqual(AddressSpace.threadsThatFit(limit: 700 * mib, baseline: base, wanted: 2, stack: stack), 1,
                       "two threads fit, but would leave less than 256 MiB for the work")
        XCTAssertEqual(AddressSpace.threadsThatFit(limit: 900 * mib, baseline: base, wanted: 2, stack: stack), 2)
        XCTAssertEqual(AddressSpace.threadsThatFit(limit: 100_000 * mib, baseline: base, wanted: 8, stack: stack), 8)
        // Each thread costs two buffers and two stacks (a BLAS worker, a loop worker calling the BLAS).
        let one = AddressSpace.needed(threads: 1, baseline: base, stack: stack)
        XCTAssertEqual(AddressSpace.needed(threads: 2, baseline: base, stack: stack) - one, 2 * (130 * mib + stack))
    }

    // MARK: 8 — CRLF text is text.

    func testCRLFAndLFPromptsGiveTheSameTokens() throws {
        let rows: [(String, String)] = [
            ("a cat\r\na dog\r\n", "a cat\na dog\n"),
            ("a cat\r\na dog", "a cat\na dog"),
            ("a cat\r\n\r\na dog\r\n", "a cat\n\na dog\n"),
            ("one\r\n", "one\n"),
            ("caf\u{e9}\r\n\u{732b}\r\n", "caf\u{e9}\n\u{732b}\n"),
            ("\u{feff}a cat\r\na dog\r\n", "a cat\na dog\n"),  // Notepad's byte-order mark
            ("\u{feff}one\n", "one\n"),
        ]
        for (crlf, lf) in rows {
            let a = try runTool("tokenize", ["--model", Hostile.sd1, "--show"], stdin: Array(crlf.utf8))
            let b = try runTool("tokenize", ["--model", Hostile.sd1, "--show"], stdin: Array(lf.utf8))
            XCTAssertEqual(a.status, 0, a.err)
            XCTAssertEqual(String(decoding: a.out, as: UTF8.self), String(decoding: b.out, as: UTF8.self), "\(crlf.debugDescription)")
            XCTAssertFalse(String(decoding: a.out, as: UTF8.self).contains("\\r"), "a carriage return was tokenized")
        }
    }

    func testTextLinesSplitsLFAndCRLFAlike() {
        let rows: [(String, [String])] = [
            ("", []), ("a", ["a"]), ("a\n", ["a"]), ("a\r\n", ["a"]), ("a\r\nb", ["a", "b"]),
            ("a\n\nb\n", ["a", "", "b"]), ("a\r\n\r\nb\r\n", ["a", "", "b"]), ("\n", [""]), ("a\rb\n", ["a\rb"]),
        ]
        for (text, lines) in rows { XCTAssertEqual(TextLines.strings(Array(text.utf8)), lines, text.debugDescription) }
        XCTAssertEqual(TextLines.strings([0xEF, 0xBB, 0xBF, 0x61, 0x0A]), ["a"], "a leading byte-order mark is dropped")
        XCTAssertEqual(TextLines.strings([0xEF, 0xBB, 0xBF]), [])
        XCTAssertNil(TextLines.strings([0x61, 0xFF, 0x0A]))
    }

    func testMergesWithCRLFLoadAsWithLF() throws {
        let model = try Hostile.modelCopy(dir)
        let merges = model.appendingPathComponent("tokenizer/merges.txt")
        let lf = try String(contentsOf: merges, encoding: .utf8)
        try lf.replacingOccurrences(of: "\n", with: "\r\n").write(to: merges, atomically: true, encoding: .utf8)
        let a = try runTool("tokenize", ["--model", model.path, "--show", "a photograph of a tabby cat"])
        let b = try runTool("tokenize", ["--model", Hostile.sd1, "--show", "a photograph of a tabby cat"])
        XCTAssertEqual(a.status, 0, a.err)
        XCTAssertEqual(a.out, b.out)
    }
}
