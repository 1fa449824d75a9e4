#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A Stable Diffusion 1.x/2.x checkpoint as one `.safetensors` file in the original CompVis/LDM
/// layout (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`), the form most
/// community models ship in and diffusers' `from_single_file` reads. The file is mapped once; each
/// network reads its weights from that mapping through a renaming view (`LDMNames`), as a diffusers
/// folder's would be read. Configs come from the weights' shapes (`SingleFileArchitecture`); what a
/// file cannot say comes from the sidecar `NAME.diffedit.json` beside it, else from Stable
/// Diffusion's own values. The tokenizer is the CLIP BPE of the bundled demo model, which SD 1.x and
/// 2.x share; SD 2.x pads with "!" (id 0), as its tokenizer (stabilityai/stable-diffusion-2's, the one
/// diffusers' from_single_file takes for OpenCLIP checkpoints) does.
public final class SingleFileCheckpoint {
    public let path: String
    /// The sidecar's path (it may not exist).
    public let sidecarPath: String
    public let family: SingleFileArchitecture.Family
    let file: SafeTensorsFile
    let architecture: SingleFileArchitecture
    /// The sidecar's sections (empty without a sidecar).
    let sidecar: [String: [String: Any]]

    /// SD 1.5's scheduler_config.json (runwayml/stable-diffusion-v1-5; every SD 1.x/2.x shares its
    /// betas) with the two keys DDIM reads that it leaves to defaults: what a single file is
    /// scheduled with unless its sidecar's "scheduler" section says otherwise.
    public static let standardScheduler: [String: Any] = [
        "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "steps_offset": 1, "set_alpha_to_one": false, "clip_sample": false,
        "skip_prk_steps": true, "trained_betas": NSNull(), "prediction_type": "epsilon", "timestep_spacing": "leading",
    ]

    public init(path: String) throws {
        self.path = path
        try SingleFileCheckpoint.refusePickle(path)
        sidecarPath = try SingleFileCheckpoint.sidecar(of: path)
        file = try SafeTensorsFile(path: path)
        let sidecarName = URL(fileURLWithPath: sidecarPath).lastPathComponent
        sidecar = try SingleFileCheckpoint.readSidecar(sidecarPath, label: sidecarName)
        try SingleFileCheckpoint.refuseOtherLayouts(file, name: path)
        architecture = try SingleFileArchitecture(shapes: file.entries.mapValues(\.shape), file: path,
                                                  overrides: sidecar, sidecar: sidecarName)
        family = architecture.family
    }

    /// The JSON config of `component` (unet, vae, text_encoder: inferred and overridden; scheduler:
    /// SD's standard one with the sidecar's keys).
    public func config(_ component: String) throws -> JSONConfig {
        if component == "scheduler" { return schedulerConfig() }
        return JSONConfig(values: try network(component).config, label: "\(component) of \(path)")
    }

    /// The weights of `component`, named as diffusers names them, read from the one mapping.
    public func weights(_ component: String) throws -> WeightStore {
        WeightStore(component: component, file: file, ldmNames: try network(component).names)
    }

    public func schedulerConfig() -> JSONConfig {
        JSONConfig(values: SingleFileCheckpoint.standardScheduler.merging(sidecar["scheduler"] ?? [:]) { _, new in new },
                   label: sidecar["scheduler"] == nil ? "the standard Stable Diffusion scheduler config"
                       : "scheduler of \(URL(fileURLWithPath: sidecarPath).lastPathComponent)")
    }

    /// Drops the resident pages of one network's weights from the shared mapping (they are read
    /// again from the page cache if used again): for a network that is done while another, which
    /// keeps the mapping, goes on.
    public func releasePages(of component: String) {
        let prefixes = ["unet": [LDMNames.unetPrefix], "vae": [LDMNames.vaePrefix],
                        "text_encoder": [LDMNames.clipPrefix, LDMNames.openCLIPPrefix]][component] ?? []
        for (key, entry) in file.entries where prefixes.contains(where: { key.hasPrefix($0) }) {
            file.releasePages(entry)
        }
    }

    /// The tokenizer files: the bundled demo model's CLIP BPE (vocab.json, merges.txt).
    public func tokenizerDirectory() throws -> String {
        guard let bundled = ModelFolder.bundledModelPath else {
            throw ToolError("\(path) is a single-file checkpoint, which holds no tokenizer, and the CLIP tokenizer diffedit uses for it (share/diffedit/model/tokenizer of its installation) is missing — reinstall diffedit, or use a diffusers folder")
        }
        return bundled + "/tokenizer"
    }

