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

    public static let environmentVariable = "DIFFEDIT_MODEL"

    /// What --model takes, for messages.
    static let expected = "a Stable Diffusion folder in diffusers layout (model_index.json, tokenizer/, text_encoder/, unet/, vae/, scheduler/) or a single-file .safetensors checkpoint"

    public init(root: String) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root, isDirectory: &isDir) else {
            throw ToolError("model '\(root)' does not exist — point --model or $\(ModelFolder.environmentVariable) at \(ModelFolder.expected)")
        }
        if !isDir.boolValue {
            singleFile = try SingleFileCheckpoint(path: root)
            self.root = root
            return
        }
        guard FileManager.default.fileExists(atPath: root + "/model_index.json") else {
            let checkpoints = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).filter { $0.hasSuffix(".safetensors") }.sorted()
            if checkpoints.count == 1 {
                throw ToolError("'\(root)' has no model_index.json — for the single-file checkpoint in it use --model \(root)/\(checkpoints[0]); a diffusers folder needs model_index.json, tokenizer/, text_encoder/, unet/, vae/, scheduler/")
            }
            throw ToolError("'\(root)' has no model_index.json — point --model at \(ModelFolder.expected)")
        }
        self.root = root
        singleFile = nil
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
        throw ToolError("no model given — use --model or set $\(environmentVariable) to \(ModelFolder.expected)")
    }

    /// The small demo model trained for this project (demo/model in the source tree, or
    /// share/diffedit/model beside an installed bin/), used when no model is named.
    public static var bundledModelPath: String? {
        var candidates: [String] = []
        // The running executable itself: argv[0] is a bare name when the tool is found on PATH.
        let exe = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
                      ?? CommandLine.arguments.first ?? "").resolvingSymlinksInPath()
        candidates.append(exe.deletingLastPathComponent().appendingPathComponent("../share/diffedit/model").standardized.path)
        // Sources/DiffEditCore/Weights/ModelFolder.swift → repository root.
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        candidates.append(root.appendingPathComponent("demo/model").path)
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

    public init(path: String, label: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ToolError("cannot read \(label) (\(path)) — is this a diffusers model folder?")
        }
        try self.init(data: data, label: label)
    }

    public init(data: Data, label: String) throws {
        guard let obj = try? JSONSerialization.jsonObject(with: JSONConfig.quotingNonFinite(data)),
              let dict = obj as? [String: Any] else {
            throw ToolError("\(label) is not a JSON object — the model folder's config is damaged; download it again")
        }
        self.values = dict
        self.label = label
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
        return out.count == bytes.count ? data : Data(out)
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
