/// How a single-file checkpoint in the original CompVis/LDM layout names the weights our models ask
/// for by their diffusers names: the inverse of diffusers' LDM → diffusers conversion
/// (diffusers/loaders/single_file_utils.py: convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
/// convert_ldm_clip_checkpoint, convert_open_clip_checkpoint). Names are rewritten on demand, so a
/// weight the file lacks is reported under the key the file should have had.
enum LDMNames: Sendable {
    /// `model.diffusion_model.*`: input_blocks (conv_in, then per level its resnets with their
    /// attention at `.1` and a downsampler `.0.op`), middle_block (resnet, attention, resnet),
    /// output_blocks (per level layers_per_block + 1 resnets, the upsampler after the last one at
    /// `.1.conv`, or `.2.conv` behind an attention), time_embed, out.
    case unet(layersPerBlock: Int, upBlockHasAttention: [Bool])
    /// `first_stage_model.*`: encoder.down.i / decoder.up.i (numbered from the deepest level),
    /// `block_j`-style resnets with `nin_shortcut`, mid.attn_1 with q/k/v/proj_out.
    case vae(blocks: Int)
    /// `cond_stage_model.transformer.*`: transformers' CLIPTextModel names (SD 1.x). Layers from
    /// `layers` on are not part of the text encoder (only when a sidecar asks for fewer).
    case clip(layers: Int)
    /// `cond_stage_model.model.*`: OpenCLIP's text tower (SD 2.x), q/k/v fused in
    /// `attn.in_proj_weight`/`in_proj_bias`. Blocks from `layers` on are not part of the text
    /// encoder (SD 2.x stops one block before the last, as diffusers' conversion does).
    case openCLIP(layers: Int)

    static let unetPrefix = "model.diffusion_model."
    static let vaePrefix = "first_stage_model."
    static let clipPrefix = "cond_stage_model.transformer."
    static let openCLIPPrefix = "cond_stage_model.model."

    /// A file key, and for a fused tensor which of its `parts` equal row blocks is meant.
    struct Key: Equatable, Sendable {
        var name: String
        var part: Int? = nil
        var parts = 1
    }

    /// The file key holding diffusers weight `name`, nil when the layout has no such weight.
    func key(_ name: String) -> Key? {
        switch self {
        case let .unet(lpb, upAttention): return LDMNames.unetKey(name, layersPerBlock: lpb, upBlockHasAttention: upAttention)
        case let .vae(blocks): return LDMNames.vaeKey(name, blocks: blocks)
        case let .clip(layers):
            guard LDMNames.encoderLayer(name).map({ $0 < layers }) ?? true else { return nil }
            return Key(name: LDMNames.clipPrefix + name)
        case let .openCLIP(layers): return LDMNames.openCLIPKey(name, layers: layers)
        }
    }

    private static let unetResnet = ["norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                                     "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"]

    private static func unetKey(_ name: String, layersPerBlock lpb: Int, upBlockHasAttention: [Bool]) -> Key? {
        let p = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        func key(_ s: String) -> Key { Key(name: unetPrefix + s) }
        func resnet(_ rest: ArraySlice<String>) -> String? {
            guard let first = rest.first, let l = unetResnet[first] else { return nil }
            return ([l] + rest.dropFirst()).joined(separator: ".")
        }
        switch (p[0], p.count) {
        case ("time_embedding", 3):
            guard let i = ["linear_1": 0, "linear_2": 2][p[1]] else { return nil }
            return key("time_embed.\(i).\(p[2])")
        case ("conv_in", 2): return key("input_blocks.0.0.\(p[1])")
        case ("conv_norm_out", 2): return key("out.0.\(p[1])")
        case ("conv_out", 2): return key("out.2.\(p[1])")
        case ("mid_block", 4...):
            guard let j = Int(p[2]), j >= 0, j <= 1 else { return nil }
            if p[1] == "resnets" { return resnet(p[3...]).map { key("middle_block.\(2 * j).\($0)") } }
            return p[1] == "attentions" && j == 0 ? key("middle_block.1." + p[3...].joined(separator: ".")) : nil
        case ("down_blocks", 5...), ("up_blocks", 5...):
            guard let b = Int(p[1]), let j = Int(p[3]), b >= 0, j >= 0, j <= lpb else { return nil }
            let rest = p[4...]
            if p[0] == "down_blocks" {
                let first = 1 + b * (lpb + 1)
                switch p[2] {
                case "resnets" where j < lpb: return resnet(rest).map { key("input_blocks.\(first + j).0.\($0)") }
                case "attentions" where j < lpb: return key("input_blocks.\(first + j).1." + rest.joined(separator: "."))
                case "downsamplers" where j == 0 && rest.first == "conv" && rest.count == 2:
                    return key("input_blocks.\(first + lpb).0.op.\(rest.last!)")
                default: return nil
                }
            }
            let first = b * (lpb + 1)
            switch p[2] {
            case "resnets": return resnet(rest).map { key("output_blocks.\(first + j).0.\($0)") }
            case "attentions": return key("output_blocks.\(first + j).1." + rest.joined(separator: "."))
            case "upsamplers" where j == 0 && rest.first == "conv" && rest.count == 2 && b < upBlockHasAttention.count:
                return key("output_blocks.\(first + lpb).\(upBlockHasAttention[b] ? 2 : 1).conv.\(rest.last!)")
            default: return nil
            }
        default: return nil
        }
    }

    private static let vaeAttention = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                                       ("to_out.0.", "proj_out.")]