    /// SD 2.x's tokenizer pads with "!", SD 1.x's with its end token.
    public var padToken: String { family == .sd2 ? "!" : "<|endoftext|>" }

    /// A note for SD 2.x files whose sidecar does not say the prediction type: 768-pixel SD 2.x
    /// models predict v, the 512-pixel base models ε, and the weights look the same.
    public var predictionTypeNote: String? {
        guard family == .sd2, sidecar["scheduler"]?["prediction_type"] == nil else { return nil }
        return "\(URL(fileURLWithPath: path).lastPathComponent) is an SD 2.x checkpoint and nothing says what it predicts; assuming epsilon (SD 2.x-base) — for a 768-v model write {\"scheduler\": {\"prediction_type\": \"v_prediction\"}} to \(sidecarPath)"
    }

    /// Identity for provenance checks: the effective configs and the file's size — its target's,
    /// when the path is a symbolic link (stat follows it; the Hugging Face cache links each file to
    /// a blob), so a link and a copy of one checkpoint are one model.
    public var fingerprint: String {
        var st = stat()
        let size = stat(path, &st) == 0 ? Int(st.st_size) : 0
        var bytes = Array("single-file:\(size)".utf8)
        for component in ["unet", "vae", "text_encoder"] {
            if let c = try? network(component).config { bytes += SingleFileCheckpoint.canonicalJSON(c) }
        }
        bytes += SingleFileCheckpoint.canonicalJSON(schedulerConfig().values)
        return DiffEditSupport.fingerprint(bytes)
    }

    /// The scheduler config's identity (it decides the timesteps invert and denoise must share).
    public var schedulerFingerprint: String { DiffEditSupport.fingerprint(SingleFileCheckpoint.canonicalJSON(schedulerConfig().values)) }

    static func canonicalJSON(_ values: [String: Any]) -> [UInt8] {
        [UInt8]((try? JSONSerialization.data(withJSONObject: values, options: [.sortedKeys])) ?? Data())
    }

    private func network(_ component: String) throws -> (config: [String: Any], names: LDMNames) {
        switch component {
        case "unet": return try architecture.unet.get()
        case "vae": return try architecture.vae.get()
        case "text_encoder": return try architecture.textEncoder.get()
        default:
            throw ToolError("\(path) is a single-file checkpoint: it has a unet, a vae, a text_encoder and a scheduler, no '\(component)' — use a diffusers folder")
        }
    }

    // MARK: - Refusals

    /// PyTorch's `.ckpt`/`.pt`/`.bin` files are pickles: loading one runs whatever code it names.
    static func refusePickle(_ path: String) throws {
        guard PickleFile.isPickle(path) else { return }
        let converted = URL(fileURLWithPath: path).deletingPathExtension().path + ".safetensors"
        throw ToolError("\(path) is a PyTorch pickle checkpoint, which diffedit does not load: unpickling can run arbitrary code — convert it once to safetensors, e.g. python3 -c \"import torch, safetensors.torch as st; sd = torch.load('\(path)', map_location='cpu', weights_only=True); sd = sd.get('state_dict', sd); st.save_file({k: v.contiguous().clone() for k, v in sd.items() if torch.is_tensor(v)}, '\(converted)')\" (weights_only=True reads tensors without running code), then use --model \(converted)")
    }

