import Foundation
import XCTest
import DiffEditTestSupport

/// The many-machine recipes, for real: scripts/test-engines.sh starts a one-node Slurm cluster
/// (munged, slurmctld, slurmd) or an sshd on 127.0.0.1, each in a temporary folder with its own
/// ports, keys and logs, runs examples/slurm/submit.sh or examples/parallel/edit-over-ssh.sh with
/// these tests' tools on the demo scene, and stops every daemon when it exits. It checks that the
/// outputs are byte-identical to plain make's, that a cancelled or failed task leaves no partial
/// file, and that a re-run does only what is missing. Skipped (not failed) where the packages
/// are not installed (`./scripts/setup-debian.sh --engines` installs them) or a daemon cannot
/// start on this machine.
final class ScaleOutTests: XCTestCase {
    /// Both engines run at once, from the class's setUp: each spends most of its minute waiting
    /// on its daemons (slurmctld's scheduling, sshd, the cancellation's grace period), not on the
    /// CPU, and they share nothing (own temporary folders, ports, keys and logs), so the two tests
    /// take about as long as one. Each test then waits for its own engine's result.
    nonisolated(unsafe) private static var runs: [String: EngineRun] = [:]

    override class func setUp() {
        super.setUp()
        for engine in ["slurm", "parallel"] { runs[engine] = EngineRun(engine) }
    }

    func testSlurmJobArrayMatchesMakeAndResubmitsOnlyWhatIsMissing() throws {
        try requireInstalled(["sbatch", "squeue", "scancel", "sinfo", "slurmctld", "slurmd", "munged"], for: "Slurm")
        let line = try result("slurm")
        XCTAssertTrue(line.contains("3-task array byte-identical to make"), line)
        XCTAssertTrue(line.contains("--missing redid only those"), line)
    }

    func testParallelOverSSHMatchesMakeAndRetriesOnlyTheFailedJob() throws {
        try requireInstalled(["parallel", "sshd", "ssh", "ssh-keygen", "rsync"], for: "GNU parallel over ssh")
        let line = try result("parallel")
        XCTAssertTrue(line.contains("3 jobs over ssh byte-identical to make"), line)
        XCTAssertTrue(line.contains("--retry-failed re-ran it alone"), line)
    }

    /// Skips unless every command is installed (on PATH or in /usr/sbin, where Debian puts the daemons).
    private func requireInstalled(_ commands: [String], for engine: String) throws {
        let missing = try commands.filter { c in
            try runProcess("/bin/bash", ["-c", "command -v '\(c)' || test -x '/usr/sbin/\(c)'"], stdin: [], environment: nil).status != 0
        }
        if !missing.isEmpty {
            throw XCTSkip("\(engine) is not installed (no \(missing.joined(separator: ", "))) — ./scripts/setup-debian.sh --engines installs it")
        }
    }

    /// scripts/test-engines.sh ENGINE's result: its PASS line; throws XCTSkip with its SKIP line,
    /// fails the test on anything else.
    private func result(_ engine: String) throws -> String {
        let r = try XCTUnwrap(Self.runs[engine], "the \(engine) run was not started").wait()
        let out = String(decoding: r.out, as: UTF8.self)
        let lines = out.split(separator: "\n").map(String.init)
        if let skip = lines.first(where: { $0.hasPrefix("SKIP \(engine):") }) {
            XCTAssertEqual(r.status, 0, r.err)
            throw XCTSkip(skip)
        }
        XCTAssertEqual(r.status, 0, "test-engines.sh \(engine):\n\(out)\n\(r.err)")
        let pass = lines.first(where: { $0.hasPrefix("PASS \(engine):") })
        XCTAssertNotNil(pass, "no PASS line from test-engines.sh \(engine):\n\(out)\n\(r.err)")
        return pass ?? ""
    }
}

/// scripts/test-engines.sh ENGINE with the tools under test, started on a thread at once.
private final class EngineRun: @unchecked Sendable {
    private var outcome: Result<(status: Int32, out: [UInt8], err: String), Error>?
    private let done = DispatchSemaphore(value: 0)

    init(_ engine: String) {
        let bin = URL(fileURLWithPath: toolPath("denoise")).deletingLastPathComponent().path
        let script = repositoryRoot.appendingPathComponent("scripts/test-engines.sh").path
        Thread { [self] in
            outcome = Result { try sh("BIN='\(bin)' '\(script)' \(engine) < /dev/null") }
            done.signal()
        }.start()
    }

    func wait() throws -> (status: Int32, out: [UInt8], err: String) {
        done.wait()
        done.signal()  // a second wait returns too
        return try outcome!.get()
    }
}
