import Foundation

/// A model folder's recommended settings: `diffedit_defaults.json` beside `model_index.json`
/// (man 5 diffedit-defaults). The stage tools use a value from it when the option is not given on
/// the command line; an option given always wins, and a folder without the file gets the tools'
/// own defaults (diffusers'). The file is checked strictly: an unknown key, a wrong type or a
/// value out of its option's domain is an error naming the file, never silently ignored.
///
/// Its top level holds the settings every stage shares; a section named for a stage tool
/// ("noise-diff-mask", "invert", "denoise") holds that stage's own, which win over the top level:
/// the command line, else the stage's section, else the top level, else the tool's own default.
public struct ModelDefaults: Equatable {
    public static let fileName = "diffedit_defaults.json"

    /// The stage tools a section of the file may be named for.
    public enum Stage: String, CaseIterable, Sendable {
        case noiseDiffMask = "noise-diff-mask"
        case invert
        case denoise
    }

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
    /// noise-diff-mask's own (its section only): --threshold-ratio, --maps, --encode-strength, --dilate.
    public var thresholdRatio: Float?
    public var maps: Int?
    public var encodeStrength: Double?
    public var dilate: Int?
    /// Free text for the reader of the file; the tools ignore it.
    public var comment: String?
    /// The file the values came from (nil: no file, every value nil).
    public var path: String?
    /// Each stage's section: its values win over the top level's for that stage.
    public var sections: [Stage: ModelDefaults] = [:]
    /// The section "ledits": LEDITS++'s own settings (invert and denoise with --method ledits),
    /// which never fall back on the top level (its guidance and steps are DiffEdit's).
    public var ledits: LEdits?

    /// The keys of the "ledits" section, each with its option's domain (LEditsNumbers).
    public struct LEdits: Equatable {
        /// invert --method ledits: --steps, --skip, --guidance (the source caption's guidance).
        public var steps: Int?
        public var skip: Double?
        public var sourceGuidance: Float?
        /// denoise --method ledits: --edit-guidance, --edit-threshold, --edit-warmup (one value
        /// for every concept), --attention-grid ("HxW").
        public var editGuidance: Float?
        public var editThreshold: Float?
        public var editWarmup: Int?
        public var attentionGridText: String?
        public var comment: String?
        public init() {}

        public static let keys = ["steps", "skip", "source_guidance", "edit_guidance", "edit_threshold", "edit_warmup",
                                  "attention_grid", "comment"]

        public var attentionGrid: (height: Int, width: Int)? { attentionGridText.flatMap(LEditsNumbers.grid) }
    }

    /// The name of the LEDITS++ section.
    public static let leditsSection = "ledits"

    /// The file's values lie in the command-line options' domains (NumberDomain .guidance,
    /// .steps, .fraction, MaskNumbers: one definition for both).
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

    /// The keys of the top level (besides the sections).
    public static let keys = ["guidance", "negative_prompt", "steps", "strength", "blend", "comment"]
    /// The keys of each stage's section: those of the options the stage takes.
    public static let stageKeys: [Stage: [String]] = [
        .noiseDiffMask: ["guidance", "negative_prompt", "steps", "threshold_ratio", "maps", "encode_strength", "dilate", "comment"],
        .invert: ["guidance", "negative_prompt", "steps", "strength", "comment"],
        .denoise: ["guidance", "negative_prompt", "blend", "comment"],
    ]

    /// Parses and checks the file's bytes; every error names `path` (and the section).
    public init(bytes: [UInt8], path: String) throws {
        self.init()
        self.path = path
        guard bytes.count <= Self.maxBytes else { throw ToolError("\(path) is \(bytes.count) bytes, not a small settings file — \(Self.fix)") }
        // A key given twice, at any depth, is refused by name (a last-wins reading would be silent).
        let root = try JSONValue.parse(bytes, label: path, refusingDuplicateKeys: true, remedy: Self.fix)
        guard let members = root.objectValue else { throw ToolError("\(path) is not a JSON object — \(Self.fix)") }
        try read(members, path: path, section: nil)
    }

    private static let fix = "fix it (man 5 diffedit-defaults) or remove it"

