#if canImport(Glibc)
import Glibc
#endif

/// Standard streams as every diffedit tool uses them: one-line messages on stderr, refusing
/// binary output to a terminal, `-` for stdin. The ArgumentParser side (`CLI.run`, option
/// groups) lives in the DiffEditCLI target, so that the core library does not depend on it.
public enum CLI {
    /// Control characters from hostile input (a name holding "\r") are shown escaped, so an
    /// error is always exactly one line.
    /// A reader downstream went away (`| head`): see ByteWriter.endOnClosedPipe.
    public static func endOnClosedPipe() -> Never { ByteWriter.endOnClosedPipe() }

    public static func printError(_ tool: String, _ message: String) {
        var clean = ""
        for u in message.unicodeScalars {
            if u.value < 0x20 || u.value == 0x7F { clean += "\\x" + String(u.value, radix: 16) } else { clean.unicodeScalars.append(u) }
        }
        let line = "\(tool): \(clean)\n"
        _ = line.withCString { fputs($0, stderr) }
    }

    /// One line on stderr (notes, warnings, progress).
    public static func note(_ tool: String, _ message: String) {
        printError(tool, message)
    }

    /// Standard output as a tensor stream writer; refuses a terminal unless forced (like gzip).
    /// Records holding NaN or ±Inf the tool produced are refused (NonfiniteOutput), except by a
    /// tool that only `copiesInput` (tensor pick, tensor from-npy).
    public static func tensorOutput(force: Bool, copiesInput: Bool = false) throws -> TensorStreamWriter {
        let out = ByteWriter(fd: 1, label: "stdout")
        if out.isTerminal && !force {
            throw ToolError("refusing to write binary tensor data to a terminal — redirect stdout to a file or pipe, or use -f to force")
        }
        let writer = TensorStreamWriter(out)
        writer.refusesProducedNonfinite = !copiesInput
        return writer
    }

    /// Standard output for binary image data; refuses a terminal unless forced.
    public static func binaryOutput(force: Bool, what: String = "image data") throws -> ByteWriter {
        let out = ByteWriter(fd: 1, label: "stdout")
        if out.isTerminal && !force {
            throw ToolError("refusing to write binary \(what) to a terminal — redirect stdout to a file or pipe, or use -f to force")
        }
        return out
    }

    /// A tensor stream to read: a path, or `-`/nil for stdin. Refuses an interactive terminal on
    /// stdin, where the user most likely forgot a pipe.
    public static func tensorInput(_ path: String?) throws -> TensorStreamReader {
        let reader = try ByteReader(path: path ?? "-")
        if reader.fd == 0 && reader.isTerminal {
            throw ToolError("expected a tensor stream on stdin, which is a terminal — pipe one in or give a file")
        }
        return TensorStreamReader(reader)
    }
}
