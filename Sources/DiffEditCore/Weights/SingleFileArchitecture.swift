/// The diffusers configs of the three networks of a Stable Diffusion 1.x/2.x checkpoint in the
/// original (LDM) layout, read from its weights' shapes: channel widths, levels, resnets per level,
/// where the attentions are, cross-attention width, 1×1-conv or linear projections, text encoder
/// width, depth and vocabulary. What shapes cannot say takes the values of the original LDM
/// configs (`assumed`), which a sidecar may override: attention heads (SD 1.x: 8 per block,
/// v1-inference.yaml num_heads; SD 2.x: heads of 64 channels, v2-inference*.yaml
/// num_head_channels; the text towers: heads of 64), GroupNorm groups (32), the epsilons, the VAE's
/// scaling factor (0.18215), and that SD 2.x reads the text tower's penultimate block.
public struct SingleFileArchitecture {
    /// The text encoder's naming, which tells SD 1.x (CLIP ViT-L/14, `cond_stage_model.transformer.`)
    /// from SD 2.x (OpenCLIP ViT-H/14, `cond_stage_model.model.`).
    public enum Family: String, Sendable {
        case sd1 = "SD 1.x", sd2 = "SD 2.x"
    }

    /// One network's config (diffusers keys) and how its weights are named in the file; or why the
    /// file does not hold it.
    typealias Component = Result<(config: [String: Any], names: LDMNames), ToolError>

    let family: Family
    let unet: Component
    let vae: Component
    let textEncoder: Component

    /// `shapes`: the file's keys and shapes. `overrides`: the sidecar's values per component,
    /// applied over the inferred and assumed ones (`sidecar` names it in messages).
    init(shapes: [String: [Int]], file: String, overrides: [String: [String: Any]], sidecar: String) throws {
        let hasCLIP = shapes.keys.contains { $0.hasPrefix(LDMNames.clipPrefix) }
        let hasOpenCLIP = shapes.keys.contains { $0.hasPrefix(LDMNames.openCLIPPrefix) }
        if hasCLIP && hasOpenCLIP {
            throw ToolError("\(file) holds both an SD 1.x text encoder (cond_stage_model.transformer.*) and an SD 2.x one (cond_stage_model.model.*) — the file mixes two models; use a checkpoint of one model")
        }
        let reader = ShapeReader(shapes: shapes, file: file, sidecar: sidecar)
        var family: Family = hasOpenCLIP ? .sd2 : .sd1
        if !hasCLIP && !hasOpenCLIP,
           let k = shapes[LDMNames.unetPrefix + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"], k.last == 1024 {
            family = .sd2  // no text encoder: diffusers' test (cross-attention over 1024-wide text)
        }
        self.family = family
        unet = Result { try reader.unet(family: family, overrides: overrides["unet"] ?? [:]) }
            .mapError { $0 as? ToolError ?? ToolError("\($0)") }
        vae = Result { try reader.vae(family: family, overrides: overrides["vae"] ?? [:]) }.mapError { $0 as? ToolError ?? ToolError("\($0)") }
        textEncoder = Result { try reader.textEncoder(family: family, overrides: overrides["text_encoder"] ?? [:]) }
            .mapError { $0 as? ToolError ?? ToolError("\($0)") }
        // Parts of different models in one file: the UNet must read this text encoder's width and
        // this VAE's latents.
        if case let .success(u) = unet, case let .success(t) = textEncoder,
           let cross = u.config["cross_attention_dim"] as? Int, let width = t.config["hidden_size"] as? Int, cross != width {
            throw ToolError("\(file) mixes models: its text encoder is \(width) wide but its UNet's cross-attention reads \(cross) — use a checkpoint of one model")
        }
        if case let .success(u) = unet, case let .success(v) = vae,
           let inC = u.config["in_channels"] as? Int, let latent = v.config["latent_channels"] as? Int, inC != latent, inC == 4 {
            throw ToolError("\(file) mixes models: its VAE makes \(latent)-channel latents but its UNet reads \(inC) — use a checkpoint of one model")
        }
    }

    /// Keys each component's sidecar section may set: the values shapes cannot say.
    static let overridable: [String: Set<String>] = [
        "unet": ["attention_head_dim", "norm_num_groups", "norm_eps", "flip_sin_to_cos", "freq_shift", "upcast_attention",
                 "sample_size"],
        "vae": ["norm_num_groups", "scaling_factor", "sample_size"],
        "text_encoder": ["num_attention_heads", "num_hidden_layers", "hidden_act", "layer_norm_eps"],
    ]
}

/// Reads architecture from a key → shape table, with messages naming the file.
private struct ShapeReader {
    let shapes: [String: [Int]]
    let file: String
    let sidecar: String

