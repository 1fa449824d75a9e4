import DiffEditCore

/// How a stage tool settles the options a model folder recommends (diffedit_defaults.json, man 5
/// diffedit-defaults): the command line's value, else the file's section for the tool's stage,
/// else the file's top level, else the tool's own. It keeps the names of the values taken from
/// the file for --verbose and for the output's metadata, and where every other value came from
/// for --verbose.
public final class ModelSettings {
    public let folder: ModelFolder
    public let defaults: ModelDefaults
    /// The stage whose section of the file applies (nil: the top level only).
    public let stage: ModelDefaults.Stage?
    /// The values taken from the file: "guidance 3.0", "guidance 1.0 (section invert)".
    public private(set) var used: [String] = []
    /// The settings given on the command line and those left at the tool's own default.
    public private(set) var given: [String] = []
    public private(set) var builtIn: [String] = []
    private var negativeEmbedding: Tensor?

    public init(folder: ModelFolder, stage: ModelDefaults.Stage?) throws {
        self.folder = folder
        self.stage = stage
        self.defaults = try ModelDefaults(folder: folder)
    }

    /// `given` if the option was given, else the file's value (the stage's section, then the top
    /// level), else `builtIn`.
    public func pick<T>(_ given: T?, _ key: KeyPath<ModelDefaults, T?>, _ name: String, builtIn: T) -> T {
        let (v, source) = defaults.resolve(given, key, stage: stage, builtIn: builtIn)
        switch source {
        case .commandLine: self.given.append("\(name) \(ModelDefaults.show(v))")
        case .builtIn: self.builtIn.append("\(name) \(ModelDefaults.show(v))")
        case .section, .topLevel, .ledits: used.append(ModelDefaults.shown(name, v, source)!)
        }
        return v
    }

    /// A LEDITS++ option: `given`, else the file's "ledits" section, else `builtIn`.
    public func pickLEdits<T>(_ given: T?, _ key: KeyPath<ModelDefaults.LEdits, T?>, _ name: String, builtIn: T) -> T {
        let (v, source) = defaults.resolveLEdits(given, key, builtIn: builtIn)
        switch source {
        case .commandLine: self.given.append("\(name) \(ModelDefaults.show(v))")
        case .builtIn: self.builtIn.append("\(name) \(ModelDefaults.show(v))")
        case .section, .topLevel, .ledits: used.append(ModelDefaults.shown(name, v, source)!)
        }
        return v
    }

    /// Negative embeddings: the file given to `option`, else the model's default negative prompt
    /// (its file's negative_prompt, the stage's section's first, else "" as in diffusers),
    /// encoded once per run.
    public func negative(_ path: String?, option: String, allowNonfinite: Bool) throws -> Tensor {
        if let path {
            given.append("\(option) \(path)")
            return try DiffEditIO.embeddings(path, folder: folder, option: option, allowNonfinite: allowNonfinite)
        }
        if let e = negativeEmbedding { return e }
        let e = try DiffEditSupport.promptEmbedding(pick(nil, \.negativePrompt, "negative prompt", builtIn: ""), folder: folder)
        negativeEmbedding = e
        return e
    }

    /// Metadata naming the values taken from the model's file (none when every option was given).
    public func record(into meta: inout [String: String]) {
        if let path = defaults.path, !used.isEmpty { meta["defaults"] = "\(path): \(used.joined(separator: ", "))" }
    }

    /// With --verbose (and not --quiet), one line saying where each setting came from: the
    /// model's file (and its section), the command line, or the tool's own default.
    public func note(_ tool: String, _ common: StageOptions) {
        guard common.verbose && !common.quiet else { return }
        var parts: [String] = []
        if let path = defaults.path {
            parts.append(used.isEmpty ? "\(path): every option it sets was given on the command line"
                                      : "from \(path): \(used.joined(separator: ", "))")
        } else {
            parts.append("\(folder.root) has no \(ModelDefaults.fileName): the tools' own defaults")
        }
        if !given.isEmpty { parts.append("from the command line: \(given.joined(separator: ", "))") }
        if !builtIn.isEmpty { parts.append("the tool's own: \(builtIn.joined(separator: ", "))") }
        CLI.note(tool, parts.joined(separator: "; "))
    }
}
