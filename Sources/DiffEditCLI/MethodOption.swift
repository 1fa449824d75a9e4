import ArgumentParser
import DiffEditCore

/// The editing method of invert and denoise.
public enum EditMethod: String, CaseIterable, Sendable, ExpressibleByArgument {
    /// DiffEdit (Couairon et al. 2022): DDIM inversion, masked denoising under the target caption.
    case diffedit
    /// LEDITS++ (Brack et al. 2024): edit-friendly DDPM inversion, semantic guidance per concept.
    case ledits
}

/// `--method diffedit|ledits`, defined once for invert and denoise:
/// `@OptionGroup var methodOption: MethodOption`.
public struct MethodOption: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "diffedit (DiffEdit, the default) or ledits (LEDITS++: diffusers' LEditsPPPipelineStableDiffusion; see the man page for the options of each).",
        valueName: "diffedit|ledits"))
    public var method: EditMethod = .diffedit

    public init() {}

    /// Refuses (one line) the options given that belong to the other method: `given` lists
    /// (option, was it given) pairs of options of `only`.
    public func refuse(_ given: [(String, Bool)], only: EditMethod, tool: String) throws {
        guard method != only, let first = given.first(where: { $0.1 })?.0 else { return }
        let other = only == .ledits ? "LEDITS++'s (--method ledits)" : "DiffEdit's (--method diffedit)"
        throw ToolError("\(first) is \(other) and does not apply to --method \(method.rawValue) — drop it, or run \(tool) --method \(only.rawValue)")
    }
}

/// A numeric option given as a comma list, one value per edit concept, or one value for all
/// (`--edit-guidance 6,4`): each value in its NumberOption's domain.
public struct NumberListOption<Value: OptionNumber>: Sendable {
    public let number: NumberOption<Value>
    public init(_ number: NumberOption<Value>) { self.number = number }

    /// "6,4" → [6, 4]; every element parsed (and refused) as the option itself.
    public func parse(_ text: String) throws -> [Value] {
        try text.split(separator: ",", omittingEmptySubsequences: false).map { try number.parse(String($0)) }
    }

    /// ArgumentParser's transform: a refusal is kept for the one-line report, as NumberOption's.
    var transform: @Sendable (String) throws -> [Value] {
        { text in
            do { return try self.parse(text) } catch let e as ToolError {
                CommandLineRefusal.keep(e)
                throw e
            }
        }
    }

    /// The list for `count` concepts: one value for all, or one each; nil when not given.
    public func values(_ given: [Value]?, count: Int) throws -> [Value]? {
        guard let given else { return nil }
        if given.count == 1 { return Array(repeating: given[0], count: count) }
        guard given.count == count else {
            throw ToolError("\(number.name) lists \(given.count) values for \(count) concept\(count == 1 ? "" : "s") (--edit given \(count) time\(count == 1 ? "" : "s")) — give one value for all, or one per concept in the order of --edit")
        }
        return given
    }
}

extension Option {
    /// A comma-list numeric option (NumberListOption), nil when not given.
    public init<T: OptionNumber>(_ list: NumberListOption<T>, _ abstract: String, defaultText: String?) where Value == [T]? {
        self.init(name: list.number.longName, parsing: .unconditional,
                  help: ArgumentHelp(list.number.helpText(abstract, default: defaultText)), transform: list.transform)
    }
}

/// `--edit-direction add,remove`: one direction per concept, or one for all.
public enum EditDirection: String, Sendable {
    case add, remove

    public static func parse(_ text: String) throws -> [EditDirection] {
        try text.split(separator: ",", omittingEmptySubsequences: false).map {
            guard let d = EditDirection(rawValue: String($0)) else {
                let shown = $0.isEmpty ? "''" : String($0.prefix(40))
                throw ToolError("--edit-direction \(shown) is not a direction: --edit-direction takes add or remove, a comma list (one per --edit) or one for all — e.g. --edit-direction add,remove")
            }
            return d
        }
    }

    static let transform: @Sendable (String) throws -> [EditDirection] = { text in
        do { return try parse(text) } catch let e as ToolError {
            CommandLineRefusal.keep(e)
            throw e
        }
    }
}

extension Option where Value == [EditDirection]? {
    /// `--edit-direction`.
    public init(editDirectionHelp help: String) {
        self.init(name: .customLong("edit-direction"), parsing: .unconditional,
                  help: ArgumentHelp(help, valueName: "add|remove[,…]"), transform: EditDirection.transform)
    }
}

/// `--attention-grid HxW`.
public struct AttentionGridOption: Sendable {
    public let height: Int
    public let width: Int

    static let transform: @Sendable (String) throws -> AttentionGridOption = { text in
        guard let g = LEditsNumbers.grid(text) else {
            let shown = text.isEmpty ? "''" : String(text.prefix(40))
            let e = ToolError("--attention-grid \(shown) is not a grid: --attention-grid takes HxW, two integers from 1 to 4096 — give the rows x columns of one of the UNet's cross-attention grids, e.g. 8x8")
            CommandLineRefusal.keep(e)
            throw e
        }
        return AttentionGridOption(height: g.height, width: g.width)
    }
}

extension Option where Value == AttentionGridOption? {
    /// `--attention-grid`.
    public init(attentionGridHelp help: String) {
        self.init(name: .customLong("attention-grid"), parsing: .unconditional,
                  help: ArgumentHelp(help, valueName: "HxW"), transform: AttentionGridOption.transform)
    }
}

extension LEditsMaskMode: ExpressibleByArgument {}

extension LEditsNumbers {
    /// denoise --method ledits's per-concept lists.
    public static let editGuidanceList = NumberListOption(editGuidance)
    public static let editThresholdList = NumberListOption(editThreshold)
    public static let editWarmupList = NumberListOption(editWarmup)
    public static let editCooldownList = NumberListOption(editCooldown)
}
