import Foundation
import XCTest

/// Runs `bash -c script` (with pipefail) and returns (status, stdout, stderr); used for the netpbm tools and
/// mandoc, and for pipelines of our own tools (their folder is put first on PATH).
@discardableResult
func sh(_ script: String, stdin: [UInt8] = []) throws -> (status: Int32, out: [UInt8], err: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/bash")
    p.arguments = ["-c", "set -o pipefail; " + script]
    var env = ProcessInfo.processInfo.environment
    env["PATH"] = URL(fileURLWithPath: toolPath("tensor")).deletingLastPathComponent().path + ":" + (env["PATH"] ?? "/usr/bin:/bin")
    p.environment = env
    let inPipe = Pipe(), outPipe = Pipe(), errPipe = Pipe()
    p.standardInput = inPipe
    p.standardOutput = outPipe
    p.standardError = errPipe
    try p.run()
    let writer = Thread {
        inPipe.fileHandleForWriting.write(Data(stdin))
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
