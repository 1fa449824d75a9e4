import Foundation

/// A Stable Diffusion model as the tools open it: a folder in diffusers' layout (model_index.json,
/// tokenizer/, text_encoder/, unet/, vae/, scheduler/), or one single-file checkpoint in the
/// original LDM layout (`singleFile`). Both answer the same questions — a component's config and
/// weights, the scheduler config, the tokenizer — so a model's `init(folder:)` reads either.
public struct ModelFolder {
    /// The folder, or the single file.
    public let root: String
    /// Set when the model is a single-file checkpoint.
    public let singleFile: SingleFileCheckpoint?
    /// LoRA adapters the tool was given (`--lora`): the UNet and text encoder load with them, and
    /// what the tool writes records them. nil in tools that take none (the VAE's).
    public var lora: LoRASet?

    public static let environmentVariable = "DIFFEDIT_MODEL"

    /// What --model takes, for messages.
    static let expected = "a Stable Diffusion folder in diffusers layout (model_index.json, tokenizer/, text_encoder/, unet/, vae/, scheduler/) or a single-file .safetensors checkpoint"

    public init(root: String) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root, isDirectory: &isDir) else {
            throw ToolError("model '\(root)' does not exist — point --model or $\(ModelFolder.environmentVariable) at \(ModelFolder.expected)")
        }
        if !isDir.boolValue {
            try ModelFolder.refuseFileOfAFolder(root)
            singleFile = try SingleFileCheckpoint(path: root)
            self.root = root
            return
        }
        let index = root + "/model_index.json"
        guard InputFile.exists(index) else {
            if let above = ModelFolder.diffusersFolder(holding: root) {
                throw ToolError("'\(root)' is the \(ModelFolder.lastComponent(root)) folder of the diffusers model '\(above)', not a whole model — point --model at the folder above it (the one with model_index.json): --model \(above)")
            }
            let checkpoints = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).filter { $0.lowercased().hasSuffix(".safetensors") }.sorted()
            if checkpoints.count == 1 {
                throw ToolError("'\(root)' has no model_index.json — for the single-file checkpoint in it use --model \(root)/\(checkpoints[0]); a diffusers folder needs model_index.json, tokenizer/, text_encoder/, unet/, vae/, scheduler/")
            }
            throw ToolError("'\(root)' has no model_index.json — point --model at \(ModelFolder.expected)")
        }
        // Nothing in model_index.json is read, but it must be a file: opened without blocking and
        // checked (a FIFO in its place is refused, not waited on).
        var indexIsDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: index, isDirectory: &indexIsDir), indexIsDir.boolValue {
            throw ToolError("'\(index)' is a directory, not the model's index file — put the model's model_index.json there (download the model again)")
        }
        close(try InputFile.open(index, what: "the model index"))
        self.root = root
        singleFile = nil
    }

    /// Folders of a diffusers model's components, one of which --model may name by mistake.
    static let componentFolders: Set<String> = ["unet", "vae", "text_encoder", "tokenizer", "scheduler", "safety_checker",
                                                "feature_extractor", "text_encoder_2", "tokenizer_2", "image_encoder"]

    /// The last path component of `path` ("unet" for "m/unet/").
    static func lastComponent(_ path: String) -> String { (path as NSString).lastPathComponent }

    /// The folder holding `path`, as the user wrote it ("." for a bare name; links not resolved, so
    /// that a message names the folder the user knows).
    static func parent(_ path: String) -> String {
        var trimmed = path
        while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed.removeLast() }
        let p = (trimmed as NSString).deletingLastPathComponent
        return p.isEmpty ? "." : p
    }

    /// The diffusers model folder that `path` is a component folder of (its parent, when that
    /// has model_index.json), else nil.
    static func diffusersFolder(holding path: String) -> String? {
        let above = parent(path)
        return InputFile.exists(above + "/model_index.json") ? above : nil
    }

    /// --model naming a file of a diffusers folder rather than the folder (model_index.json, a
    /// component's config or weights) or another JSON file: refused with the --model to give,
    /// before it is read as a checkpoint (which would report a corrupt safetensors header).
    static func refuseFileOfAFolder(_ path: String) throws {
        let name = lastComponent(path)
        let lower = name.lowercased()
        let dir = parent(path)
        if InputFile.exists(dir + "/model_index.json"), lower.hasSuffix(".json") {
            let what = lower == "model_index.json" ? "the index of the diffusers model folder '\(dir)'" : "a file of the diffusers model folder '\(dir)'"
            throw ToolError("'\(path)' is \(what), not a checkpoint — give the folder: --model \(dir)")
        }
        if componentFolders.contains(lastComponent(dir)), let model = diffusersFolder(holding: dir) {
            throw ToolError("'\(path)' is one component of a diffusers folder (the \(lastComponent(dir)) of '\(model)'), not a whole model — point --model at the folder above it (the one with model_index.json): --model \(model)")
        }
        if lower.hasSuffix(".diffedit.json") {
            throw ToolError("'\(path)' is a sidecar (settings of the checkpoint beside it), not a checkpoint — give the checkpoint: --model \(path.dropLast(".diffedit.json".count)).safetensors")
        }
        if lower.hasSuffix(".json") {
            throw ToolError("'\(path)' is a JSON file, not a checkpoint — point --model at \(ModelFolder.expected)")
        }
    }

    /// `--model DIR|FILE`, else `$DIFFEDIT_MODEL`, else the bundled demo model, else an error saying
    /// how to give one.
    public static func resolve(_ option: String?) throws -> ModelFolder {
        if let option {
            guard !option.isEmpty else {
                throw ToolError("--model is empty — give a model folder, or leave --model out to use $\(environmentVariable) or the bundled demo model")
            }
            return try ModelFolder(root: option)
        }
        if let env = ProcessInfo.processInfo.environment[environmentVariable], !env.isEmpty {
            return try ModelFolder(root: env)
        }
        if let bundled = bundledModelPath { return try ModelFolder(root: bundled) }
        if !runsFromBuildTree {
            throw ToolError("no model given, and the demo model installed with diffedit (\(installedModelPath)) is missing — reinstall diffedit (make install), or give a model with --model or $\(environmentVariable)")
        }
        throw ToolError("no model given — use --model or set $\(environmentVariable) to \(ModelFolder.expected)")
    }

    /// The running executable itself (argv[0] is a bare name when the tool is found on PATH).
    static var executable: URL {
        URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? CommandLine.arguments.first ?? "").resolvingSymlinksInPath()
    }

    /// A tool built by SwiftPM runs from a `.build` folder inside its source tree; an installed one
    /// (bin/ beside share/) does not, and must never take another tree's model for its own.
    static var runsFromBuildTree: Bool { executable.pathComponents.contains(".build") }

    /// share/diffedit/model beside the executable's bin/ (where `make install` puts the demo model).
    static var installedModelPath: String {
        executable.deletingLastPathComponent().appendingPathComponent("../share/diffedit/model").standardized.path
    }

    /// The small demo model trained for this project, used when no model is named: share/diffedit/model
    /// beside an installed bin/, or for a tool run from the build tree, demo/model of that tree.
    public static var bundledModelPath: String? {
        var candidates = [installedModelPath]
        if runsFromBuildTree {
            // Sources/DiffEditCore/Weights/ModelFolder.swift → repository root.
            let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().deletingLastPathComponent()
            candidates.append(root.appendingPathComponent("demo/model").path)
        }
        return candidates.first { FileManager.default.fileExists(atPath: $0 + "/model_index.json") }
    }

    public func path(_ component: String, _ file: String) -> String { "\(root)/\(component)/\(file)" }

    /// A component's JSON config (`config.json`, or `scheduler_config.json` for schedulers); a
    /// single file's are inferred from its weights and sidecar.
    public func config(_ component: String, file: String = "config.json") throws -> JSONConfig {
        if let singleFile { return try singleFile.config(component) }
        return try JSONConfig(path: path(component, file), label: "\(component)/\(file)")
    }

    /// The scheduler config every scheduler of this model reads: scheduler/scheduler_config.json, or
    /// for a single file SD's standard one with its sidecar's keys.
    public func schedulerConfig() throws -> JSONConfig {
        if let singleFile { return singleFile.schedulerConfig() }
        return try config("scheduler", file: "scheduler_config.json")
    }

    /// Weight file names tried in order: full precision first, then the fp16 variant.
    public static let weightFileNames = [
        "diffusion_pytorch_model.safetensors", "model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",
    ]

    /// The component's safetensors weights.
    public func weights(_ component: String) throws -> WeightStore {
        if let singleFile { return try singleFile.weights(component) }
        for name in ModelFolder.weightFileNames {
            let p = path(component, name)
            if FileManager.default.fileExists(atPath: p) {
                return WeightStore(component: component, file: try SafeTensorsFile(path: p))
            }
        }
        if FileManager.default.fileExists(atPath: path(component, "diffusion_pytorch_model.bin"))
            || FileManager.default.fileExists(atPath: path(component, "pytorch_model.bin")) {
            throw ToolError("\(root)/\(component) has only PyTorch .bin weights — convert them to safetensors (diffusers' save_pretrained(safe_serialization=True))")
        }
        throw ToolError("\(root)/\(component) has no weights (looked for \(ModelFolder.weightFileNames.joined(separator: ", "))) — the model folder is incomplete; download it again")
    }
}

