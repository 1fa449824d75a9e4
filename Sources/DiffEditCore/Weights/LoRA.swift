import Foundation

/// A LoRA adapter file: low-rank updates W' = W + scale · s · B·A of a model's linear and
/// convolution weights (Hu et al. 2021, arXiv 2106.09685), for the UNet and the text encoder.
/// Two layouts, told apart by their names:
///
/// * kohya-ss / A1111: `lora_unet_<module>.lora_down.weight` (A), `.lora_up.weight` (B), `.alpha`
///   (a scalar), the module named as diffusers' with `.` written `_`; `lora_te_<module>` for the
///   text encoder. s = alpha / rank (alpha absent: 1).
/// * diffusers / PEFT (`save_lora_weights`): `unet.<module>.lora_A.weight`, `.lora_B.weight`,
///   `text_encoder.<module>.…`; s = lora_alpha / r (or / √r with use_rslora) from the header's
///   `lora_adapter_metadata` (`unet.lora_alpha`, `unet.alpha_pattern`, …), else 1, as diffusers'
///   `get_peft_kwargs` takes it.
///
/// A is [r, in] for a linear, [r, C, k, k] for a k×k convolution (applied with the base conv's
/// stride and padding); B is [out, r] or [out, r, 1, 1].
public final class LoRAFile {
    public enum Part: String, CaseIterable { case unet, textEncoder = "text_encoder" }
    public enum Layout: String { case kohya, peft }

    struct Module {
        let down: SafeTensorsFile.Entry
        let up: SafeTensorsFile.Entry
        /// alpha/r (or alpha/√r): the file's own factor, before the user's scale.
        let factor: Float
        var rank: Int { down.shape[0] }
    }

    public let path: String
    public let layout: Layout
    /// FNV-1a of the file's bytes (what the tools record and compare).
    public let fingerprint: String
    let file: SafeTensorsFile
    /// Modules per part, keyed by `LoRAFile.key` of the module's name.
    let modules: [Part: [String: Module]]
    /// The name each key had in the file, for messages.
    let fileNames: [Part: [String: String]]

    /// A module's key: its diffusers path with `_` for `.`, without the text encoder's
    /// `text_model.` wrapper (transformers 4 has it, 5 does not; kohya's names always do).
    static func key(_ module: String) -> String {
        let m = module.hasPrefix("text_model.") ? String(module.dropFirst("text_model.".count)) : module
        let k = m.replacingOccurrences(of: ".", with: "_")
        return k.hasPrefix("text_model_") ? String(k.dropFirst("text_model_".count)) : k
    }

