import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// examples/Makefile and the recipes that run it (issue 23): no file name runs code or is skipped in
/// silence; a single-file model and its sidecar are dependencies like a folder's files; a killed run
/// leaves no file that looks finished; a Windows caption file gives the same embeddings; identical
/// captions are warned about in make runs. Each class is a table of members.
final class ReliabilityMakefileTests: XCTestCase {
    static let repo = repositoryRoot
    static var makefile: String { repo.appendingPathComponent("examples/Makefile").path }
    static var bin: String { URL(fileURLWithPath: toolPath("denoise")).deletingLastPathComponent().path }

    /// A work folder: images/ with the fixture cat under each of `images` (converted to the format
    /// its extension names), src.txt and dst.txt.
    private func workFolder(_ images: [String], source: String = "a photo of a cat\n", target: String = "a photo of a tiger\n") throws -> URL {
        let dir = try temporaryDirectory(self)
        let imagesDir = dir.appendingPathComponent("images")
        try FileManager.default.createDirectory(at: imagesDir, withIntermediateDirectories: true)
        let cat = Fixtures.path("sd1/cat.ppm")
        for name in images {
            let convert: String
            switch URL(fileURLWithPath: name).pathExtension.lowercased() {
            case "png": convert = "pnmtopng"
            case "jpg", "jpeg": convert = "pnmtojpeg"
            case "pgm": convert = "ppmtopgm"
            case "pbm": convert = "ppmtopgm | pgmtopbm"
            default: convert = "cat"
            }
            let r = try sh("cat '\(cat)' | \(convert)")
            XCTAssertEqual(r.status, 0, r.err)
            try Data(r.out).write(to: imagesDir.appendingPathComponent(name))
        }
        try Data(source.utf8).write(to: dir.appendingPathComponent("src.txt"))
        try Data(target.utf8).write(to: dir.appendingPathComponent("dst.txt"))
        return dir
    }

    /// make on the Makefile with the fixture model. SYNC=true: no flush to disk per output, which
    /// these tests do not need (SIGKILL leaves the page cache; ExamplesTests runs the default).
    private func make(_ model: String = Fixtures.path("sd1"), steps: Int = 2) -> String {
        "env -u DIFFEDIT_MODEL make -f '\(Self.makefile)' BIN='\(Self.bin)' MODEL='\(model)' STEPS=\(steps) SYNC=true"
    }

    private func run(_ dir: URL, _ command: String) throws -> (status: Int32, out: String, err: String) {
        let r = try sh("cd '\(dir.path)' && \(command)")
        return (r.status, String(decoding: r.out, as: UTF8.self), r.err)
    }

    /// No file named PWNED anywhere under `dir` (what the hostile names would create).
    private func assertNotPwned(_ dir: URL, _ context: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let found = try sh("find '\(dir.path)' -name PWNED")
        XCTAssertEqual(String(decoding: found.out, as: UTF8.self), "", "a file name ran code (\(context))", file: file, line: line)
    }

    private func shellQuote(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }

    // MARK: 3. No file name runs code

    /// Hostile image names, as make's refusal shows them (a control character as ?).
    static let hostile: [(file: String, shown: String)] = [
        ("$(touch${IFS}PWNED).ppm", "$(touch${IFS}PWNED).ppm"),
        ("`touch PWNED`.ppm", "`touch PWNED`.ppm"),
        (";touch PWNED;.ppm", ";touch PWNED;.ppm"),
        ("a b.ppm", "a b.ppm"),
        ("a:b.ppm", "a:b.ppm"),
        ("it's.ppm", "it's.ppm"),
        ("(x).ppm", "(x).ppm"),
        (".hidden.ppm", ".hidden.ppm"),
        ("-n.ppm", "-n.ppm"),
        ("a\"b.png", "a\"b.png"),
        ("back\\slash.jpg", "back\\slash.jpg"),
        ("100%.ppm", "100%.ppm"),
        ("#1.PPM", "#1.PPM"),
        ("x=y.pgm", "x=y.pgm"),
        ("a,b.pbm", "a,b.pbm"),
        ("$HOME.JPEG", "$HOME.JPEG"),
        ("*.ppm", "*.ppm"),
        ("new\nline.ppm", "new?line.ppm"),
        ("café.Png", "café.Png"),
    ]

