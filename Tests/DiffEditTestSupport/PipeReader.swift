import Foundation
@testable import DiffEditCore

extension TensorStreamReader {
    /// Parses bytes through a pipe, as the tools read stdin.
    public func readAllFromBytes(_ bytes: [UInt8]) throws -> [TensorRecord] {
        try TensorStreamReader(pipeReader(bytes)).readAll()
    }
}

/// A ByteReader over `bytes` through a pipe (written from a thread, so any size works).
public func pipeReader(_ bytes: [UInt8]) -> ByteReader {
    var fds: [Int32] = [0, 0]
    _ = pipe(&fds)
    let w = fds[1]
    let t = Thread {
        writeAll(w, bytes)
        close(w)
    }
    t.start()
    return ByteReader(fd: fds[0], label: "stdin", ownsFD: true)
}