    func has(_ key: String) -> Bool { shapes[key] != nil }

    /// The shape of `key`, which must exist with `rank` dimensions.
    func shape(_ key: String, rank: Int, _ what: String) throws -> [Int] {
        guard let s = shapes[key] else {
            throw ToolError("\(what): missing weight '\(key)' in \(file) — the file is incomplete, or not a Stable Diffusion 1.x/2.x checkpoint in the original (LDM) layout")
        }
        guard s.count == rank, s.allSatisfy({ $0 > 0 }) else {
            throw ToolError("\(what): weight '\(key)' has shape \(s), expected \(rank) positive dimensions — the file is damaged or not a Stable Diffusion checkpoint")
        }
        return s
    }

    /// Applies the sidecar's values over `config`.
    func merged(_ config: [String: Any], _ overrides: [String: Any]) -> [String: Any] {
        config.merging(overrides) { _, new in new }
    }

    /// `parts` (heads, or GroupNorm groups) splits each of `widths` evenly; else a message saying
    /// how to give them (`given`: the sidecar set them).
    func checkSplit(_ parts: [Int], _ widths: [Int], key: String, component: String, given: Bool) throws {
        for (n, c) in zip(parts, widths) where n < 1 || c % n != 0 {
            if given {
                throw ToolError("\(sidecar): \(component).\(key) \(parts) does not split the widths \(widths) evenly — correct it in \(sidecar)")
            }
            let what = key == "norm_num_groups" ? "Stable Diffusion's \(n) GroupNorm groups" : "the attention heads Stable Diffusion uses"
            throw ToolError("\(component): width \(c) does not split into \(what), and the file cannot say how many it has — give \(key) in \(sidecar) beside it, e.g. {\"\(component)\": {\"\(key)\": …}}")
        }
    }

    /// The config's `key` as one int per width (an int applies to every one).
    func perWidth(_ config: [String: Any], _ key: String, count: Int) -> [Int]? {
        (config[key] as? [Int]) ?? (config[key] as? Int).map { Array(repeating: $0, count: count) }
    }