    /// Each hostile name alone in images/: make refuses the folder at parse time, before any recipe
    /// runs, in one line naming the file; nothing is written and nothing runs.
    func testEachHostileImageNameIsRefusedByNameBeforeAnyRecipeRuns() throws {
        try requireCommands(["make", "pnmtopng", "pnmtojpeg", "ppmtopgm", "pgmtopbm"])
        for (name, shown) in Self.hostile {
            let dir = try workFolder(["cat.ppm", name])
            let r = try run(dir, "\(make()) -j2")
            XCTAssertEqual(r.status, 2, "\(shown): make should stop: \(r.err)")
            let lines = r.err.split(separator: "\n")
            XCTAssertEqual(lines.count, 1, "\(shown): one line: \(r.err)")
            XCTAssertTrue(r.err.contains("'\(shown)'"), "\(shown) is not named: \(r.err)")
            XCTAssertTrue(r.err.contains("images/ holds images whose names"), r.err)
            XCTAssertFalse(r.err.contains("'cat.ppm'"), "a safe name is not refused: \(r.err)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("out").path), "\(shown): a recipe ran")
            try assertNotPwned(dir, shown)
        }
    }

    /// Every hostile name at once, through every entry point — make's goals and the Slurm and
    /// GNU parallel recipes (which call make; stand-ins for sbatch, parallel and rsync record any
    /// call): each is refused, in one make line naming every file, before anything runs.
    func testEveryEntryPointRefusesHostileNamesNamingEveryFile() throws {
        try requireCommands(["make", "pnmtopng", "pnmtojpeg", "ppmtopgm", "pgmtopbm"])
        let dir = try workFolder(["cat.ppm"] + Self.hostile.map(\.file))
        let stubs = dir.appendingPathComponent("stubs")
        try FileManager.default.createDirectory(at: stubs, withIntermediateDirectories: true)
        for tool in ["sbatch", "parallel", "rsync"] {
            let f = stubs.appendingPathComponent(tool)
            try Data("#!/bin/sh\ntouch '\(stubs.path)/called-\(tool)'\nexit 1\n".utf8).write(to: f)
            chmod(f.path, 0o755)
        }
        try Data("cat\n".utf8).write(to: dir.appendingPathComponent("names.txt"))
        try Data("1/localhost\n".utf8).write(to: dir.appendingPathComponent("hosts"))
        let vars = "BIN='\(Self.bin)' MODEL='\(Fixtures.path("sd1"))' STEPS=2"
        let env = "env -u DIFFEDIT_MODEL PATH='\(stubs.path)':\"$PATH\" DIFFEDIT_MAKEFILE='\(Self.makefile)'"
        let examples = Self.repo.appendingPathComponent("examples").path
        let entryPoints: [(String, String)] = [
            ("make", make()),
            ("make -j2 -k", "\(make()) -j2 -k"),
            ("make names", "\(make()) -s names"),
            ("make inputs", "\(make()) -s inputs"),
            ("make prepare", "\(make()) prepare"),
            ("make shared", "\(make()) -s shared"),
            ("make -n", "\(make()) -n"),
            ("make -q", "\(make()) -q"),
            ("make one target", "\(make()) out/cat.montage.png"),
            ("submit.sh", "\(env) '\(examples)/slurm/submit.sh' \(vars)"),
            ("diffedit-array.sbatch (prepare)", "\(env) bash '\(examples)/slurm/diffedit-array.sbatch' \(vars)"),
            ("diffedit-array.sbatch (task)", "\(env) SLURM_ARRAY_TASK_ID=0 DIFFEDIT_NAMES=names.txt bash '\(examples)/slurm/diffedit-array.sbatch' \(vars)"),
            ("edit-over-ssh.sh", "\(env) '\(examples)/parallel/edit-over-ssh.sh' -S hosts \(vars)"),
        ]
        for (label, command) in entryPoints {
            let r = try run(dir, command)
            XCTAssertNotEqual(r.status, 0, "\(label) should refuse: \(r.out) \(r.err)")
            let lines = r.err.split(separator: "\n")
            let refusal = lines.filter { $0.contains("images/ holds images whose names") }
            XCTAssertEqual(refusal.count, 1, "\(label): one refusal line: \(r.err)")
            for (_, shown) in Self.hostile {
                XCTAssertTrue(refusal.first?.contains("'\(shown)'") == true, "\(label): \(shown) is not named: \(r.err)")
            }
            // Make's line, and at most the recipe's own line saying make refused.
            XCTAssertLessThanOrEqual(lines.count, label.hasPrefix("make") ? 1 : 2, "\(label): \(r.err)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("out").path), "\(label): something ran")
            try assertNotPwned(dir, label)
        }
        let called = try FileManager.default.contentsOfDirectory(atPath: stubs.path).filter { $0.hasPrefix("called-") }
        XCTAssertEqual(called, [], "the recipes went on after make refused")
    }

    /// Names in the safe set work whatever the case of their extension (.PPM, .Png, .JPEG, .PGM,
    /// .PBM…): all are made, and `make names` and `make inputs` list them in one order.
    func testSafeNamesWorkWithExtensionsInAnyCase() throws {
        try Fixtures.require("sd1")
        try requireCommands(["make", "pnmtopng", "pnmtojpeg", "ppmtopgm", "pgmtopbm", "pngtopnm", "jpegtopnm"])
        let files = ["X.PPM", "Y.Png", "z.JPEG", "UP.JPG", "grey.PGM", "bw.Pbm", "a+b_c-1.2.ppm", "pnm.PNM"]
        let dir = try workFolder(files)
        let names = try run(dir, "\(make()) -s names")
        XCTAssertEqual(names.status, 0, names.err)
        let expected = files.map { String($0[..<$0.lastIndex(of: ".")!]) }.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        XCTAssertEqual(names.out.split(separator: "\n").map(String.init), expected)
        let inputs = try run(dir, "\(make()) -s inputs")
        XCTAssertEqual(inputs.status, 0, inputs.err)
        let inputNames = inputs.out.split(separator: "\n").map { line -> String in
            let file = line.dropFirst("images/".count)
            return String(file[..<file.lastIndex(of: ".")!])
        }
        XCTAssertEqual(inputNames, expected, "make inputs in the order of make names: \(inputs.out)")
        XCTAssertEqual(Set(inputs.out.split(separator: "\n").map(String.init)), Set(files.map { "images/" + $0 }))

        let r = try run(dir, "\(make()) -j2")
        XCTAssertEqual(r.status, 0, r.err)
        for n in expected {
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir.appendingPathComponent("out/\(n).montage.png").path), "out/\(n).montage.png")
        }
        XCTAssertEqual(try run(dir, "\(make()) -q").status, 0, "up to date after a build")
        try assertNotPwned(dir, "safe names")
    }

