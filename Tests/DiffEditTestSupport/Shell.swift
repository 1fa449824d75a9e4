import Foundation
import XCTest
import DiffEditCore

/// Runs `bash -c script` (with pipefail) and returns (status, stdout, stderr); used for the netpbm tools and
/// mandoc, and for pipelines of our own tools (their folder is put first on PATH).
@discardableResult
public func sh(_ script: String, stdin: [UInt8] = []) throws -> (status: Int32, out: [UInt8], err: String) {
    var env = ProcessInfo.processInfo.environment
    env["PATH"] = URL(fileURLWithPath: toolPath("tensor")).deletingLastPathComponent().path + ":" + (env["PATH"] ?? "/usr/bin:/bin")
    return try runProcess("/bin/bash", ["-c", "set -o pipefail; " + script], stdin: stdin, environment: env)
}

/// A hang guard for every child a test runs: far longer than any tool takes on the fixtures, so it
/// never decides a test's outcome by speed; it only stops a stuck child from stalling the suite.
public let childHangGuard: TimeInterval = 1800

/// Runs a program with `stdin` on a pipe; returns (status, stdout, stderr), each pipe read to EOF.
///
/// Race-free capture: stdin is written and stdout and stderr are read on three threads that each
/// enter a DispatchGroup *before* the process starts and leave it only at EOF, and the group is
/// waited on after the process exits, so both outputs are complete when this returns (no pipe
/// can fill up and deadlock either). A child still running after `hangGuard` seconds is killed
/// with SIGKILL and the fact is appended to stderr (so any status/stderr assertion fails).
/// With `stdout` given (e.g. a terminal), the child writes there instead of to a pipe and `out`
/// is empty.
public func runProcess(_ executable: String, _ args: [String], stdin: [UInt8], environment: [String: String]?,
                stdout: FileHandle? = nil, hangGuard: TimeInterval = childHangGuard) throws -> (status: Int32, out: [UInt8], err: String) {
    signal(SIGPIPE, SIG_IGN)  // a tool that exits without reading all of stdin must not kill the test
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = args
    if let environment { p.environment = environment }
    let inPipe = Pipe(), outPipe = Pipe(), errPipe = Pipe()
    p.standardInput = inPipe
    p.standardOutput = stdout ?? outPipe
    p.standardError = errPipe
    let group = DispatchGroup()
    let outBox = DataBox(), errBox = DataBox()
    // Entered here, before the process or any thread starts: wait() cannot return early.
    group.enter(); group.enter()
    if stdout == nil { group.enter() }
    try p.run()  // on failure nothing was started and nobody waits on the group
    let inFD = inPipe.fileHandleForWriting.fileDescriptor
    Thread {
        writeAll(inFD, stdin)
        try? inPipe.fileHandleForWriting.close()
        group.leave()
    }.start()
    Thread {
        errBox.data = errPipe.fileHandleForReading.readDataToEndOfFile()
        group.leave()
    }.start()
    if stdout == nil {
        Thread {
            outBox.data = outPipe.fileHandleForReading.readDataToEndOfFile()
            group.leave()
        }.start()
    }
    let killed = !waitForExit(p, timeout: hangGuard)
    // EOF on both pipes: the child (and anything it started that still holds them) has closed them.
    group.wait()
    var err = String(decoding: errBox.data, as: UTF8.self)
    if killed { err += "\n[test harness: \(URL(fileURLWithPath: executable).lastPathComponent) killed after \(Int(hangGuard)) s — hang guard]\n" }
    return (p.terminationStatus, [UInt8](outBox.data), err)
}

/// Waits for `p` to exit; after `timeout` seconds kills it (SIGKILL), waits for that, and returns
/// false. Polls the process state (no fixed sleep decides anything: the poll interval only bounds
/// how soon the exit is noticed).
@discardableResult
public func waitForExit(_ p: Process, timeout: TimeInterval) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning {
        if Date() >= deadline {
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            return false
        }
        usleep(2000)
    }
    p.waitUntilExit()
    return true
}

/// Fails the test (and throws) unless every command is on PATH: scripts/setup-debian.sh installs
/// netpbm and mandoc (and make comes with the toolchain's build tools), so a missing one is a broken setup, not a reason to skip.
public func requireCommands(_ names: [String], file: StaticString = #filePath, line: UInt = #line) throws {
    for name in names {
        let r = try runProcess("/bin/bash", ["-c", "command -v '\(name)'"], stdin: [], environment: nil)
        if r.status != 0 {
            XCTFail("'\(name)' is not installed — scripts/setup-debian.sh installs netpbm and mandoc; make comes with the build tools", file: file, line: line)
            throw ToolError("missing command \(name)")
        }
    }
}

public final class DataBox: @unchecked Sendable { public var data = Data() }

/// A fresh temporary directory, removed by the test's teardown block.
public func temporaryDirectory(_ test: XCTestCase) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("diffedit-test-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(at: url) }
    return url
}

/// Writes all of `bytes` to `fd` (a pipe), stopping at the first error (the reader may have gone).
public func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    bytes.withUnsafeBytes { raw in
        var done = 0
        while done < raw.count {
            let n = write(fd, raw.baseAddress! + done, raw.count - done)
            if n <= 0 { break }
            done += n
        }
    }
}

/// Runs the tool at `path` with `args`, `stdin` on a pipe and stdout on the terminal `tty` (a pty's
/// slave end); returns its exit status and stderr. For the "binary data to a terminal" refusals.
public func runWithTerminalOutput(_ path: String, _ args: [String], stdin: [UInt8], tty: Int32) throws -> (status: Int32, err: String) {
    let r = try runProcess(path, args, stdin: stdin, environment: nil, stdout: FileHandle(fileDescriptor: tty, closeOnDealloc: false))
    return (r.status, r.err)
}

/// Runs `body` for every item on a few threads at once and returns the results in the items'
/// order: the tables of tool runs (each a process that mostly starts and refuses) take a
/// fraction of the time they take one after another. Assertions stay with the caller.
public func concurrently<T, R>(_ items: [T], width: Int = 4, _ body: (T) throws -> R) -> [Result<R, Error>] {
    var results = [Result<R, Error>?](repeating: nil, count: items.count)
    let lock = NSLock()
    DispatchQueue.concurrentPerform(iterations: width) { worker in
        var i = worker
        while i < items.count {
            let r = Result { try body(items[i]) }
            lock.lock(); results[i] = r; lock.unlock()
            i += width
        }
    }
    return results.map { $0! }
}
