import Foundation

/// A model folder's recommended settings: `diffedit_defaults.json` beside `model_index.json`
/// (man 5 diffedit-defaults). The stage tools use a value from it when the option is not given on
/// the command line; an option given always wins, and a folder without the file gets the tools'
/// own defaults (diffusers'). The file is checked strictly: an unknown key, a wrong type or a
/// value out of its option's domain is an error naming the file, never silently ignored.
public struct ModelDefaults: Equatable {
    public static let fileName = "diffedit_defaults.json"

    /// Classifier-free guidance scale of noise-diff-mask, invert and denoise.
    public var guidance: Float?
    /// Negative prompt (text) of every stage when no negative embeddings are given.
    public var negativePrompt: String?
    /// Inference steps of noise-diff-mask and invert (denoise takes invert's from the stack).
    public var steps: Int?
    /// invert's strength (denoise takes it from the stack).
    public var strength: Double?
    /// denoise's background blending: "diffusers" or "paper".
    public var blend: MaskedDenoising.Blend?
    /// Free text for the reader of the file; the tools ignore it.
    public var comment: String?
    /// The file the values came from (nil: no file, every value nil).
    public var path: String?

    /// The file's values lie in the command-line options' domains (NumberDomain .guidance,
    /// .steps, .fraction: one definition for both).
    public static let maxTextLength = 10_000

    public init() {}

    /// The defaults of a model folder: its `diffedit_defaults.json`, or none when it has no such file.
    public init(folder: ModelFolder) throws {
        let path = folder.root + "/" + Self.fileName
        // Opened without blocking and refused unless a regular file: a FIFO would hang the tool.
        guard let bytes = try InputFile.readIfPresent(path, what: "the model's defaults", limit: Self.maxBytes) else {
            self.init()
            return
        }
        try self.init(bytes: bytes, path: path)
    }

    public static let maxBytes = 1 << 20

    /// Parses and checks the file's bytes; every error names `path`.
    public init(bytes: [UInt8], path: String) throws {
        self.init()
        self.path = path
        let fix = "fix it (man 5 diffedit-defaults) or remove it"
        guard bytes.count <= Self.maxBytes else { throw ToolError("\(path) is \(bytes.count) bytes, not a small settings file — \(fix)") }
        // A key given twice, at any depth, is refused by name (a last-wins reading would be silent).
        let root = try JSONValue.parse(bytes, label: path, refusingDuplicateKeys: true, remedy: fix)
        guard let members = root.objectValue else { throw ToolError("\(path) is not a JSON object — \(fix)") }
        for (key, value) in members {
            func bad(_ want: String) -> ToolError {
                ToolError("\(path): '\(key)' must be \(want), found \(Self.describe(value)) — \(fix)")
            }
            switch key {
            case "guidance":
                guard let d = value.doubleValue, NumberDomain<Float>.guidance.contains(Float(d)) else {
                    throw bad(NumberDomain<Float>.guidance.description)
                }
                guidance = Float(d)
            case "steps":
                guard let n = value.intValue, NumberDomain<Int>.steps.contains(n) else {
                    throw bad(NumberDomain<Int>.steps.description)
                }
                steps = n
            case "strength":
                guard let d = value.doubleValue, NumberDomain<Double>.fraction.contains(d) else { throw bad(NumberDomain<Double>.fraction.description) }
                strength = d
            case "blend":
                guard let b = value.stringValue.flatMap(MaskedDenoising.Blend.init(rawValue:)) else { throw bad("\"diffusers\" or \"paper\"") }
                blend = b
            case "negative_prompt", "comment":
                guard let s = value.stringValue, s.count <= Self.maxTextLength,
                      !s.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
                    throw bad("one line of text (no control characters, at most \(Self.maxTextLength) characters)")
                }
                if key == "comment" { comment = s } else { negativePrompt = s }
            default:
                throw ToolError("\(path): unknown key '\(JSONValue.shown(key))' (known: \(Self.keys.joined(separator: ", "))) — \(fix)")
            }
        }
    }

    public static let keys = ["guidance", "negative_prompt", "steps", "strength", "blend", "comment"]

    /// The value an option takes: the command line's, else this file's, else the tool's own.
    /// The name of a value taken from the file is added to `used` (for --verbose and metadata).
    public func pick<T>(_ given: T?, _ key: KeyPath<ModelDefaults, T?>, _ name: String, builtIn: T,
                        used: inout [String]) -> T {
        if let given { return given }
        if let fromFile = self[keyPath: key] {
            used.append("\(name) \(Self.show(fromFile))")
            return fromFile
        }
        return builtIn
    }

    /// The negative prompt's text when no negative embeddings file is given: the file's, else "".
    public func negativeText(used: inout [String]) -> String {
        pick(nil, \.negativePrompt, "negative prompt", builtIn: "", used: &used)
    }

    private static func show<T>(_ v: T) -> String {
        if let s = v as? String { return "\"\(s)\"" }
        return "\(v)"
    }

    private static func describe(_ v: JSONValue) -> String {
        switch v {
        case .null: return "null"
        case .bool(let b): return "\(b)"
        case .number(let d): return "\(d)"
        case .string(let s):
            // Control characters shown as '?', so that the message stays one line.
            let shown = String(String.UnicodeScalarView(s.unicodeScalars.prefix(40).map { $0.value < 0x20 || $0.value == 0x7F ? "?" : $0 }))
            return "\"\(shown)\(s.unicodeScalars.count > 40 ? "…" : "")\""
        case .array: return "a list"
        case .object: return "an object"
        }
    }
}