    // MARK: 5. A single-file model (and its sidecar) is a dependency like a folder

    /// Modification time of a file, as make sees it.
    private func mtime(_ path: String) throws -> Date {
        try XCTUnwrap(try FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date)
    }

    /// Makes `path` newer than every file of `out` (touching it until it is; no fixed sleep).
    private func makeNewer(_ path: String, than out: URL) throws {
        let outputs = try FileManager.default.contentsOfDirectory(atPath: out.path)
        let newest = try outputs.map { try mtime(out.appendingPathComponent($0).path) }.max() ?? .distantPast
        for _ in 0..<3000 {
            XCTAssertEqual(try sh("touch '\(path)'").status, 0)
            if try mtime(path) > newest { return }
            usleep(10_000)
        }
        XCTFail("\(path) never got a modification time newer than the outputs")
    }

    func testSingleFileModelAndSidecarAreDependencies() throws {
        try requireCommands(["make", "pnmtopng", "pgmtoppm"])
        let dir = try workFolder(["cat.ppm"])
        let modelDir = dir.appendingPathComponent("model")
        try FileManager.default.createDirectory(at: modelDir, withIntermediateDirectories: true)
        let checkpoint = try SingleFileFixtures.write("sd1", in: modelDir, name: "tiny")
        let sidecar = modelDir.appendingPathComponent("tiny.diffedit.json").path
        let folder = try Hostile.modelCopy(dir)  // the control: a folder's file
        let out = dir.appendingPathComponent("out")
        let outputs = ["out/src.tensor", "out/dst.tensor", "out/cat.posterior", "out/cat.mask", "out/cat.inverted", "out/cat.edited", "out/cat.montage.png"]

        // (label, model, change): after each change every output is made again, by make alone.
        let changes: [(String, String, () throws -> Void)] = [
            ("the checkpoint is touched", checkpoint, { try self.makeNewer(checkpoint, than: out) }),
            ("the sidecar is touched", checkpoint, { try self.makeNewer(sidecar, than: out) }),
            ("the sidecar changes the scheduler", checkpoint, {
                try Hostile.editConfig(URL(fileURLWithPath: sidecar)) { $0["scheduler"] = ["beta_end": 0.013] }
                try self.makeNewer(sidecar, than: out)
            }),
            ("a folder's weights are touched", folder.path, {
                try self.makeNewer(folder.appendingPathComponent("unet/diffusion_pytorch_model.safetensors").path, than: out)
            }),
        ]
        var model = ""
        for (label, m, change) in changes {
            if m != model {
                model = m
                let first = try run(dir, "\(make(model)) -j2")
                XCTAssertEqual(first.status, 0, "\(label): first build: \(first.err)")
            }
            XCTAssertEqual(try run(dir, "\(make(model)) -q").status, 0, "\(label): up to date before the change")
            let before = try outputs.map { try mtime(dir.appendingPathComponent($0).path) }
            try change()
            XCTAssertEqual(try run(dir, "\(make(model)) -q").status, 1, "\(label): make must see the change")
            let again = try run(dir, "\(make(model)) -j2")
            XCTAssertEqual(again.status, 0, "\(label): \(again.err)")
            let after = try outputs.map { try mtime(dir.appendingPathComponent($0).path) }
            for (i, f) in outputs.enumerated() { XCTAssertNotEqual(before[i], after[i], "\(label): \(f) was not made again") }
            XCTAssertEqual(try run(dir, "\(make(model)) -q").status, 0, "\(label): up to date after")
        }

        // A sidecar that goes away (or appears) changes the model's stamp: everything is out of date.
        let moved = sidecar + ".away"
        try FileManager.default.moveItem(atPath: sidecar, toPath: moved)
        let plan = try run(dir, "\(make(checkpoint)) -n")
        for tool in ["tokenize", "vae-encode", "noise-diff-mask", "invert", "denoise", "vae-decode"] {
            XCTAssertTrue(plan.out.split(separator: "\n").contains { $0.hasPrefix(tool + " ") }, "without the sidecar \(tool) runs again: \(plan.out)")
        }
        try FileManager.default.moveItem(atPath: moved, toPath: sidecar)

        // The sidecar changes again and a new image comes in: the shared files are made again with
        // the model as it now is, so the new image's mask does not meet embeddings of another model.
        try Hostile.editConfig(URL(fileURLWithPath: sidecar)) { $0["scheduler"] = ["beta_end": 0.014] }
        try makeNewer(sidecar, than: out)
        XCTAssertEqual(try sh("cp '\(Fixtures.path("sd2/cat.ppm"))' '\(dir.path)/images/new.ppm'").status, 0)
        let added = try run(dir, "\(make(checkpoint)) -j2")
        XCTAssertEqual(added.status, 0, "a new image after the model changed: \(added.err)")
        XCTAssertEqual(try run(dir, "\(make(checkpoint)) -q").status, 0)
    }

