#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Buffered reading from a file descriptor (a pipe, a file, a terminal): no seeking, so tools
/// work in pipelines.
public final class ByteReader {
    public let fd: Int32
    /// How the input is named in messages ("stdin", a path).
    public let label: String
    private var buffer: [UInt8]
    private var start = 0
    private var end = 0
    private var atEOF = false
    /// Bytes consumed so far.
    public private(set) var offset = 0
    private let ownsFD: Bool

    public init(fd: Int32, label: String, ownsFD: Bool = false, bufferSize: Int = 1 << 16) {
        self.fd = fd
        self.label = label
        self.ownsFD = ownsFD
        buffer = [UInt8](repeating: 0, count: bufferSize)
    }

    /// Opens a path for reading; "-" is standard input. An input that is also standard output
    /// (`tool < f > f`) is refused: see FileIdentity. A named stream may be a pipe wherever
    /// stdin may (`allowsStream`: a FIFO, `<(…)`, `/dev/stdin`); a file that must be whole (a
    /// tokenizer file) is refused unless regular. Opening never blocks (InputFile).
    public convenience init(path: String, what: String = "input", allowsStream: Bool = true) throws {
        if path == "-" {
            try FileIdentity.refuseStandardOutput(asInput: 0, path: path)
            self.init(fd: 0, label: "stdin")
            return
        }
        let fd = try InputFile.open(path, what: what, allowsStream: allowsStream)
        do { try FileIdentity.refuseStandardOutput(asInput: fd, path: path) } catch {
            close(fd)
            throw error
        }
        self.init(fd: fd, label: path, ownsFD: true)
    }

    deinit { if ownsFD { close(fd) } }

    /// True when the descriptor is a terminal (tools refuse to read binary from one).
    public var isTerminal: Bool { isatty(fd) == 1 }

    /// Refills the buffer; returns false at end of input.
    private func fill() throws -> Bool {
        if atEOF { return false }
        if start == end { start = 0; end = 0 }
        if end == buffer.count {
            if start > 0 {
                buffer.withUnsafeMutableBufferPointer { b in
                    let n = end - start
                    _ = memmove(b.baseAddress!, b.baseAddress! + start, n)
                }
                end -= start
                start = 0
            } else {
                buffer.append(contentsOf: [UInt8](repeating: 0, count: buffer.count))
            }
        }
        while true {
            let n = buffer.withUnsafeMutableBufferPointer { b in
                read(fd, b.baseAddress! + end, b.count - end)
            }
            if n > 0 { end += n; return true }
            if n == 0 { atEOF = true; return false }
            if errno == EINTR { continue }
            throw ToolError("read error on \(label): \(String(cString: strerror(errno)))")
        }
    }

    /// Returns the next byte without consuming it, or nil at end of input.
    public func peek() throws -> UInt8? {
        if start == end, try !fill() { return nil }
        return buffer[start]
    }

    /// Up to `n` next bytes without consuming them (fewer at end of input).
    public func peekBytes(upTo n: Int) throws -> [UInt8] {
        while end - start < n {
            if end == buffer.count && start > 0 {
                buffer.withUnsafeMutableBufferPointer { b in
                    _ = memmove(b.baseAddress!, b.baseAddress! + start, end - start)
                }
                end -= start
                start = 0
            }
            if try !fill() { break }
        }
        return Array(buffer[start..<min(end, start + n)])
    }

    /// True when no byte is left.
    public func isAtEnd() throws -> Bool { try peek() == nil }

    /// Reads up to and including the next "\n"; returns the line without it. Returns nil at end
    /// of input before any byte; throws when the line passes `limit` bytes or the input ends
    /// inside it.
    public func readLine(limit: Int) throws -> [UInt8]? {
        var line: [UInt8] = []
        while true {
            if start == end {
                if try !fill() {
                    if line.isEmpty { return nil }
                    throw ToolError.truncated(label, "inside a header line")
                }
            }
            let found: Int? = buffer.withUnsafeBufferPointer { b in
                var i = start
                while i < end { if b[i] == 0x0A { return i }; i += 1 }
                return nil
            }
            let stop = found ?? end
            if line.count + (stop - start) > limit {
                throw ToolError("\(label): header line longer than \(limit) bytes — not a tensor stream, or a corrupt one")
            }
            line.append(contentsOf: buffer[start..<stop])
            offset += stop - start
            if let f = found {
                start = f + 1
                offset += 1
                return line
            }
            start = end
        }
    }