    public init(path: String) throws {
        let label = "--lora \(path)"
        if PickleFile.isPickle(path) {
            let converted = URL(fileURLWithPath: path).deletingPathExtension().path + ".safetensors"
            throw ToolError("\(label) is a PyTorch pickle, which diffedit does not load: unpickling can run arbitrary code — convert it once to safetensors, e.g. python3 -c \"import torch, safetensors.torch as st; d = torch.load('\(path)', map_location='cpu', weights_only=True); st.save_file({k: v.contiguous() for k, v in d.items()}, '\(converted)')\", then use --lora \(converted)")
        }
        let file: SafeTensorsFile
        do { file = try SafeTensorsFile(path: path) } catch let e as ToolError { throw ToolError("\(label): \(e.message)") }
        self.file = file
        self.path = path
        let names = file.names
        guard !names.isEmpty else { throw ToolError("\(label) holds no tensor — it is not a LoRA") }
        func refuse(_ name: String, _ why: String) -> ToolError {
            ToolError("\(label): tensor '\(JSONValue.shown(name))' \(why)")
        }
        if let n = names.first(where: { $0.contains("dora_scale") || $0.contains("lora_magnitude_vector") }) {
            throw refuse(n, "is a DoRA magnitude — DoRA adapters are not supported; use a plain LoRA")
        }
        if let n = names.first(where: { $0.contains("hada_") || $0.contains("lokr_") }) {
            throw refuse(n, "is LyCORIS LoHa/LoKr — only LoRA (lora_down/lora_up or lora_A/lora_B) is supported")
        }
        if let n = names.first(where: { $0.hasPrefix("lora_te2_") || $0.hasPrefix("lora_te1_") || $0.hasPrefix("text_encoder_2.") }) {
            throw refuse(n, "belongs to a second text encoder: the LoRA is for SDXL — diffedit runs Stable Diffusion 1.x and 2.x")
        }
        guard names.contains(where: { $0.contains("lora_") }) else {
            throw ToolError("\(label) holds no LoRA tensors (lora_A/lora_B or lora_down/lora_up) but \(names.count) others (e.g. '\(JSONValue.shown(names[0]))') — is it a model checkpoint or an embedding? give it to --model or --embedding")
        }
        let kohya = names.contains { $0.hasPrefix("lora_unet_") || $0.hasPrefix("lora_te_") }
        layout = kohya ? .kohya : .peft

        // Group the tensors: (part, module) → down, up, alpha.
        var down: [Part: [String: (name: String, entry: SafeTensorsFile.Entry, module: String)]] = [:], up = down
        var alphas: [Part: [String: Float]] = [:]
        for name in names {
            let entry = file.entries[name]!
            let part: Part, module: String, kind: String
            if kohya {
                guard let dot = name.firstIndex(of: ".") else { throw refuse(name, "is not a LoRA tensor (expected lora_unet_… or lora_te_… with .lora_down.weight, .lora_up.weight or .alpha)") }
                let stem = String(name[..<dot])
                kind = String(name[name.index(after: dot)...])
                if stem.hasPrefix("lora_unet_") { part = .unet; module = String(stem.dropFirst("lora_unet_".count)) }
                else if stem.hasPrefix("lora_te_") { part = .textEncoder; module = String(stem.dropFirst("lora_te_".count)) }
                else { throw refuse(name, "is neither lora_unet_… nor lora_te_… — is the LoRA for another kind of model?") }
            } else {
                let prefixes: [(String, Part)] = [("unet.", .unet), ("text_encoder.", .textEncoder)]
                guard let (prefix, p) = prefixes.first(where: { name.hasPrefix($0.0) }) else {
                    throw refuse(name, "names neither unet.… nor text_encoder.… — expected a diffusers/PEFT LoRA (unet.<module>.lora_A.weight) or a kohya one (lora_unet_<module>.lora_down.weight)")
                }
                part = p
                let rest = name.dropFirst(prefix.count)
                guard let r = rest.range(of: ".lora_", options: .backwards) else {
                    throw refuse(name, "is not lora_A / lora_B of a module — is it a LoRA?")
                }
                module = String(rest[..<r.lowerBound])
                kind = String(rest[r.lowerBound...].dropFirst())
            }
            let key = Self.key(module)
            switch kind {
            case "lora_down.weight", "lora_A.weight": down[part, default: [:]][key] = (name, entry, module)
            case "lora_up.weight", "lora_B.weight": up[part, default: [:]][key] = (name, entry, module)
            case "alpha" where kohya:
                guard entry.count == 1, [.F32, .F16, .BF16, .F64].contains(entry.dtype), let a = try file.floats(entry).first, a.isFinite, a > 0 else {
                    throw refuse(name, "should be one positive number (the module's alpha)")
                }
                alphas[part, default: [:]][key] = a
            case "lora_B.bias", "lora_up.bias": throw refuse(name, "is a LoRA bias (lora_bias=True), which is not supported")
            default: throw refuse(name, "is not a LoRA tensor (expected \(kohya ? ".lora_down.weight, .lora_up.weight or .alpha" : ".lora_A.weight or .lora_B.weight"))")
            }
        }
        let config = try PEFTConfig(file.metadata["lora_adapter_metadata"], label: label)
        var modules: [Part: [String: Module]] = [:], fileNames: [Part: [String: String]] = [:]
        for part in Part.allCases {
            let d = down[part] ?? [:], u = up[part] ?? [:]
            for key in Set(d.keys).union(u.keys).sorted() {
                guard let (dn, de, module) = d[key] else { throw ToolError("\(label): \(u[key]!.name) has no matching lora_down/lora_A — the file is incomplete") }
                guard let (un, ue, _) = u[key] else { throw ToolError("\(label): \(dn) has no matching lora_up/lora_B — the file is incomplete") }
                for (n, e) in [(dn, de), (un, ue)] where ![.F32, .F16, .BF16].contains(e.dtype) || e.shape.count < 2 {
                    throw refuse(n, "is \(e.dtype.rawValue) \(e.shape) — LoRA weights are F32, F16 or BF16 matrices")
                }
                let r = de.shape[0]
                guard r > 0, ue.shape[1] == r, ue.shape.dropFirst(2).allSatisfy({ $0 == 1 }) else {
                    throw ToolError("\(label): \(dn) \(de.shape) and \(un) \(ue.shape) do not make a rank-\(r) update (B must be [out, r] or [out, r, 1, 1])")
                }
                let factor: Float
                if kohya {
                    factor = (alphas[part]?[key]).map { $0 / Float(r) } ?? 1
                } else {
                    factor = config.factor(part: part, module: module, rank: r)
                }
                modules[part, default: [:]][key] = Module(down: de, up: ue, factor: factor)
                fileNames[part, default: [:]][key] = kohya ? String(dn.prefix { $0 != "." }) : "\(part.rawValue).\(module)"
            }
            for (key, _) in alphas[part] ?? [:] where d[key] == nil {
                throw ToolError("\(label): an alpha names module '\(key)', which has no lora_down/lora_up — the file is incomplete")
            }
        }
        guard !modules.isEmpty else { throw ToolError("\(label) holds no LoRA module") }
        self.modules = modules
        self.fileNames = fileNames
        fingerprint = file.contentFingerprint
    }