    private static func vaeKey(_ name: String, blocks n: Int) -> Key? {
        let p = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        func key(_ s: String) -> Key { Key(name: vaePrefix + s) }
        let side = p[0]
        if side == "quant_conv" || side == "post_quant_conv" { return key(name) }
        guard side == "encoder" || side == "decoder", p.count >= 3 else { return nil }
        func resnet(_ rest: ArraySlice<String>) -> String {
            ([rest.first == "conv_shortcut" ? "nin_shortcut" : rest.first!] + rest.dropFirst()).joined(separator: ".")
        }
        switch p[1] {
        case "conv_in", "conv_out": return key(name)
        case "conv_norm_out": return key("\(side).norm_out." + p[2...].joined(separator: "."))
        case "down_blocks" where side == "encoder", "up_blocks" where side == "decoder":
            guard p.count >= 6, let i = Int(p[2]), i >= 0, i < n else { return nil }
            let (word, level) = side == "encoder" ? ("down", i) : ("up", n - 1 - i)
            if p[3] == "resnets" { return key("\(side).\(word).\(level).block.\(p[4]).\(resnet(p[5...]))") }
            guard p[3] == "downsamplers" || p[3] == "upsamplers", p[4] == "0", p.count == 7, p[5] == "conv" else { return nil }
            return key("\(side).\(word).\(level).\(word)sample.conv.\(p[6])")
        case "mid_block" where p.count >= 5:
            if p[2] == "resnets", let k = Int(p[3]), k >= 0, k <= 1 { return key("\(side).mid.block_\(k + 1).\(resnet(p[4...]))") }
            guard p[2] == "attentions", p[3] == "0" else { return nil }
            let rest = p[4...].joined(separator: ".")
            guard let (d, l) = vaeAttention.first(where: { rest.hasPrefix($0.0) }) else { return nil }
            return key("\(side).mid.attn_1.\(l)\(rest.dropFirst(d.count))")
        default: return nil
        }
    }

    /// The block index of a text encoder weight name (`[text_model.]encoder.layers.i.…`).
    private static func encoderLayer(_ name: String) -> Int? {
        let n = name.hasPrefix("text_model.") ? name.dropFirst("text_model.".count) : Substring(name)
        guard n.hasPrefix("encoder.layers.") else { return nil }
        return Int(n.dropFirst("encoder.layers.".count).prefix { $0 != "." })
    }

    private static let openCLIPLayer = [("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."), ("mlp.fc1.", "mlp.c_fc."),
                                        ("mlp.fc2.", "mlp.c_proj."), ("self_attn.out_proj.", "attn.out_proj.")]

    private static func openCLIPKey(_ name: String, layers: Int) -> Key? {
        let n = name.hasPrefix("text_model.") ? String(name.dropFirst("text_model.".count)) : name
        func key(_ s: String, part: Int? = nil) -> Key { Key(name: openCLIPPrefix + s, part: part, parts: part == nil ? 1 : 3) }
        switch n {
        case "embeddings.token_embedding.weight": return key("token_embedding.weight")
        case "embeddings.position_embedding.weight": return key("positional_embedding")
        case "final_layer_norm.weight", "final_layer_norm.bias": return key("ln_final." + n.split(separator: ".").last!)
        default: break
        }
        let p = n.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard p.count >= 5, p[0] == "encoder", p[1] == "layers", let i = encoderLayer(n), i >= 0, i < layers else { return nil }
        let block = "transformer.resblocks.\(i)."
        let rest = p[3...].joined(separator: ".")
        for (k, proj) in ["self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj."].enumerated() where rest.hasPrefix(proj) {
            return key(block + "attn.in_proj_" + rest.dropFirst(proj.count), part: k)
        }
        guard let (d, l) = openCLIPLayer.first(where: { rest.hasPrefix($0.0) }) else { return nil }
        return key(block + l + rest.dropFirst(d.count))
    }
}
