#if canImport(Glibc)
import Glibc
#endif

/// A signal that arrived while SideOutput held signals back (acted on when it is done).
nonisolated(unsafe) private var sideOutputHeldSignal: Int32 = 0

/// A second output file named by an option (noise-diff-mask --soft-output FILE), beside stdout.
/// Checked before any work — not stdout, not an input (same device and inode), in a writable
/// folder — and written at the end through a temporary file renamed over FILE, so that a failed
/// run leaves neither a partial file nor a damaged old one.
public struct SideOutput {
    public let path: String
    public let option: String

    /// `inputs`: the paths the tool reads ("-" is stdin); FILE may be none of them.
    public init(path: String, option: String, inputs: [String]) throws {
        self.path = path
        self.option = option
        guard !path.isEmpty, path != "-" else {
            throw ToolError("\(option) needs a file name (standard output already carries the main output) — give e.g. \(option) soft.tensor")
        }
        var st = stat()
        if stat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) != S_IFDIR else { throw ToolError("\(option) '\(path)' is a directory — give a file name") }
            // Standard output (descriptor 1), then each input ("-": descriptor 0).
            for other in [nil] + inputs {
                var o = stat()
                let found = other == nil ? fstat(1, &o) == 0 : other == "-" ? fstat(0, &o) == 0 : stat(other!, &o) == 0
                if found && o.st_dev == st.st_dev && o.st_ino == st.st_ino {
                    let what = other.map { $0 == "-" ? "standard input" : "the input \($0)" } ?? "standard output"
                    throw ToolError("\(option) '\(path)' is \(what) — writing it would destroy that; name another file")
                }
            }
        }
        let folder = Self.folder(of: path)
        guard access(folder, W_OK) == 0 else {
            throw ToolError("\(option) '\(path)': cannot write in '\(folder)': \(String(cString: strerror(errno))) — name a file in a folder you can write")
        }
    }

    static func folder(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// Writes the records to FILE (a temporary file first, renamed over FILE when complete).
    /// SIGINT, SIGTERM and SIGHUP are held back from the temporary file's creation to its rename
    /// or removal (and acted on right after), so that no signal leaves the temporary behind.
    public func write(_ records: TensorRecord...) throws {
        let name = path.split(separator: "/").last.map(String.init) ?? path
        let temporary = (path.contains("/") ? Self.folder(of: path) + "/" : "") + ".\(name).\(getpid()).tmp"
        let signals = [SIGINT, SIGTERM, SIGHUP]
        sideOutputHeldSignal = 0
        let previous = signals.map { signal($0) { sideOutputHeldSignal = $0 } }
        defer {
            for (s, handler) in zip(signals, previous) { signal(s, handler) }
            if sideOutputHeldSignal != 0 { raise(sideOutputHeldSignal) }
        }
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw ToolError("\(option) '\(path)': cannot create '\(temporary)': \(String(cString: strerror(errno))) — name a file in a folder you can write")
        }
        var done = false
        defer {
            close(fd)
            if !done { unlink(temporary) }
        }
        let writer = TensorStreamWriter(ByteWriter(fd: fd, label: path))
        writer.refusesProducedNonfinite = true  // as every output (NonfiniteOutput)
        for r in records { try writer.write(r) }
        try writer.flush()
        guard rename(temporary, path) == 0 else {
            throw ToolError("\(option) '\(path)': cannot rename '\(temporary)' to it: \(String(cString: strerror(errno))) — check the folder")
        }
        done = true
    }
}
