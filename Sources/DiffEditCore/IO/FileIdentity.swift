#if canImport(Glibc)
import Glibc
#endif

/// A file as the kernel knows it — device and inode — to tell when an input and standard output
/// are the same file, as cat(1) does ("input file is output file"). `tool < f > f` and
/// `tool --mask f > f` find f emptied by the shell before the tool starts; without this check the
/// tool would report an empty input and leave the reader guessing.
public struct FileIdentity: Equatable {
    public let device: UInt64
    public let inode: UInt64
    /// Only regular files are compared: /dev/null and terminals are shared by design.
    public let isRegularFile: Bool

    public init?(descriptor fd: Int32) {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        self.init(st)
    }

    init(_ st: stat) {
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        isRegularFile = (st.st_mode & S_IFMT) == S_IFREG
    }

    /// Refuses an input (open on `fd`, named `path`, "-" for standard input) that is the same
    /// regular file as standard output: writing the output would destroy it, and with `>` the
    /// shell already has.
    public static func refuseStandardOutput(asInput fd: Int32, path: String) throws {
        guard let input = FileIdentity(descriptor: fd), input.isRegularFile, fd != 1,
              let output = FileIdentity(descriptor: 1), output == input else { return }
        let name = path == "-" ? "standard input" + (Self.pathOfStandardInput().map { " (\($0))" } ?? "") : "'\(path)'"
        let appending = fcntl(1, F_GETFL) & O_APPEND != 0
        let what = appending ? "standard output appends to it" : "the shell emptied it for standard output before the tool started"
        throw ToolError("\(name) is also standard output: \(what) — write the output to another file\(appending ? "" : ", then make the input again")")
    }

    /// The file on descriptor 0, from /proc (nil where there is none).
    static func pathOfStandardInput() -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/fd/0", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
