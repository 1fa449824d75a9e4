import ArgumentParser
import Foundation

/// The first option on a command line that the command does not know, found before ArgumentParser's
/// own complaint is reported. ArgumentParser decodes a command (and so reports a missing required
/// option or argument) before it looks at what is left over, so `invert --promt x` said "missing
/// expected argument '--prompt'" and never named the typo; the typo is the thing to fix.
///
/// The command's options come from ArgumentParser's own description of it (`_dumpHelp`, the JSON
/// of `--experimental-dump-help`), read only when parsing has already failed. The scan follows
/// ArgumentParser's reading of a command line: `--` ends the options; `--name=value`; a value
/// taken unconditionally (`parsing: .unconditional`) even when it starts with `-`; otherwise a
/// value only when it does not look like an option; an array option's values up to the next
/// option; a group of short flags (`-qv`); the first word naming a subcommand enters it (the
/// options of the commands above stay valid). A word that reads as a negative number (`-1`,
/// `-.5`, `-inf`) is never taken for an option: ArgumentParser's own complaint covers it.
struct UnknownOption: Equatable {
    /// As typed: `--promt`, `-x`.
    var name: String
    /// The closest known long option (`--prompt`), when one is close enough.
    var suggestion: String?

    /// "unknown option '--promt' — did you mean '--prompt'? (see invert --help)"
    func message(tool: String) -> String {
        if let suggestion { return "unknown option '\(name)' — did you mean '\(suggestion)'? (see \(tool) --help)" }
        return "unknown option '\(name)' — see \(tool) --help"
    }

    /// What the scan needs of one option.
    struct Known {
        enum Takes { case nothing, value, unconditionalValue, values, rest }
        var takes: Takes
    }

    /// The options of one command (its own and those of the commands above it) and its
    /// subcommands, from ArgumentParser's JSON description of the command.
    struct Command {
        var long: [String: Known] = [:]
        /// Long names in declaration order (the commands above first): the first of equally
        /// close suggestions wins, as in ArgumentParser.
        var longOrder: [String] = []
        var short: [Character: Known] = [:]
        var subcommands: [String: [String: Any]] = [:]

        init(_ json: [String: Any], inheriting parent: Command? = nil) {
            if let parent { (long, longOrder, short) = (parent.long, parent.longOrder, parent.short) }
            // Every command takes these, whether or not its description lists them.
            for n in ["help", "version", "experimental-dump-help"] { long[n] = Known(takes: .nothing) }
            long["generate-completion-script"] = Known(takes: .value)
            short["h"] = Known(takes: .nothing)
            for a in json["arguments"] as? [[String: Any]] ?? [] {
                let kind = a["kind"] as? String
                guard kind == "option" || kind == "flag" else { continue }
                let takes: Known.Takes
                switch (kind, a["parsingStrategy"] as? String ?? "default") {
                case ("flag", _): takes = .nothing
                case (_, "unconditional"): takes = .unconditionalValue
                case (_, "remaining"), (_, "allRemainingInput"): takes = .rest
                case (_, "upToNextOption"): takes = .values
                default: takes = .value
                }
                for n in a["names"] as? [[String: Any]] ?? [] {
                    guard let name = n["name"] as? String else { continue }
                    switch n["kind"] as? String {
                    case "short": if let c = name.first, name.count == 1 { short[c] = Known(takes: takes) }
                    default:  // long, and longWithSingleDash (-name)
                        if long[name] == nil { longOrder.append(name) }
                        long[name] = Known(takes: takes)
                    }
                }
            }
            for s in json["subcommands"] as? [[String: Any]] ?? [] {
                if let name = s["commandName"] as? String { subcommands[name] = s }
            }
        }
    }

    /// The first unknown option of `arguments` (without the program name) for the command that
    /// ArgumentParser describes as `dump` (the text of `_dumpHelp()`), or nil.
    static func first(in arguments: [String], dump: String) -> UnknownOption? {
        guard let root = (try? JSONSerialization.jsonObject(with: Data(dump.utf8))) as? [String: Any],
              let top = root["command"] as? [String: Any] else { return nil }
        var command = Command(top)
        var positionals = 0
        var i = 0
        while i < arguments.count {
            let word = arguments[i]
            i += 1
            if word == "--" { return nil }
            guard word.hasPrefix("-"), word.count > 1, !looksLikeNumber(word) else {
                // A positional: the first one may name a subcommand.
                if positionals == 0, let sub = command.subcommands[word] {
                    command = Command(sub, inheriting: command)
                } else {
                    positionals += 1
                }
                continue
            }
            var takes: Known.Takes
            if word.hasPrefix("--") {
                let body = word.dropFirst(2)
                let name = String(body.prefix { $0 != "=" })
                guard let known = command.long[name] else {
                    return UnknownOption(name: "--" + name, suggestion: suggestion(for: "--" + name, in: command))
                }
                if body.contains("=") { continue }
                takes = known.takes
            } else {
                // -name (an option spelt with one dash), else a group of short options: -qv.
                let body = word.dropFirst()
                if let known = command.long[String(body)], body.count > 1 {
                    takes = known.takes
                } else {
                    takes = .nothing
                    for (k, c) in body.enumerated() {
                        guard let known = command.short[c] else { return UnknownOption(name: "-\(c)", suggestion: nil) }
                        if known.takes != .nothing {
                            // The rest of the group, or else the next word, is its value.
                            if k == body.count - 1 { takes = known.takes }
                            break
                        }
                    }
                }
            }
            switch takes {
            case .nothing: break
            case .rest: return nil
            case .unconditionalValue: i += 1
            case .value: if i < arguments.count, !isOption(arguments[i]) { i += 1 }
            case .values: while i < arguments.count, !isOption(arguments[i]) { i += 1 }
            }
        }
        return nil
    }

    /// A word ArgumentParser would read as an option (not `-`, not a negative number).
    static func isOption(_ word: String) -> Bool {
        word.hasPrefix("-") && word.count > 1 && !looksLikeNumber(word)
    }

    /// -1, -.5, -1e3, -inf, -nan: a negative number meant as a value.
    static func looksLikeNumber(_ word: String) -> Bool {
        let body = word.dropFirst()
        guard let c = body.first else { return false }
        return c.isNumber || c == "." || ["inf", "infinity", "nan"].contains(body.lowercased())
    }

    /// The known long option closest to `name` when it is close (edit distance under 4, as
    /// ArgumentParser's own "Did you mean" takes it).
    static func suggestion(for name: String, in command: Command) -> String? {
        let candidates = command.longOrder.map { "--" + $0 }
        let scored = candidates.map { ($0, editDistance($0, name)) }.filter { $0.1 < 4 }
        return scored.min { $0.1 < $1.1 }?.0  // the first of the closest
    }

    /// Levenshtein distance of two strings, by Character.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        guard !a.isEmpty else { return b.count }
        guard !b.isEmpty else { return a.count }
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }
}
