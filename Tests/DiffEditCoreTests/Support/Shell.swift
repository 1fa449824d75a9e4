import Foundation
import XCTest

/// Runs `bash -c script` (with pipefail) and returns (status, stdout, stderr); used for the netpbm tools and
/// mandoc, and for pipelines of our own tools (their folder is put first on PATH).
@discardableResult
func sh(_ script: String, stdin: [UInt8] = []) throws -> (status: Int32, out: [UInt8], err: String) {
    var env = ProcessInfo.processInfo.environment
    env["PATH"] = URL(fileURLWithPath: toolPath("tensor")).deletingLastPathComponent().path + ":" + (env["PATH"] ?? "/usr/bin:/bin")
    return try runProcess("/bin/bash", ["-c", "set -o pipefail; " + script], stdin: stdin, environment: env)
}

/// Runs a program, feeding stdin from a thread and draining stderr on another so neither pipe
/// can fill up and deadlock; returns (status, stdout, stderr).
func runProcess(_ executable: String, _ args: [String], stdin: [UInt8], environment: [String: String]?) throws -> (status: Int32, out: [UInt8], err: String) {
    signal(SIGPIPE, SIG_IGN)  // a tool that exits without reading all of stdin must not kill the test
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = args
    if let environment { p.environment = environment }
    let inPipe = Pipe(), outPipe = Pipe(), errPipe = Pipe()
    p.standardInput = inPipe
    p.standardOutput = outPipe
    p.standardError = errPipe
    try p.run()
    let writer = Thread {
        try? inPipe.fileHandleForWriting.write(contentsOf: Data(stdin))
        try? inPipe.fileHandleForWriting.close()
    }
    writer.start()
    let box = DataBox()
    let errReader = Thread { box.data = errPipe.fileHandleForReading.readDataToEndOfFile() }
    errReader.start()
    let out = outPipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    while errReader.isExecuting { usleep(1000) }
    return (p.terminationStatus, [UInt8](out), String(decoding: box.data, as: UTF8.self))
}

final class DataBox: @unchecked Sendable { var data = Data() }

/// A fresh temporary directory, removed by the test's teardown block.
func temporaryDirectory(_ test: XCTestCase) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("diffedit-test-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(at: url) }
    return url
}

/// Writes all of `bytes` to `fd` (a pipe), stopping at the first error (the reader may have gone).
func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
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
func runWithTerminalOutput(_ path: String, _ args: [String], stdin: [UInt8], tty: Int32) throws -> (status: Int32, err: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    let inPipe = Pipe(), errPipe = Pipe()
    p.standardInput = inPipe
    p.standardOutput = FileHandle(fileDescriptor: tty, closeOnDealloc: false)
    p.standardError = errPipe
    try p.run()
    try? inPipe.fileHandleForWriting.write(contentsOf: Data(stdin))
    try? inPipe.fileHandleForWriting.close()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: errPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
}
