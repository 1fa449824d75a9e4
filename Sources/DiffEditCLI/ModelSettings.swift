import DiffEditCore

/// How a stage tool settles the options a model folder recommends (diffedit_defaults.json, man 5
/// diffedit-defaults): the command line's value, else the file's, else the tool's own. It keeps
/// the names of the values taken from the file for --verbose and for the output's metadata.
public final class ModelSettings {
    public let folder: ModelFolder
    public let defaults: ModelDefaults
    public private(set) var used: [String] = []
    private var negativeEmbedding: Tensor?

    public init(folder: ModelFolder) throws {
        self.folder = folder
        self.defaults = try ModelDefaults(folder: folder)
    }

    /// `given` if the option was given, else the file's value, else `builtIn`.
    public func pick<T>(_ given: T?, _ key: KeyPath<ModelDefaults, T?>, _ name: String, builtIn: T) -> T {
        defaults.pick(given, key, name, builtIn: builtIn, used: &used)
    }

    /// Negative embeddings: the file given to `option`, else the model's default negative prompt
    /// (its file's negative_prompt, else "" as in diffusers), encoded once per run.
    public func negative(_ path: String?, option: String, allowNonfinite: Bool) throws -> Tensor {
        if let path { return try DiffEditIO.embeddings(path, folder: folder, option: option, allowNonfinite: allowNonfinite) }
        if let e = negativeEmbedding { return e }
        let e = try DiffEditSupport.promptEmbedding(defaults.negativeText(used: &used), folder: folder)
        negativeEmbedding = e
        return e
    }

    /// Metadata naming the values taken from the model's file (none when every option was given).
    public func record(into meta: inout [String: String]) {
        if let path = defaults.path, !used.isEmpty { meta["defaults"] = "\(path): \(used.joined(separator: ", "))" }
    }

    /// With --verbose (and not --quiet), one line saying which values came from the model's file.
    public func note(_ tool: String, _ common: StageOptions) {
        guard common.verbose && !common.quiet else { return }
        guard let path = defaults.path else {
            CLI.note(tool, "\(folder.root) has no \(ModelDefaults.fileName): the tools' own defaults")
            return
        }
        CLI.note(tool, used.isEmpty ? "\(path): every option it sets was given on the command line"
                                    : "from \(path): \(used.joined(separator: ", "))")
    }
}