/// A parsed JSON config with typed, error-reporting accessors.
public struct JSONConfig {
    public let values: [String: Any]
    public let label: String

    /// Configs are small (a scheduler's with 1000 trained betas is ~25 KB); past this it is not one.
    public static let maxBytes = 16 << 20

    public init(path: String, label: String) throws {
        guard InputFile.exists(path) else {
            throw ToolError("cannot read \(label) (\(path)) — is this a diffusers model folder?")
        }
        // Opened without blocking and refused unless a regular file (a FIFO would hang the tool).
        let bytes = try InputFile.read(path, what: "the config", limit: JSONConfig.maxBytes)
        try self.init(bytes: bytes, label: label)
    }

    public init(data: Data, label: String) throws {
        try self.init(bytes: [UInt8](data), label: label)
    }

    init(bytes: [UInt8], label: String) throws {
        self.values = try JSONConfig.object(bytes, label: label, remedy: "the model folder's config is damaged; download it again")
        self.label = label
    }

    /// The one reader of a model's JSON — folder configs and a single file's sidecar alike: Python's
    /// bare NaN, Infinity and -Infinity are read (`quotingNonFinite`), and a key given twice in any
    /// object is refused by name (Foundation and Python keep the last silently; man 5
    /// diffedit-defaults: configs are checked strictly). Values come out as JSONSerialization's
    /// would: NSNumber, String, NSNull, [Any], [String: Any].
    static func object(_ bytes: [UInt8], label: String, remedy: String) throws -> [String: Any] {
        let value = try JSONValue.parse(quotingNonFinite(bytes), label: label, refusingDuplicateKeys: true, remedy: remedy)
        guard case .object(let members) = value else { throw ToolError("\(label) is not a JSON object — \(remedy)") }
        return foundation(members)
    }

