#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import DiffEditCore
import Foundation

// Numeric options on the command line: each is declared from its NumberOption, once
// (NumberOptionDeclaration.swift: `@Option(StageNumbers.steps, "Inference steps", default: 50)`).

extension NumberOption {
    /// The option's --help text: `abstract`, the domain and the default.
    public func help(_ abstract: String, default value: Value) -> ArgumentHelp {
        ArgumentHelp(helpText(abstract, default: value.optionText))
    }

    /// For an option without a fixed default (`defaultText` says what is used instead).
    public func help(_ abstract: String, defaultText: String?) -> ArgumentHelp {
        ArgumentHelp(helpText(abstract, default: defaultText))
    }

    /// ArgumentParser's transform for the option. ArgumentParser wraps a transform's error in its
    /// own usage message; the refusal is also kept for DiffEditTool.main, which reports it as
    /// every other refusal: one line `tool: message`, exit status 1.
    public var transform: @Sendable (String) throws -> Value {
        { text in
            do { return try self.parse(text) } catch let e as ToolError {
                CommandLineRefusal.keep(e)
                throw e
            }
        }
    }
}

/// The first option value a NumberOption refused while ArgumentParser parsed the command line.
public enum CommandLineRefusal {
    nonisolated(unsafe) public private(set) static var first: ToolError?
    static func keep(_ e: ToolError) { if first == nil { first = e } }
}

extension DiffEditTool {
    /// Parses the command line and runs the tool. A command line that does not parse ends with one
    /// line on stderr, as every other error does: an unknown option first, whatever else is wrong
    /// (`tool: unknown option '--promt' — did you mean '--prompt'? …`, status 64: ArgumentParser
    /// would report a missing required option first and name the typo only once every required
    /// option is there); then a refused option value as `tool: message` with status 1;
    /// ArgumentParser's own complaints (a missing value or argument) as `tool: complaint — see
    /// tool --help` with status 64. --help and --version print as usual.
    static func parseAndRun() {
        var command: ParsableCommand
        do {
            command = try parseAsRoot(nil)
        } catch {
            let tool = configuration.commandName ?? _commandName
            let code = exitCode(for: error)
            if code == .success && CommandLineRefusal.first == nil { exit(withError: error) }  // --help, --version
            if let unknown = UnknownOption.first(in: Array(CommandLine.arguments.dropFirst()), dump: _dumpHelp()) {
                CLI.printError(tool, unknown.message(tool: tool))
                Glibc.exit(ExitCode.validationFailure.rawValue)
            }
            if let refusal = CommandLineRefusal.first {
                CLI.printError(tool, refusal.message)
                Glibc.exit(1)
            }
            var text = message(for: error).split(whereSeparator: \.isNewline)
                .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }.joined(separator: " ")
            if let first = text.first { text = first.lowercased() + text.dropFirst() }
            CLI.printError(tool, "\(text.isEmpty ? "bad command line" : text) — see \(tool) --help")
            Glibc.exit(code.rawValue)
        }
        do {
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}
