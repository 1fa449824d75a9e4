#if canImport(Glibc)
import Glibc
#endif

/// A reader over `data` through a pipe, as the tools read stdin. Inputs are capped below the
/// pipe's buffer (run.sh passes -max_len) so the write never blocks.
func pipeReader(_ data: UnsafeRawBufferPointer) -> ByteReader {
    var fds: [Int32] = [0, 0]
    guard pipe(&fds) == 0 else { fatalError("pipe: \(errno)") }
    var done = 0
    while done < data.count {
        let n = write(fds[1], data.baseAddress! + done, data.count - done)
        if n <= 0 { fatalError("pipe write: \(errno) — keep -max_len below the pipe buffer") }
        done += n
    }
    close(fds[1])
    return ByteReader(fd: fds[0], label: "fuzz", ownsFD: true)
}

@inline(never) func consume<T>(_ x: T) { withExtendedLifetime(x) {} }