    private static func foundation(_ members: [(String, JSONValue)]) -> [String: Any] {
        Dictionary(members.map { ($0.0, foundation($0.1)) }, uniquingKeysWith: { first, _ in first })
    }

    private static func foundation(_ v: JSONValue) -> Any {
        switch v {
        case .null: return NSNull()
        case .bool(let b): return NSNumber(value: b)
        case .number(let d): return d == d.rounded() && abs(d) < 9.0e15 ? NSNumber(value: Int(d)) : NSNumber(value: d)
        case .string(let s): return s
        case .array(let a): return a.map(foundation)
        case .object(let o): return foundation(o)
        }
    }

    public init(values: [String: Any], label: String) {
        self.values = values
        self.label = label
    }

    public func has(_ key: String) -> Bool { values[key] != nil && !(values[key] is NSNull) }

    private func missing(_ key: String) -> ToolError { ToolError("\(label): missing key '\(key)' — is this a diffusers config of a Stable Diffusion model?") }
    private func wrong(_ key: String, _ type: String) -> ToolError {
        ToolError("\(label): key '\(key)' should be \(type), found \(String(values[key].map { "\($0)" }?.prefix(60) ?? "null")) — fix the config or download it again")
    }

    public func int(_ key: String, default def: Int? = nil) throws -> Int {
        guard has(key) else { if let def { return def }; throw missing(key) }
        guard let n = values[key] as? NSNumber, n.doubleValue == n.doubleValue.rounded() else { throw wrong(key, "an integer") }
        return try checked(key, n)
    }

    /// Sizes, counts and ids in Stable Diffusion configs are never negative nor near 2^31: such a
    /// value could only drive a huge or negative allocation, so it is refused here.
    private func checked(_ key: String, _ n: NSNumber) throws -> Int {
        let d = n.doubleValue
        guard d == d.rounded(), d >= 0, d <= Double(1 << 30) else {
            throw wrong(key, "a non-negative integer below 2^30")
        }
        return Int(d)
    }