    /// Top-level key prefixes of diffusers' and transformers' component files (UNet, VAE, CLIP
    /// text model), never found at the top of an LDM checkpoint.
    static let diffusersPrefixes = ["down_blocks.", "up_blocks.", "mid_block.", "time_embedding.", "conv_in.", "conv_out.",
                                    "conv_norm_out.", "encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "text_model."]

    /// Files that are safetensors but not a whole SD 1.x/2.x checkpoint in the LDM layout.
    static func refuseOtherLayouts(_ file: SafeTensorsFile, name: String) throws {
        let keys = file.entries.keys
        if keys.contains(where: { $0.hasPrefix("conditioner.embedders.") }) {
            throw ToolError("\(name) is an SDXL checkpoint (conditioner.embedders.*) — diffedit supports Stable Diffusion 1.x and 2.x")
        }
        let diffusersKeys = keys.filter { k in diffusersPrefixes.contains { k.hasPrefix($0) } }
        if keys.contains(where: { $0.hasPrefix(LDMNames.unetPrefix) }) {
            // Weights under both namings: which of them a reader takes depends on the reader
            // (README: refused), so neither is guessed.
            if let other = diffusersKeys.min() {
                throw ToolError("\(name) mixes layouts: it holds LDM weights (model.diffusion_model.*) and diffusers-named ones ('\(JSONValue.shown(other))', \(diffusersKeys.count) in all) — use a checkpoint in one layout (convert it again from its source)")
            }
            return
        }
        let what: String
        if keys.contains(where: { $0.hasPrefix("down_blocks.") || $0.hasPrefix("encoder.down_blocks.") || $0.hasPrefix("text_model.") || $0.hasPrefix("encoder.layers.") }) {
            what = "one component of a diffusers folder (diffusers names, no model.diffusion_model.*) — point --model at the folder that holds it (model_index.json, unet/, vae/, …)"
        } else if keys.contains(where: { $0.hasPrefix("lora_") || $0.contains(".lora_") || $0.contains("lora_down") }) {
            what = "a LoRA, not a whole model — diffedit needs a whole Stable Diffusion 1.x/2.x checkpoint"
        } else {
            what = "not a Stable Diffusion checkpoint in the original (LDM) layout: it has no model.diffusion_model.* weights — use a whole SD 1.x/2.x checkpoint or a diffusers folder"
        }
        throw ToolError("\(name) is \(what)")
    }

    /// The sidecar of the checkpoint at `path`: STEM.diffedit.json beside it, its name matched
    /// whatever the case of either (X.SAFETENSORS takes X.diffedit.json). Two that differ only in
    /// case are refused, since either could be the one meant. Without one, where it would go.
    static func sidecar(of path: String) throws -> String {
        let name = (path as NSString).lastPathComponent
        let stem = name.lowercased().hasSuffix(".safetensors") ? String(name.dropLast(".safetensors".count)) : name
        let folder = (path as NSString).deletingLastPathComponent
        func at(_ n: String) -> String { folder.isEmpty ? n : (folder as NSString).appendingPathComponent(n) }
        let wanted = (stem + ".diffedit.json").lowercased()
        let found = ((try? FileManager.default.contentsOfDirectory(atPath: folder.isEmpty ? "." : folder)) ?? [])
            .filter { $0.lowercased() == wanted }.sorted()
        if found.count > 1 {
            throw ToolError("\(path) has \(found.count) sidecars whose names differ only in case (\(found.map(at).joined(separator: ", "))) — keep one, remove the others")
        }
        return at(found.first ?? stem + ".diffedit.json")
    }

    /// The sidecar's sections, each checked to set only what the file cannot say.
    static func readSidecar(_ path: String, label: String) throws -> [String: [String: Any]] {
        // Opened without blocking and refused unless a regular file; read by the folder configs'
        // reader (Python's bare -Infinity and NaN read, a key given twice refused).
        guard let bytes = try InputFile.readIfPresent(path, what: "the sidecar", limit: 1 << 20) else { return [:] }
        let object = try JSONConfig.object(bytes, label: label, remedy: "write it as {\"scheduler\": {…}, \"unet\": {…}, \"vae\": {…}, \"text_encoder\": {…}} (man 5 diffedit-model)")
        var out: [String: [String: Any]] = [:]
        for (section, value) in object {
            guard section == "scheduler" || SingleFileArchitecture.overridable[section] != nil else {
                throw ToolError("\(label): unknown section '\(JSONValue.shown(section))' — the sidecar has scheduler, unet, vae and text_encoder sections")
            }
            guard let keys = value as? [String: Any] else {
                throw ToolError("\(label): '\(section)' is not a JSON object — write it as \"\(section)\": {\"key\": value}")
            }
            if let allowed = SingleFileArchitecture.overridable[section],
               let bad = keys.keys.sorted().first(where: { !allowed.contains($0) }) {
                throw ToolError("\(label): \(section).\(JSONValue.shown(bad)) is read from the weights, not the sidecar — remove it (\(section) may set \(allowed.sorted().joined(separator: ", ")))")
            }
            out[section] = keys
        }
        return out
    }
}