    /// Fills `dest` completely; throws `truncated` if the input ends first.
    public func readExactly(into dest: UnsafeMutableRawBufferPointer, what: String) throws {
        var done = 0
        while done < dest.count {
            if start == end {
                // Large reads go straight to the destination.
                if dest.count - done >= buffer.count && !atEOF {
                    let n = read(fd, dest.baseAddress! + done, dest.count - done)
                    if n > 0 { done += n; offset += n; continue }
                    if n == 0 { atEOF = true; break }
                    if errno == EINTR { continue }
                    throw ToolError("read error on \(label): \(String(cString: strerror(errno)))")
                }
                if try !fill() { break }
            }
            let n = min(end - start, dest.count - done)
            buffer.withUnsafeBufferPointer { b in
                (dest.baseAddress! + done).copyMemory(from: b.baseAddress! + start, byteCount: n)
            }
            start += n
            done += n
            offset += n
        }
        if done < dest.count {
            throw ToolError.truncated(label, "\(what): got \(done) of \(dest.count) bytes")
        }
    }

    /// Reads `count` bytes into a new array, growing it in steps (1 MB, doubling up to 64 MB)
    /// so that a hostile declared size on a short stream never allocates much more than what
    /// actually arrived.
    public func readBytes(_ count: Int, what: String) throws -> [UInt8] {
        var step = 1 << 20
        var out = [UInt8]()
        out.reserveCapacity(min(count, step))
        while out.count < count {
            let n = min(step, count - out.count)
            step = min(step * 2, 64 << 20)
            let old = out.count
            out.append(contentsOf: repeatElement(0, count: n))
            try out.withUnsafeMutableBytes { raw in
                try readExactly(into: UnsafeMutableRawBufferPointer(rebasing: raw[old..<(old + n)]), what: what)
            }
        }
        return out
    }

    /// Reads everything that is left.
    public func readToEnd(limit: Int) throws -> [UInt8] {
        var out = [UInt8]()
        while true {
            if start == end, try !fill() { return out }
            out.append(contentsOf: buffer[start..<end])
            offset += end - start
            start = end
            if out.count > limit {
                throw ToolError("\(label): input larger than \(limit) bytes — give a smaller input")
            }
        }
    }
}

/// Buffered writing to a file descriptor. A closed pipe downstream ends the process through the
/// default SIGPIPE action (status 141, the shell convention); other write errors (a full disk)
/// are thrown.
public final class ByteWriter {
    public let fd: Int32
    public let label: String
    private var buffer: [UInt8] = []
    private let capacity: Int

    public init(fd: Int32, label: String, capacity: Int = 1 << 16) {
        self.fd = fd
        self.label = label
        self.capacity = capacity
        buffer.reserveCapacity(capacity)
    }

    public var isTerminal: Bool { isatty(fd) == 1 }

    /// A reader downstream went away (`| head`): end as the default SIGPIPE action does —
    /// silently, status 128+13 — even when the parent left SIGPIPE ignored (as Python and some
    /// test runners do), so that a pipeline never reports a spurious error.
    public static func endOnClosedPipe() -> Never {
        signal(SIGPIPE, SIG_DFL)
        raise(SIGPIPE)
        _exit(128 + SIGPIPE)
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    public func write(_ string: String) throws { try write(Array(string.utf8)) }

    public func write(_ raw: UnsafeRawBufferPointer) throws {
        if buffer.count + raw.count > capacity {
            try flush()
            if raw.count >= capacity { try writeAll(raw); return }
        }
        buffer.append(contentsOf: raw)
    }

    public func flush() throws {
        if buffer.isEmpty { return }
        try buffer.withUnsafeBytes { try writeAll($0) }
        buffer.removeAll(keepingCapacity: true)
    }

    private func writeAll(_ raw: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < raw.count {
            let n = Glibc.write(fd, raw.baseAddress! + done, raw.count - done)
            if n >= 0 { done += n; continue }
            if errno == EINTR { continue }
            if errno == EPIPE { ByteWriter.endOnClosedPipe() }
            throw ToolError("write error on \(label): \(String(cString: strerror(errno))) — check free space and the output path")
        }
    }
}

extension ToolError {
    static func truncated(_ label: String, _ detail: String) -> ToolError {
        ToolError("\(label): stream truncated \(detail) — the producer failed or the file is incomplete")
    }
}