    /// The adapter config diffusers saves in the header (`lora_adapter_metadata`, LoraConfig
    /// fields under "unet." and "text_encoder."): what makes s = lora_alpha / r.
    struct PEFTConfig {
        struct Fields { var r: Int?; var alpha: Float?; var rankPattern: [String: Int] = [:]; var alphaPattern: [String: Float] = [:]; var rslora = false }
        var parts: [Part: Fields] = [:]

        init(_ json: String?, label: String) throws {
            guard let json else { return }
            guard case .object(let members)? = try? JSONValue.parseDocument(Array(json.utf8)) else {
                throw ToolError("\(label): its lora_adapter_metadata is not a JSON object — the header is damaged; save the LoRA again")
            }
            for (k, v) in members {
                guard let dot = k.firstIndex(of: "."), let part = Part(rawValue: String(k[..<dot])) else { continue }
                var f = parts[part] ?? Fields()
                switch String(k[k.index(after: dot)...]) {
                case "r": f.r = v.doubleValue.map { Int($0) }
                case "lora_alpha": f.alpha = v.doubleValue.map { Float($0) }
                case "use_rslora": f.rslora = v.boolValue ?? false
                case "use_dora" where v.boolValue == true:
                    throw ToolError("\(label): its metadata says use_dora — DoRA adapters are not supported; use a plain LoRA")
                case "rank_pattern":
                    for (p, n) in v.objectValue ?? [] { if let d = n.doubleValue { f.rankPattern[p] = Int(d) } }
                case "alpha_pattern":
                    for (p, n) in v.objectValue ?? [] { if let d = n.doubleValue { f.alphaPattern[p] = Float(d) } }
                default: break
                }
                parts[part] = f
            }
        }

        /// PEFT matches a pattern key to a module when the module's name is the key or ends
        /// with "." + key (`re.match(rf"(.*\.)?{key}$", name)`, keys taken literally here).
        static func lookup<T>(_ patterns: [String: T], _ module: String) -> T? {
            patterns.filter { module == $0.key || module.hasSuffix("." + $0.key) }.max { $0.key.count < $1.key.count }?.value
        }

        /// s for `module` of rank r: alpha / r (alpha / √r with rslora); 1 without metadata.
        func factor(part: Part, module: String, rank: Int) -> Float {
            guard let f = parts[part], let alpha = Self.lookup(f.alphaPattern, module) ?? f.alpha else { return 1 }
            return f.rslora ? alpha / Float(rank).squareRoot() : alpha / Float(rank)
        }
    }
}

/// The LoRAs a tool was given (`--lora FILE[:SCALE]`, in order): what the models add to the
/// layers they load, and what the tools record and compare.
public final class LoRASet {
    public struct Adapter {
        public let file: LoRAFile
        public let scale: Float
    }

    /// How the update is applied. `.lowRank` (default): x·Aᵀ·Bᵀ·s next to the base product, so
    /// the base weights stay the shared, read-only pages of the checkpoint; `.merged`: W + s·B·A
    /// into a private f32 copy of each layer a LoRA touches.
    public enum Mode: String, CaseIterable { case lowRank = "low-rank", merged }

    public let adapters: [Adapter]
    public let mode: Mode
    /// Modules of each part some model has taken (LoRAFile.key), for the check that every module
    /// of the files found its layer.
    private var used: [LoRAFile.Part: Set<String>] = [:]

    public init(_ adapters: [Adapter] = [], mode: Mode = .lowRank) {
        self.adapters = adapters
        self.mode = mode
    }

    public var isEmpty: Bool { adapters.isEmpty }

    /// `FILE[:SCALE]` (scale 1 when absent). A FILE that exists is taken whole even when its name
    /// holds a colon.
    public static func adapter(argument: String) throws -> Adapter {
        guard !argument.isEmpty else { throw ToolError("--lora '' names no file — give FILE or FILE:SCALE") }
        var path = argument, scale: Float = 1
        if !InputFile.exists(argument), let colon = argument.lastIndex(of: ":") {
            path = String(argument[..<colon])
            let text = String(argument[argument.index(after: colon)...])
            guard let s = Float(text), s.isFinite, abs(s) <= scaleLimit else {
                throw ToolError("--lora \(argument): scale '\(text)' is not a number in -\(Int(scaleLimit))…\(Int(scaleLimit)) — give FILE:SCALE, e.g. \(path):0.8")
            }
            scale = s
        }
        return Adapter(file: try LoRAFile(path: path), scale: scale)
    }