    func unet(family: SingleFileArchitecture.Family, overrides: [String: Any]) throws -> (config: [String: Any], names: LDMNames) {
        let p = LDMNames.unetPrefix
        guard shapes.keys.contains(where: { $0.hasPrefix(p) }) else {
            throw ToolError("\(file) holds no UNet (model.diffusion_model.* weights) — it is not a whole Stable Diffusion checkpoint; use one that has the UNet")
        }
        if let bad = shapes.keys.first(where: { $0.hasPrefix(p) && ($0.contains(".down_blocks.") || $0.contains(".up_blocks.") || $0.hasPrefix(p + "down_blocks.")) }) {
            throw ToolError("\(file) mixes layouts: '\(bad)' is a diffusers name inside the LDM UNet (model.diffusion_model.*) — convert the file again, or use the diffusers folder")
        }
        let convIn = try shape(p + "input_blocks.0.0.weight", rank: 4, "unet")
        let temb = try shape(p + "time_embed.0.weight", rank: 2, "unet")
        let convOut = try shape(p + "out.2.weight", rank: 4, "unet")
        // Walk the input blocks: resnets (with an attention at .1) until a downsampler closes a level.
        var levels: [(channels: Int, resnets: Int, attention: Bool)] = []
        var current: (channels: Int, resnets: Int, attention: Bool)?
        var i = 1
        while true {
            let b = p + "input_blocks.\(i)."
            if has(b + "0.op.weight") {
                guard let c = current else {
                    throw ToolError("unet: input block \(i) downsamples a level without resnets in \(file) — not a Stable Diffusion UNet")
                }
                levels.append(c)
                current = nil
            } else if has(b + "0.in_layers.0.weight") {
                let ch = try shape(b + "0.out_layers.3.weight", rank: 4, "unet")[0]
                let attention = has(b + "1.proj_in.weight")
                if let c = current, c.channels != ch || c.attention != attention {
                    throw ToolError("unet: input block \(i) of \(file) differs from the others of its level (width \(ch), attention \(attention)) — not a Stable Diffusion UNet")
                }
                current = (ch, (current?.resnets ?? 0) + 1, attention)
            } else {
                break
            }
            i += 1
        }
        guard let last = current else {
            throw ToolError("unet: the input blocks of \(file) end with a downsampler, or there are none — not a Stable Diffusion UNet")
        }
        levels.append(last)
        let lpb = levels[0].resnets
        if let bad = levels.first(where: { $0.resnets != lpb }) {
            throw ToolError("unet: the levels of \(file) have \(levels.map(\.resnets)) resnets (one with \(bad.resnets)); the LDM layout has one count — not a Stable Diffusion UNet")
        }
        let n = levels.count
        let outputs = n * (lpb + 1)
        for k in [outputs - 1, outputs] where has(p + "output_blocks.\(k).0.in_layers.0.weight") != (k < outputs) {
            throw ToolError("unet: \(file) has \(k < outputs ? "fewer" : "more") output blocks than the \(outputs) its \(n) levels of \(lpb) resnets imply — the file is damaged or mixes models")
        }
        let upAttention = (0..<n).map { has(p + "output_blocks.\($0 * (lpb + 1)).1.proj_in.weight") }
        guard has(p + "middle_block.1.proj_in.weight") else {
            throw ToolError("unet: \(file) has no middle_block.1 attention — not a text-conditioned Stable Diffusion 1.x/2.x UNet")
        }
        // Cross-attention width, projection kind and transformer depth, from the mid block.
        let mid = p + "middle_block.1."
        let cross = try shape(mid + "transformer_blocks.0.attn2.to_k.weight", rank: 2, "unet")[1]
        let projIn = shapes[mid + "proj_in.weight"]!
        if has(mid + "transformer_blocks.1.norm1.weight") {
            throw ToolError("unet: \(file) has several transformer blocks per attention (SDXL-style transformer_depth) — only Stable Diffusion 1.x/2.x UNets are supported")
        }
        let channels = levels.map(\.channels)
        var config: [String: Any] = [
            "_class_name": "UNet2DConditionModel",
            "in_channels": convIn[1], "out_channels": convOut[0], "conv_in_kernel": convIn[2], "conv_out_kernel": convOut[2],
            "block_out_channels": channels, "layers_per_block": lpb,
            "down_block_types": levels.map { $0.attention ? "CrossAttnDownBlock2D" : "DownBlock2D" },
            "up_block_types": upAttention.map { $0 ? "CrossAttnUpBlock2D" : "UpBlock2D" },
            "cross_attention_dim": cross, "use_linear_projection": projIn.count == 2,
            "attention_head_dim": family == .sd2 ? channels.map { $0 / 64 } : Array(repeating: 8, count: n),
            "norm_num_groups": 32, "norm_eps": 1e-5, "flip_sin_to_cos": true, "freq_shift": 0,
        ]
        if temb[0] != 4 * convIn[0] { config["time_embedding_dim"] = temb[0] }
        config = merged(config, overrides)
        for key in ["norm_num_groups", "attention_head_dim"] {
            if let parts = perWidth(config, key, count: n), parts.count == n {
                try checkSplit(parts, channels, key: key, component: "unet", given: overrides[key] != nil)
            }
        }
        return (config, .unet(layersPerBlock: lpb, upBlockHasAttention: upAttention))
    }

    func vae(family: SingleFileArchitecture.Family, overrides: [String: Any]) throws -> (config: [String: Any], names: LDMNames) {
        let p = LDMNames.vaePrefix
        guard shapes.keys.contains(where: { $0.hasPrefix(p) }) else {
            throw ToolError("\(file) holds no VAE (first_stage_model.* weights) — use a checkpoint with its VAE, or a diffusers folder")
        }
        if let bad = shapes.keys.first(where: { $0.hasPrefix(p) && ($0.contains("down_blocks.") || $0.contains("up_blocks.")) }) {
            throw ToolError("\(file) mixes layouts: '\(bad)' is a diffusers name inside the LDM VAE (first_stage_model.*) — convert the file again, or use the diffusers folder")
        }
        let convIn = try shape(p + "encoder.conv_in.weight", rank: 4, "vae")
        var channels: [Int] = []
        var resnets: [Int] = []
        while has(p + "encoder.down.\(channels.count).block.0.conv1.weight") {
            let level = channels.count
            channels.append(try shape(p + "encoder.down.\(level).block.0.conv1.weight", rank: 4, "vae")[0])
            var j = 0
            while has(p + "encoder.down.\(level).block.\(j).conv1.weight") { j += 1 }
            resnets.append(j)
        }
        guard let lpb = resnets.first, resnets.allSatisfy({ $0 == lpb }) else {
            throw ToolError("vae: the encoder levels of \(file) have \(resnets) resnets — the file is incomplete or not a Stable Diffusion VAE")
        }
        let latent = try shape(p + "decoder.conv_in.weight", rank: 4, "vae")[1]
        let config: [String: Any] = [
            "_class_name": "AutoencoderKL",
            "in_channels": convIn[1], "out_channels": try shape(p + "decoder.conv_out.weight", rank: 4, "vae")[0],
            "latent_channels": latent, "block_out_channels": channels, "layers_per_block": lpb,
            "down_block_types": Array(repeating: "DownEncoderBlock2D", count: channels.count),
            "up_block_types": Array(repeating: "UpDecoderBlock2D", count: channels.count),
            "norm_num_groups": 32, "scaling_factor": 0.18215,
            "use_quant_conv": has(p + "quant_conv.weight"), "use_post_quant_conv": has(p + "post_quant_conv.weight"),
            "mid_block_add_attention": has(p + "encoder.mid.attn_1.q.weight"),
            // The tiling default only (vae-encode/vae-decode --tile): diffusers' from_single_file
            // takes DIFFUSERS_TO_LDM_DEFAULT_IMAGE_SIZE_MAP, 512 for v1 and 768 for v2.
            "sample_size": family == .sd1 ? 512 : 768,
        ]
        let c = merged(config, overrides)
        if let groups = perWidth(c, "norm_num_groups", count: channels.count) {
            try checkSplit(groups, channels, key: "norm_num_groups", component: "vae", given: overrides["norm_num_groups"] != nil)
        }
        return (c, .vae(blocks: channels.count))
    }

