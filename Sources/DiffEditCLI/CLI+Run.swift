#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import DiffEditCore

// The ArgumentParser side of every diffedit tool: how a tool starts, how it ends on an error,
// and what `--version` says.

extension CLI {
    /// Runs a tool body; a ToolError becomes `tool: message` on stderr and exit status 1.
    /// A malformed $DIFFEDIT_MEMORY_LIMIT or $DIFFEDIT_PRECISION is refused first, in every tool
    /// (whether or not this run would have consulted it), rather than ignored until an input
    /// makes it matter.
    public static func run(_ tool: String, _ body: () throws -> Void) throws {
        do {
            _ = try MemoryBudget.limitBytes
            if let e = Precision.environmentError { throw e }
            try body()
            // Text printed with print() sits in stdout's buffer: flush it here so that a write
            // error (a full disk) is reported rather than lost at exit.
            if fflush(stdout) != 0 || ferror(stdout) != 0 {
                if errno == EPIPE { endOnClosedPipe() }
                throw ToolError("write error on stdout: \(String(cString: strerror(errno))) — check free space and the output path")
            }
        } catch let e as ToolError {
            // Every message should say what to do; the few that do not point at the manual.
            printError(tool, e.message.contains(" — ") ? e.message : e.message + " — see \(tool)(1)")
            throw ExitCode(1)
        }
    }

    /// `--model`'s help, the same in every tool.
    public static let modelHelp = "Model: a folder in diffusers layout or a single-file .safetensors checkpoint (default: $DIFFEDIT_MODEL, else the bundled demo model)."

    /// `--version`: the toolchain's version and the BLAS kernel that runs the products.
    public static var version: String { "diffedit \(DiffEditVersion.string); \(BLASKernel.description)" }
}

/// A diffedit tool: before its arguments are parsed, the process settles on the BLAS kernel it
/// will use (`BLASKernel.prepare`, which may start the program again once with a better one).
public protocol DiffEditTool: ParsableCommand {}

extension DiffEditTool {
    /// The tool's name in messages: its configuration's commandName, typed once.
    public static var toolName: String { configuration.commandName ?? _commandName }

    public static func main() {
        BLASKernel.prepare()
        parseAndRun()
    }
}