    /// The domain of a LoRA's scale (diffusers takes any float; beyond ±16 the result is noise).
    public static let scaleLimit: Float = 16

    /// What the tools record: the files (as given) and scales, and a fingerprint of the files'
    /// contents and scales in order ("none" for no LoRA).
    public var description: String {
        adapters.isEmpty ? "none" : adapters.map { "\($0.file.path):\(Self.format($0.scale))" }.joined(separator: " ")
    }

    public var fingerprint: String {
        adapters.isEmpty ? "none"
            : DiffEditSupport.fingerprint(Array(adapters.map { "\($0.file.fingerprint):\(Self.format($0.scale))" }.joined(separator: ",").utf8))
    }

    static func format(_ s: Float) -> String { s == s.rounded() && abs(s) < 1e6 ? String(Int(s)) : "\(s)" }

    /// The low-rank update of the layer `module` of `part` (its diffusers name), whose weight is
    /// [out, inFlat] (inFlat = C·k·k for a conv): every adapter's A stacked by rows, B by columns
    /// with scale·s folded in; nil when no adapter touches it. Checks the shapes.
    func update(_ part: LoRAFile.Part, module: String, out: Int, inFlat: Int) throws -> LowRankUpdate? {
        let key = LoRAFile.key(module)
        let hits = adapters.compactMap { a in a.file.modules[part]?[key].map { (a, $0) } }
        guard !hits.isEmpty else { return nil }
        used[part, default: []].insert(key)
        let rank = hits.reduce(0) { $0 + $1.1.rank }
        var down = [Float](repeating: 0, count: rank * inFlat), up = [Float](repeating: 0, count: out * rank)
        var r0 = 0
        for (adapter, m) in hits {
            let r = m.rank
            let a = m.down.count / r, b = m.up.count / r
            guard a == inFlat, b == out else {
                throw ToolError("--lora \(adapter.file.path): \(adapter.file.fileNames[part]![key]!) adapts a [\(b), \(a)] weight, but this model's \(module) is [\(out), \(inFlat)] — the LoRA is for another model")
            }
            let d = try adapter.file.file.floats(m.down), u = try adapter.file.file.floats(m.up)
            guard d.allSatisfy(\.isFinite), u.allSatisfy(\.isFinite) else {
                throw ToolError("--lora \(adapter.file.path): \(adapter.file.fileNames[part]![key]!) holds NaN or infinite values — the file is damaged")
            }
            down.replaceSubrange(r0 * inFlat ..< (r0 + r) * inFlat, with: d)
            let s = adapter.scale * m.factor
            for o in 0..<out { for j in 0..<r { up[o * rank + r0 + j] = u[o * r + j] * s } }
            r0 += r
        }
        return LowRankUpdate(rank: rank, inFlat: inFlat, out: out, down: down, up: up)
    }

    /// Refuses modules of `part` no layer took (a LoRA for another architecture, or names this
    /// tool does not know), once the model is loaded.
    func checkAllUsed(_ part: LoRAFile.Part, model: String) throws {
        for a in adapters {
            let missing = (a.file.modules[part] ?? [:]).keys.filter { !(used[part]?.contains($0) ?? false) }.sorted()
            guard let first = missing.first else { continue }
            throw ToolError("--lora \(a.file.path): \(missing.count) of its \(part == .unet ? "UNet" : "text-encoder") modules (e.g. \(a.file.fileNames[part]![first]!)) match no layer of \(model) — the LoRA is for another model (or names its layers in a layout diffedit does not read)")
        }
    }
}

/// A low-rank update of one layer: y += (x·Aᵀ)·Bᵀ, with A = `down` [rank, inFlat] and B = `up`
/// [out, rank] (every adapter's scale folded into B).
struct LowRankUpdate {
    let rank: Int
    let inFlat: Int
    let out: Int
    let down: Parameter
    let up: Parameter

    init(rank: Int, inFlat: Int, out: Int, down: [Float], up: [Float]) {
        self.rank = rank
        self.inFlat = inFlat
        self.out = out
        self.down = Parameter(shape: [rank, inFlat], values: down)
        self.up = Parameter(shape: [out, rank], values: up)
    }

    /// W + B·A into `weight` ([out, inFlat], f32): the merged mode.
    func merge(into weight: UnsafeMutablePointer<Float>) {
        BLAS.gemm(threads: 1, m: out, n: inFlat, k: rank, a: up.pointer, lda: rank, b: down.pointer, ldb: inFlat,
                  beta: 1, c: weight, ldc: inFlat)
    }
}