    public func double(_ key: String, default def: Double? = nil) throws -> Double {
        guard has(key) else { if let def { return def }; throw missing(key) }
        guard let n = values[key] as? NSNumber, n.doubleValue.isFinite else { throw wrong(key, "a finite number") }
        return n.doubleValue
    }

    /// A number that may also be Python's -Infinity or Infinity (never NaN), e.g. the DPM-Solver
    /// schedulers' lambda_min_clipped, which diffusers saves as -Infinity.
    public func doubleOrInfinity(_ key: String, default def: Double? = nil) throws -> Double {
        guard has(key) else { if let def { return def }; throw missing(key) }
        switch values[key] {
        case let s as String where s == JSONConfig.nonFinite(-.infinity): return -.infinity
        case let s as String where s == JSONConfig.nonFinite(.infinity): return .infinity
        case let n as NSNumber where !n.doubleValue.isNaN: return n.doubleValue
        default: throw wrong(key, "a number or -Infinity")
        }
    }

    /// The string a bare non-finite token becomes (see `quotingNonFinite`).
    static func nonFinite(_ v: Double) -> String { v.isNaN ? "NaN" : v < 0 ? "-Infinity" : "Infinity" }

    /// Python's json module writes non-finite floats as the bare tokens NaN, Infinity and -Infinity
    /// (diffusers' DPMSolverMultistepScheduler config holds `"lambda_min_clipped": -Infinity`);
    /// strict JSON and Foundation refuse them. Outside string literals they are quoted here, so the
    /// file parses and `doubleOrInfinity` reads them back; `double` still refuses them by name.
    static func quotingNonFinite(_ data: Data) -> Data {
        let bytes = [UInt8](data)
        let out = quotingNonFinite(bytes)
        return out.count == bytes.count ? data : Data(out)
    }

    static func quotingNonFinite(_ bytes: [UInt8]) -> [UInt8] {
        var out = [UInt8](), inString = false, escaped = false, i = 0
        out.reserveCapacity(bytes.count + 8)
        while i < bytes.count {
            let b = bytes[i]
            if inString {
                if escaped { escaped = false } else if b == UInt8(ascii: "\\") { escaped = true } else if b == UInt8(ascii: "\"") { inString = false }
            } else if b == UInt8(ascii: "\"") {
                inString = true
            } else if b == UInt8(ascii: "-") || b == UInt8(ascii: "I") || b == UInt8(ascii: "N"),
                      let token = ["-Infinity", "Infinity", "NaN"].first(where: { bytes[i...].starts(with: $0.utf8) }) {
                out += Array("\"\(token)\"".utf8)
                i += token.utf8.count
                continue
            }
            out.append(b)
            i += 1
        }
        return out
    }

    public func bool(_ key: String, default def: Bool? = nil) throws -> Bool {
        guard has(key) else { if let def { return def }; throw missing(key) }
        guard let n = values[key] as? Bool else { throw wrong(key, "true or false") }
        return n
    }

    public func string(_ key: String, default def: String? = nil) throws -> String {
        guard has(key) else { if let def { return def }; throw missing(key) }
        guard let s = values[key] as? String else { throw wrong(key, "a string") }
        return s
    }

    public func ints(_ key: String, default def: [Int]? = nil) throws -> [Int] {
        guard has(key) else { if let def { return def }; throw missing(key) }
        guard let a = values[key] as? [Any] else { throw wrong(key, "a list of integers") }
        return try a.map { guard let n = $0 as? NSNumber else { throw wrong(key, "a list of integers") }; return try checked(key, n) }
    }

    public func strings(_ key: String, default def: [String]? = nil) throws -> [String] {
        guard has(key) else { if let def { return def }; throw missing(key) }
        guard let a = values[key] as? [Any] else { throw wrong(key, "a list of strings") }
        return try a.map { guard let s = $0 as? String else { throw wrong(key, "a list of strings") }; return s }
    }

    /// An int, or a per-block list of ints (UNet's attention_head_dim), expanded to `count`.
    public func intOrList(_ key: String, count: Int, default def: Int? = nil) throws -> [Int] {
        if has(key), values[key] is [Any] {
            let l = try ints(key)
            guard l.count == count else { throw ToolError("\(label): '\(key)' lists \(l.count) values for \(count) blocks — the config does not describe one model; download it again") }
            return l
        }
        return Array(repeating: try int(key, default: def), count: count)
    }
}