    func textEncoder(family: SingleFileArchitecture.Family, overrides: [String: Any]) throws -> (config: [String: Any], names: LDMNames) {
        let config: [String: Any]
        let names: LDMNames
        switch family {
        case .sd1:
            guard shapes.keys.contains(where: { $0.hasPrefix(LDMNames.clipPrefix) }) else {
                throw ToolError("\(file) holds no text encoder (cond_stage_model.* weights) — use a checkpoint with its text encoder, or a diffusers folder")
            }
            // transformers 4 writes a text_model. level (every SD 1.x file); older files lack it.
            let p = LDMNames.clipPrefix + (has(LDMNames.clipPrefix + "text_model.embeddings.token_embedding.weight") ? "text_model." : "")
            let token = try shape(p + "embeddings.token_embedding.weight", rank: 2, "text_encoder")
            var layers = 0
            while has(p + "encoder.layers.\(layers).layer_norm1.weight") { layers += 1 }
            let used = (overrides["num_hidden_layers"] as? Int) ?? layers
            guard used >= 0, used <= layers else {
                throw ToolError("text_encoder: \(file) has \(layers) text transformer layers, fewer than the \(used) \(sidecar) asks for — correct it in \(sidecar)")
            }
            config = [
                "vocab_size": token[0], "hidden_size": token[1],
                "max_position_embeddings": try shape(p + "embeddings.position_embedding.weight", rank: 2, "text_encoder")[0],
                "num_hidden_layers": layers, "num_attention_heads": token[1] / 64,
                "intermediate_size": layers > 0 ? try shape(p + "encoder.layers.0.mlp.fc1.weight", rank: 2, "text_encoder")[0] : 4 * token[1],
                "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
            ]
            names = .clip(layers: used)
        case .sd2:
            let p = LDMNames.openCLIPPrefix
            guard shapes.keys.contains(where: { $0.hasPrefix(p) }) else {
                throw ToolError("\(file) holds no text encoder (cond_stage_model.* weights) — use a checkpoint with its text encoder, or a diffusers folder")
            }
            let token = try shape(p + "token_embedding.weight", rank: 2, "text_encoder")
            var blocks = 0
            while has(p + "transformer.resblocks.\(blocks).ln_1.weight") { blocks += 1 }
            let layers = (overrides["num_hidden_layers"] as? Int) ?? blocks - 1
            guard blocks >= 1, layers >= 0, layers <= blocks else {
                throw ToolError("text_encoder: \(file) has \(blocks) text transformer blocks, \(layers > blocks ? "fewer than the \(layers) \(sidecar) asks for" : "too few for SD 2.x, which reads the penultimate one") — check the file and \(sidecar)")
            }
            config = [
                "vocab_size": token[0], "hidden_size": token[1],
                "max_position_embeddings": try shape(p + "positional_embedding", rank: 2, "text_encoder")[0],
                "num_hidden_layers": layers, "num_attention_heads": token[1] / 64,
                "intermediate_size": try shape(p + "transformer.resblocks.0.mlp.c_fc.weight", rank: 2, "text_encoder")[0],
                "hidden_act": "gelu", "layer_norm_eps": 1e-5,
            ]
            names = .openCLIP(layers: layers)
        }
        let c = merged(config, overrides)
        if let heads = c["num_attention_heads"] as? Int, let width = c["hidden_size"] as? Int {
            try checkSplit([heads], [width], key: "num_attention_heads", component: "text_encoder",
                           given: overrides["num_attention_heads"] != nil)
        }
        return (c, names)
    }
}