    /// Reads the members of the top level (`section` nil) or of a stage's section into self.
    private mutating func read(_ members: [(String, JSONValue)], path: String, section: Stage?) throws {
        let fix = Self.fix
        let place = section.map { "\(path): section '\($0.rawValue)'" } ?? path
        let known = section.map { Self.stageKeys[$0]! } ?? Self.keys + Stage.allCases.map(\.rawValue) + [Self.leditsSection]
        for (key, value) in members {
            func bad(_ want: String) -> ToolError {
                ToolError("\(place): '\(key)' must be \(want), found \(Self.describe(value)) — \(fix)")
            }
            if key == Self.leditsSection {
                guard section == nil else {
                    throw ToolError("\(place): '\(key)' does not apply to \(section!.rawValue) (it is a section of the top level) — \(fix)")
                }
                guard let leditsMembers = value.objectValue else {
                    throw bad("an object of LEDITS++'s settings (keys: \(LEdits.keys.joined(separator: ", ")))")
                }
                ledits = try Self.readLEdits(leditsMembers, path: path)
                continue
            }
            if section == nil, let stage = Stage(rawValue: key) {
                guard let sectionMembers = value.objectValue else {
                    throw bad("an object of \(stage.rawValue)'s settings (keys: \(Self.stageKeys[stage]!.joined(separator: ", ")))")
                }
                var s = ModelDefaults()
                try s.read(sectionMembers, path: path, section: stage)
                sections[stage] = s
                continue
            }
            guard known.contains(key) else {
                let stages = Stage.allCases.filter { Self.stageKeys[$0]!.contains(key) }.map(\.rawValue)
                if let section, !stages.isEmpty || Stage(rawValue: key) != nil {
                    // A key of another stage, or a section inside a section.
                    let applies = stages.isEmpty ? "is a section of the top level" : "applies to \(stages.joined(separator: " and ")) only"
                    throw ToolError("\(place): '\(JSONValue.shown(key))' does not apply to \(section.rawValue) (it \(applies)) — \(fix)")
                }
                if section == nil, !stages.isEmpty {
                    throw ToolError("\(place): '\(JSONValue.shown(key))' applies to \(stages.joined(separator: " and ")) only: put it in the section \"\(stages[0])\" — \(fix)")
                }
                throw ToolError("\(place): unknown key '\(JSONValue.shown(key))' (known: \(known.joined(separator: ", "))) — \(fix)")
            }
            func number<T: OptionNumber>(_ domain: NumberDomain<T>) throws -> T {
                guard let d = value.doubleValue, let v = T(optionValue: d), domain.contains(v) else { throw bad(domain.description) }
                return v
            }
            switch key {
            case "guidance": guidance = try number(NumberDomain<Float>.guidance)
            case "steps":
                guard let n = value.intValue, NumberDomain<Int>.steps.contains(n) else { throw bad(NumberDomain<Int>.steps.description) }
                steps = n
            case "strength": strength = try number(NumberDomain<Double>.fraction)
            case "threshold_ratio": thresholdRatio = try number(MaskNumbers.thresholdRatio.domain)
            case "encode_strength": encodeStrength = try number(MaskNumbers.encodeStrength.domain)
            case "maps":
                guard let n = value.intValue, MaskNumbers.maps.domain.contains(n) else { throw bad(MaskNumbers.maps.domain.description) }
                maps = n
            case "dilate":
                guard let n = value.intValue, StageNumbers.dilate.domain.contains(n) else { throw bad(StageNumbers.dilate.domain.description) }
                dilate = n
            case "blend":
                guard let b = value.stringValue.flatMap(MaskedDenoising.Blend.init(rawValue:)) else { throw bad("\"diffusers\" or \"paper\"") }
                blend = b
            default:  // "negative_prompt", "comment"
                guard let s = value.stringValue, s.count <= Self.maxTextLength,
                      !s.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
                    throw bad("one line of text (no control characters, at most \(Self.maxTextLength) characters)")
                }
                if key == "comment" { comment = s } else { negativePrompt = s }
            }
        }
    }

    /// The members of the "ledits" section, each checked against its option's domain.
    private static func readLEdits(_ members: [(String, JSONValue)], path: String) throws -> LEdits {
        let place = "\(path): section '\(leditsSection)'"
        var l = LEdits()
        for (key, value) in members {
            func bad(_ want: String) -> ToolError {
                ToolError("\(place): '\(key)' must be \(want), found \(describe(value)) — \(fix)")
            }
            func number<T: OptionNumber>(_ domain: NumberDomain<T>) throws -> T {
                guard let d = value.doubleValue, let v = T(optionValue: d), domain.contains(v) else { throw bad(domain.description) }
                return v
            }
            func integer(_ domain: NumberDomain<Int>) throws -> Int {
                guard let n = value.intValue, domain.contains(n) else { throw bad(domain.description) }
                return n
            }
            switch key {
            case "steps": l.steps = try integer(.steps)
            case "skip": l.skip = try number(LEditsNumbers.skip.domain)
            case "source_guidance": l.sourceGuidance = try number(NumberDomain<Float>.guidance)
            case "edit_guidance": l.editGuidance = try number(LEditsNumbers.editGuidance.domain)
            case "edit_threshold": l.editThreshold = try number(LEditsNumbers.editThreshold.domain)
            case "edit_warmup": l.editWarmup = try integer(LEditsNumbers.editWarmup.domain)
            case "attention_grid":
                guard let s = value.stringValue, LEditsNumbers.grid(s) != nil else {
                    throw bad("a grid \"HxW\" of two integers from 1 to 4096, e.g. \"8x8\"")
                }
                l.attentionGridText = s
            case "comment":
                guard let s = value.stringValue, s.count <= maxTextLength,
                      !s.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
                    throw bad("one line of text (no control characters, at most \(maxTextLength) characters)")
                }
                l.comment = s
            default:
                throw ToolError("\(place): unknown key '\(JSONValue.shown(key))' (known: \(LEdits.keys.joined(separator: ", "))) — \(fix)")
            }
        }
        return l
    }

    /// Where a setting's value came from.
    public enum Source: Equatable {
        case commandLine
        case section(Stage)
        /// The "ledits" section.
        case ledits
        case topLevel
        case builtIn
    }

    /// The value an option of `stage` takes, and where it came from: the command line's, else the
    /// stage's section's, else the top level's, else the tool's own.
    public func resolve<T>(_ given: T?, _ key: KeyPath<ModelDefaults, T?>, stage: Stage?, builtIn: T) -> (T, Source) {
        if let given { return (given, .commandLine) }
        if let stage, let v = sections[stage]?[keyPath: key] { return (v, .section(stage)) }
        if let v = self[keyPath: key] { return (v, .topLevel) }
        return (builtIn, .builtIn)
    }

    /// A LEDITS++ option's value and where it came from: the command line's, else the "ledits"
    /// section's, else the tool's own (never the top level's, which is DiffEdit's).
    public func resolveLEdits<T>(_ given: T?, _ key: KeyPath<LEdits, T?>, builtIn: T) -> (T, Source) {
        if let given { return (given, .commandLine) }
        if let v = ledits?[keyPath: key] { return (v, .ledits) }
        return (builtIn, .builtIn)
    }

    /// The value an option takes: the command line's, else this file's (the stage's section, then
    /// the top level), else the tool's own. The name of a value taken from the file is added to
    /// `used` (for --verbose and metadata), with the section it came from.
    public func pick<T>(_ given: T?, _ key: KeyPath<ModelDefaults, T?>, _ name: String, builtIn: T,
                        stage: Stage? = nil, used: inout [String]) -> T {
        let (v, source) = resolve(given, key, stage: stage, builtIn: builtIn)
        if let shown = Self.shown(name, v, source) { used.append(shown) }
        return v
    }

    /// "guidance 3.0" (top level), "guidance 1.0 (section invert)"; nil for a value not from the file.
    public static func shown<T>(_ name: String, _ v: T, _ source: Source) -> String? {
        switch source {
        case .topLevel: return "\(name) \(show(v))"
        case .section(let s): return "\(name) \(show(v)) (section \(s.rawValue))"
        case .ledits: return "\(name) \(show(v)) (section \(leditsSection))"
        case .commandLine, .builtIn: return nil
        }
    }

    /// The negative prompt's text when no negative embeddings file is given: the file's (the
    /// stage's section, then the top level), else "".
    public func negativeText(stage: Stage? = nil, used: inout [String]) -> String {
        pick(nil, \.negativePrompt, "negative prompt", builtIn: "", stage: stage, used: &used)
    }

    public static func show<T>(_ v: T) -> String {
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
