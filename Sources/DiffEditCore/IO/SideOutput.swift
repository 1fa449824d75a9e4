#if canImport(Glibc)
import Glibc
#endif

/// A signal that arrived while SideOutput held signals back (acted on when it is done).
nonisolated(unsafe) private var sideOutputHeldSignal: Int32 = 0

/// A second output file named by an option (noise-diff-mask --soft-output FILE), beside stdout.
/// Everything that can fail is checked before any work: not stdout, not an input (same device
/// and inode), a name the filesystem takes, a folder where a file can be created. A regular
/// file (or a new name) is written through a temporary file in the same folder renamed over
/// FILE at the end, so that a failed or killed run leaves neither a partial file nor a damaged
/// old one. A FIFO or character device (`/dev/null`, `/dev/stdout`, `>(…)`) is written in place,
/// as standard output would be: renaming over it would replace the node itself (as root,
/// `--soft-output /dev/null` once replaced the machine's /dev/null). Anything else is refused.
public struct SideOutput {
    public let path: String
    public let option: String
    /// Written in place (a FIFO or character device) rather than replaced.
    let inPlace: Bool
    /// The file renamed over (a symbolic link's target: the link itself stays).
    let destination: String

    /// `inputs`: the paths the tool reads ("-" is stdin); FILE may be none of them.
    public init(path: String, option: String, inputs: [String]) throws {
        self.path = path
        self.option = option
        guard !path.isEmpty, path != "-" else {
            throw ToolError("\(option) needs a file name (standard output already carries the main output) — give e.g. \(option) soft.tensor")
        }
        var st = stat()
        var destination = path
        var inPlace = false
        if stat(path, &st) == 0 {
            switch st.st_mode & S_IFMT {
            case S_IFREG:
                // Standard output (descriptor 1), then each input ("-": descriptor 0).
                for other in [nil] + inputs {
                    var o = stat()
                    let found = other == nil ? fstat(1, &o) == 0 : other == "-" ? fstat(0, &o) == 0 : stat(other!, &o) == 0
                    if found && o.st_dev == st.st_dev && o.st_ino == st.st_ino {
                        let what = other.map { $0 == "-" ? "standard input" : "the input \($0)" } ?? "standard output"
                        throw ToolError("\(option) '\(path)' is \(what) — writing it would destroy that; name another file")
                    }
                }
                var l = stat()
                if lstat(path, &l) == 0, (l.st_mode & S_IFMT) == S_IFLNK, let real = realpath(path, nil) {
                    destination = String(cString: real)
                    free(real)
                }
            case S_IFIFO, S_IFCHR:
                inPlace = true
            case S_IFDIR:
                throw ToolError("\(option) '\(path)' is a directory — give a file name")
            default:
                throw ToolError("\(option) '\(path)' is \(InputFile.kind(st.st_mode)), not a file — give a file name")
            }
        }
        self.inPlace = inPlace
        self.destination = destination
        if inPlace {
            guard access(path, W_OK) == 0 else {
                throw ToolError("\(option) '\(path)': cannot write it: \(String(cString: strerror(errno))) — name a file you can write")
            }
            return
        }
        try Self.checkCreatable(destination, option: option, shown: path)
    }

    /// Fails now, not after the run, where the file could not be made: the folder missing or
    /// unwritable, a name longer than the filesystem takes, a folder where no file can be
    /// created (/proc). A probe file is created and removed.
    static func checkCreatable(_ file: String, option: String, shown: String) throws {
        let folder = folder(of: file)
        let name = String(file[(file.lastIndex(of: "/").map(file.index(after:)) ?? file.startIndex)...])
        var dirStat = stat()
        let found = stat(folder, &dirStat) == 0
        guard found, (dirStat.st_mode & S_IFMT) == S_IFDIR else {
            let why = String(cString: strerror(found ? ENOTDIR : errno))
            throw ToolError("\(option) '\(shown)': cannot write in '\(folder)': \(why) — name a file in a folder you can write")
        }
        let nameMax = pathconf(folder, Int32(_PC_NAME_MAX))
        if nameMax > 0 && name.utf8.count > nameMax {
            throw ToolError("\(option) '\(shown)': the name is \(name.utf8.count) bytes, more than the \(nameMax) the filesystem takes — give a shorter name")
        }
        guard access(folder, W_OK) == 0 else {
            throw ToolError("\(option) '\(shown)': cannot write in '\(folder)': \(String(cString: strerror(errno))) — name a file in a folder you can write")
        }
        let probe = temporaryName(for: file)
        let fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw ToolError("\(option) '\(shown)': cannot create a file in '\(folder)': \(String(cString: strerror(errno))) — name a file in a folder you can write")
        }
        close(fd)
        unlink(probe)
    }

    static func folder(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// A short hidden name in FILE's folder (short, so that any name the filesystem takes for
    /// FILE leaves room for it).
    static func temporaryName(for file: String) -> String {
        (file.contains("/") ? folder(of: file) + "/" : "") + ".diffedit-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).tmp"
    }

    /// Writes the records to FILE (a temporary file first, renamed over FILE when complete; a
    /// FIFO or device in place). SIGINT, SIGTERM and SIGHUP are held back from the temporary
    /// file's creation to its rename or removal (and acted on right after), so that no signal
    /// leaves the temporary behind.
    public func write(_ records: TensorRecord...) throws {
        try write { out in
            let writer = TensorStreamWriter(out)
            writer.refusesProducedNonfinite = true  // as every output (NonfiniteOutput)
            for r in records { try writer.write(r) }
            try writer.flush()
        }
    }

    /// Writes what `produce` writes (composite --mask-output's image), the same way; `produce`
    /// flushes what it wrote.
    public func write(_ produce: (ByteWriter) throws -> Void) throws {
        if inPlace {
            let fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY)
            guard fd >= 0 else {
                throw ToolError("\(option) '\(path)': cannot open it: \(String(cString: strerror(errno))) — name a file you can write")
            }
            defer { close(fd) }
            try produce(ByteWriter(fd: fd, label: path))
            return
        }
        let temporary = Self.temporaryName(for: destination)
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
        try produce(ByteWriter(fd: fd, label: path))
        // On disk before the name points at it: a crash after the rename never leaves FILE empty.
        guard fsync(fd) == 0 || errno == EINVAL || errno == EROFS else {
            throw ToolError("\(option) '\(path)': cannot sync '\(temporary)': \(String(cString: strerror(errno))) — check free space")
        }
        guard rename(temporary, destination) == 0 else {
            throw ToolError("\(option) '\(path)': cannot rename '\(temporary)' to it: \(String(cString: strerror(errno))) — check the folder")
        }
        done = true
    }
}