    // MARK: 6. A killed run leaves nothing that looks finished

    /// make -j2 is killed with SIGKILL on its process group while each tool runs in turn (each
    /// round starting from an empty out/, so every tool is reached); after every kill each file
    /// under its final name is complete (byte-identical to what the finished
    /// run makes) and none is a temporary under a visible name; make then finishes the job.
    func testKilledRunLeavesNoPartialFileAndAReRunSucceeds() throws {
        try requireCommands(["make", "pamscale", "pnmtopng", "pgmtoppm", "pgrep"])
        let dir = try workFolder(["narrow.ppm"])
        // A larger image makes each UNet tool run long enough (~0.3 s) to be killed in the middle.
        XCTAssertEqual(try sh("pamscale -xsize 128 -ysize 128 '\(Fixtures.path("sd1/cat.ppm"))' > '\(dir.path)/images/big.ppm'").status, 0)
        let make = self.make(steps: 8)
        let tools = ["noise-diff-mask", "invert", "denoise", "vae-decode", "pnmtopng"]
        let script = """
            set -m  # each background job in a process group of its own
            for tool in \(tools.joined(separator: " ")); do
                # Each round from scratch, so that the job reaches its tool whatever the last kill spared.
                rm -rf out
                \(make) -j2 > "make-$tool.log" 2>&1 &
                pid=$!; hit=0
                for _ in $(seq 3000); do
                    # (by command line: the tools re-exec themselves through /proc/self/exe)
                    if pgrep -g "$pid" -f "^$tool( |$)" > /dev/null; then hit=1; break; fi
                    kill -0 "$pid" 2> /dev/null || break
                    sleep 0.005
                done
                kill -9 -- -"$pid" 2> /dev/null; wait "$pid" 2> /dev/null
                echo "$tool $hit"
                mkdir -p "snap/$tool"
                for f in out/*; do [ -f "$f" ] && cp -p "$f" "snap/$tool/"; done
            done
            """
        let kills = try run(dir, script)
        let hits = kills.out.split(separator: "\n").filter { $0.hasSuffix(" 1") }.count
        XCTAssertGreaterThanOrEqual(hits, 2, "the kills should land while the tools run: \(kills.out) \(kills.err)")

        let finish = try run(dir, "\(make) -j2")
        XCTAssertEqual(finish.status, 0, "the re-run after the kills: \(finish.err)")
        XCTAssertEqual(try run(dir, "\(make) -q").status, 0, "up to date after the re-run")
        let fm = FileManager.default
        var compared = 0
        for tool in tools {
            let snap = dir.appendingPathComponent("snap/\(tool)")
            for f in try fm.contentsOfDirectory(atPath: snap.path) {
                XCTAssertFalse(f.contains(".tmp."), "after the kill at \(tool): a temporary under a visible name: \(f)")
                let final = dir.appendingPathComponent("out/\(f)")
                XCTAssertTrue(fm.fileExists(atPath: final.path), "out/\(f) went away")
                XCTAssertEqual(try Data(contentsOf: snap.appendingPathComponent(f)), try Data(contentsOf: final),
                               "after the kill at \(tool): out/\(f) was left incomplete")
                compared += 1
            }
        }
        XCTAssertGreaterThan(compared, 0)
        let visible = try fm.contentsOfDirectory(atPath: dir.appendingPathComponent("out").path).filter { !$0.hasPrefix(".") }
        XCTAssertEqual(visible.filter { $0.contains(".tmp") }, [], "temporaries are hidden")
    }

