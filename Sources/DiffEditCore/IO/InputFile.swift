#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Opening a file a tool was given by name, without ever blocking on it.
///
/// `open(2)` on a FIFO waits for a writer, and reading a device may never end, so a FIFO planted
/// in place of a weight file (`mkfifo m.safetensors`) used to hang a tool for ever. Every file
/// is opened with `O_NONBLOCK` (which returns at once for a FIFO), checked with `fstat`, and
/// only then used. Files that must be whole files — weights, configs, tokenizer files,
/// sidecars, defaults — are refused unless regular. Named *streams* (a tensor stream, an image,
/// a mask) may be a pipe wherever standard input could be one: a FIFO or a character device
/// (`<(…)`, `/dev/stdin`) is accepted for them, and read blocking as stdin is.
public enum InputFile {
    /// What a path is, in words, for the one-line refusal.
    static func kind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFREG: return "a regular file"
        case S_IFDIR: return "a directory"
        case S_IFIFO: return "a FIFO (named pipe)"
        case S_IFSOCK: return "a socket"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFLNK: return "a symbolic link"
        default: return "not a regular file"
        }
    }

    /// Opens `path` for reading and returns the descriptor (blocking again, close-on-exec).
    /// `what` names the file in messages ("weights", "the model's config"). A missing file
    /// throws with `errno`'s words; anything but a regular file is refused, except a FIFO or a
    /// character device when `allowsStream`.
    public static func open(_ path: String, what: String, allowsStream: Bool = false) throws -> Int32 {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
        guard fd >= 0 else {
            let why = String(cString: strerror(errno))
            if errno == ENXIO {  // a socket, or a FIFO on some systems
                throw ToolError("\(what) '\(path)' is not a regular file (\(why)) — give a file")
            }
            throw ToolError("cannot open \(what) '\(path)': \(why) — check the path")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let why = String(cString: strerror(errno))
            close(fd)
            throw ToolError("cannot read \(what) '\(path)': \(why) — check the path")
        }
        let type = st.st_mode & S_IFMT
        let accepted = type == S_IFREG || (allowsStream && (type == S_IFIFO || type == S_IFCHR))
        guard accepted else {
            close(fd)
            let remedy = type == S_IFDIR ? "give a file in it" : allowsStream ? "give a file, a pipe or -" : "give a regular file (a copy, not a pipe or device)"
            throw ToolError("\(what) '\(path)' is \(kind(st.st_mode)), not a file to read — \(remedy)")
        }
        if type == S_IFIFO {
            // A named pipe given as a stream waits for its writer, as stdin does: a read on a
            // FIFO that no writer has opened yet would end at once with an empty input, so it is
            // opened again, blocking, now that it is known to be a pipe.
            close(fd)
            while true {
                let blocking = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)
                if blocking >= 0 { return blocking }
                if errno != EINTR {
                    throw ToolError("cannot open \(what) '\(path)': \(String(cString: strerror(errno))) — check the path")
                }
            }
        }
        // Reads block again, as on stdin.
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 { _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) }
        return fd
    }

    /// True when `path` names something (following links), whatever it is: a caller that
    /// treats a missing optional file as absent must still refuse a FIFO in its place, so it
    /// asks this, then `read`.
    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0
    }

    /// The whole of the regular file `path`, refused past `limit` bytes.
    public static func read(_ path: String, what: String, limit: Int) throws -> [UInt8] {
        let fd = try open(path, what: what)
        defer { close(fd) }
        var st = stat()
        if fstat(fd, &st) == 0 && Int(st.st_size) > limit {
            throw ToolError("\(what) '\(path)' is \(st.st_size) bytes, more than the \(limit) this file can be — is it the right file?")
        }
        var out = [UInt8]()
        out.reserveCapacity(Int(st.st_size))
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
            if n == 0 { return out }
            if n < 0 {
                if errno == EINTR { continue }
                throw ToolError("read error on \(what) '\(path)': \(String(cString: strerror(errno))) — check the file")
            }
            out.append(contentsOf: chunk[0..<n])
            if out.count > limit {
                throw ToolError("\(what) '\(path)' is more than the \(limit) bytes this file can be — is it the right file?")
            }
        }
    }

    /// `read`, or nil when nothing is at `path` (an optional file).
    public static func readIfPresent(_ path: String, what: String, limit: Int) throws -> [UInt8]? {
        guard exists(path) else { return nil }
        return try read(path, what: what, limit: limit)
    }
}