    // MARK: 8. CRLF text is text

    /// One caption written as Windows editors write it (CR LF, a byte-order mark, no final line
    /// end) gives byte-for-byte the embedding of the plain LF file.
    func testWindowsCaptionFilesGiveTheSameEmbeddings() throws {
        try requireCommands(["make"])
        let caption = "a photo of a cat"
        let variants: [(String, [UInt8])] = [
            ("LF", Array((caption + "\n").utf8)),
            ("CRLF", Array((caption + "\r\n").utf8)),
            ("no line end", Array(caption.utf8)),
            ("BOM LF", [0xEF, 0xBB, 0xBF] + Array((caption + "\n").utf8)),
            ("BOM CRLF", [0xEF, 0xBB, 0xBF] + Array((caption + "\r\n").utf8)),
        ]
        let dir = try workFolder([])
        var reference: Data?
        for (i, (label, bytes)) in variants.enumerated() {
            try Data(bytes).write(to: dir.appendingPathComponent("src.txt"))
            let r = try run(dir, "\(make()) OUT=out\(i) out\(i)/src.tensor")
            XCTAssertEqual(r.status, 0, "\(label): \(r.err)")
            let tensor = try Data(contentsOf: dir.appendingPathComponent("out\(i)/src.tensor"))
            if let reference {
                XCTAssertEqual(tensor, reference, "\(label): not the LF caption's embedding")
            } else {
                reference = tensor
            }
        }
    }

    /// noise-diff-mask's warning that the captions are the same (the mask is the whole image) is
    /// shown in make runs; a CRLF copy of the source caption is the same caption.
    func testSameCaptionsAreWarnedAboutInMakeRuns() throws {
        try requireCommands(["make"])
        let rows: [(String, String, String, Bool)] = [
            ("same captions", "a photo of a cat\n", "a photo of a cat\n", true),
            ("same, target with CRLF", "a photo of a cat\n", "a photo of a cat\r\n", true),
            ("different captions", "a photo of a cat\n", "a photo of a tiger\n", false),
        ]
        for (label, source, target, warns) in rows {
            let dir = try workFolder(["cat.ppm"], source: source, target: target)
            let r = try run(dir, "\(make()) out/cat.mask")
            XCTAssertEqual(r.status, 0, "\(label): \(r.err)")
            XCTAssertEqual(r.err.contains("captions are the same"), warns, "\(label): \(r.err)")
        }
    }
}
