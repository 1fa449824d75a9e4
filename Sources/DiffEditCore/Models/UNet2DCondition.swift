import Foundation

/// The subset of diffusers' UNet2DConditionModel configuration that Stable Diffusion 1.x/2.x
/// UNets use, read from unet/config.json. Anything outside it is refused by key name.
public struct UNetConfig: Sendable {
    public var inChannels = 4
    public var outChannels = 4
    public var blockOutChannels: [Int]
    public var downBlockTypes: [String]
    public var upBlockTypes: [String]
    public var layersPerBlock: [Int]
    /// Attention heads per down block. diffusers' naming trap: in UNet2DConditionModel
    /// `attention_head_dim` is the number of heads (num_attention_heads must be null); each
    /// Transformer2DModel gets head size channels // heads.
    public var heads: [Int]
    public var crossAttentionDim: [Int]
    public var normNumGroups: Int
    public var normEps: Float
    public var useLinearProjection: Bool
    public var flipSinToCos: Bool
    public var freqShift: Float
    public var timeEmbeddingDim: Int
    public var convInKernel: Int
    public var convOutKernel: Int
    public var downsamplePadding: Int
    public var midBlockScaleFactor: Float
    public var centerInputSample: Bool

    public init(_ c: JSONConfig) throws {
        func refuse(_ key: String, _ why: String) -> ToolError {
            ToolError("\(c.label): \(key) \(why) — diffedit supports Stable Diffusion 1.x/2.x text-to-image UNets")
        }
        func requireNull(_ key: String) throws {
            if c.has(key) { throw refuse(key, "= \(c.values[key]!) is not supported") }
        }
        func requireValue(_ key: String, _ allowed: [String], default def: String) throws {
            let v = try c.string(key, default: def)
            if !allowed.contains(v) { throw refuse(key, "'\(v)' is not supported (only \(allowed.joined(separator: ", ")))") }
        }
        inChannels = try c.int("in_channels", default: 4)
        if inChannels == 9 { throw ToolError("\(c.label): in_channels = 9: inpainting UNets are not supported — use a text-to-image Stable Diffusion model") }
        if inChannels != 4 { throw refuse("in_channels", "= \(inChannels) is not supported (only 4 latent channels)") }
        outChannels = try c.int("out_channels", default: 4)
        if outChannels != 4 { throw refuse("out_channels", "= \(outChannels) is not supported (only 4)") }
        downBlockTypes = try c.strings("down_block_types", default: ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"])
        upBlockTypes = try c.strings("up_block_types", default: ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])
        for t in downBlockTypes where !["CrossAttnDownBlock2D", "DownBlock2D"].contains(t) {
            throw refuse("down_block_types", "contains '\(t)', which is not supported (only CrossAttnDownBlock2D, DownBlock2D)")
        }
        for t in upBlockTypes where !["CrossAttnUpBlock2D", "UpBlock2D"].contains(t) {
            throw refuse("up_block_types", "contains '\(t)', which is not supported (only CrossAttnUpBlock2D, UpBlock2D)")
        }
        blockOutChannels = try c.ints("block_out_channels", default: [320, 640, 1280, 1280])
        let n = blockOutChannels.count
        guard n >= 1, downBlockTypes.count == n, upBlockTypes.count == n else {
            throw ToolError("\(c.label): block_out_channels, down_block_types and up_block_types must have the same length")
        }
        layersPerBlock = try c.intOrList("layers_per_block", count: n, default: 2)
        try requireNull("num_attention_heads")  // diffusers itself raises for it
        heads = try c.intOrList("attention_head_dim", count: n, default: 8)
        crossAttentionDim = try c.intOrList("cross_attention_dim", count: n, default: 1280)
        if c.values["norm_num_groups"] is NSNull { throw refuse("norm_num_groups", "= null is not supported") }
        normNumGroups = try c.int("norm_num_groups", default: 32)
        normEps = Float(try c.double("norm_eps", default: 1e-5))
        useLinearProjection = try c.bool("use_linear_projection", default: false)
        flipSinToCos = try c.bool("flip_sin_to_cos", default: true)
        freqShift = Float(try c.double("freq_shift", default: 0))
        timeEmbeddingDim = c.has("time_embedding_dim") ? try c.int("time_embedding_dim") : blockOutChannels[0] * 4
        convInKernel = try c.int("conv_in_kernel", default: 3)
        convOutKernel = try c.int("conv_out_kernel", default: 3)
        downsamplePadding = try c.int("downsample_padding", default: 1)
        midBlockScaleFactor = Float(try c.double("mid_block_scale_factor", default: 1))
        centerInputSample = try c.bool("center_input_sample", default: false)

        // Everything SDXL, Kandinsky, LCM, unCLIP, … would need.
        for key in ["addition_embed_type", "class_embed_type", "num_class_embeds", "encoder_hid_dim",
                    "encoder_hid_dim_type", "time_cond_proj_dim", "time_embedding_act_fn", "timestep_post_act",
                    "cross_attention_norm", "reverse_transformer_layers_per_block",
                    "projection_class_embeddings_input_dim"] {
            try requireNull(key)
        }
        if c.has("transformer_layers_per_block") {
            if c.values["transformer_layers_per_block"] is [Any] {
                throw refuse("transformer_layers_per_block", "as a list (SDXL-style) is not supported (only 1)")
            }
            let t = try c.int("transformer_layers_per_block")
            if t != 1 { throw refuse("transformer_layers_per_block", "= \(t) is not supported (only 1)") }
        }
        if c.has("only_cross_attention") {
            let v = c.values["only_cross_attention"]
            let any = (v as? Bool) ?? ((v as? [Any])?.contains { ($0 as? Bool) == true } ?? true)
            if any { throw refuse("only_cross_attention", "= true is not supported") }
        }
        if try c.bool("mid_block_only_cross_attention", default: false) {
            throw refuse("mid_block_only_cross_attention", "= true is not supported")
        }
        if try c.bool("dual_cross_attention", default: false) { throw refuse("dual_cross_attention", "= true is not supported") }
        if try c.bool("class_embeddings_concat", default: false) { throw refuse("class_embeddings_concat", "= true is not supported") }
        try requireValue("mid_block_type", ["UNetMidBlock2DCrossAttn"], default: "UNetMidBlock2DCrossAttn")
        try requireValue("act_fn", ["silu", "swish"], default: "silu")
        try requireValue("resnet_time_scale_shift", ["default"], default: "default")
        try requireValue("time_embedding_type", ["positional"], default: "positional")
        try requireValue("attention_type", ["default"], default: "default")

        for (i, ch) in blockOutChannels.enumerated() {
            guard ch > 0, normNumGroups > 0, ch % normNumGroups == 0 else {
                throw ToolError("\(c.label): block_out_channels[\(i)] = \(ch) does not split into norm_num_groups = \(normNumGroups) groups")
            }
            guard heads[i] > 0, ch / heads[i] > 0 else {
                throw ToolError("\(c.label): attention_head_dim[\(i)] = \(heads[i]) heads do not fit \(ch) channels")
            }
            guard layersPerBlock[i] >= 1 else { throw ToolError("\(c.label): layers_per_block must be at least 1") }
        }
        guard convInKernel % 2 == 1, convOutKernel % 2 == 1 else {
            throw ToolError("\(c.label): conv_in_kernel and conv_out_kernel must be odd")
        }
        guard downsamplePadding == 0 || downsamplePadding == 1 else {
            throw refuse("downsample_padding", "= \(downsamplePadding) is not supported (only 0 or 1)")
        }
    }
}

/// diffusers' UNet2DConditionModel for Stable Diffusion 1.x / 2.x: timestep embedding, conv_in,
/// down blocks (CrossAttnDownBlock2D, DownBlock2D) whose outputs feed skip connections, the
/// UNetMidBlock2DCrossAttn, up blocks (CrossAttnUpBlock2D, UpBlock2D), GroupNorm + SiLU, conv_out.
public final class UNet2DCondition {
    public let config: UNetConfig
    /// Threads, workspace, profiler and FLOP counter of this UNet's forward passes.
    public let context: ComputeContext

    /// One down or up block: resnets, each followed by a transformer in the CrossAttn variants,
    /// and a resampler between resolutions.
    struct Block {
        var resnets: [ResnetBlock2D]
        var attentions: [Transformer2D]
        var downsample: Downsample2D?
        var upsample: Upsample2D?
    }

    let timeLinear1: LinearLayer
    let timeLinear2: LinearLayer
    let convIn: Conv2DLayer
    let downBlocks: [Block]
    let midResnets: [ResnetBlock2D]
    let midAttention: Transformer2D
    let upBlocks: [Block]
    let normOut: GroupNormLayer
    let convOut: Conv2DLayer

    /// An observer receives intermediate results, named as in the fixtures (diffusers module in
    /// brackets): "time_proj" (the sinusoid), "time_emb" (time_embedding), "conv_in",
    /// "down.i" (down_blocks[i] hidden states), "down.i.res.j" (its j-th skip tensor), "mid"
    /// (mid_block), "up.i" (up_blocks[i]), "conv_norm_out" (the GroupNorm before SiLU), "out".
    public typealias Observer = (_ name: String, _ value: Tensor) -> Void

    /// The UNet of a model folder: unet/config.json and its safetensors weights.
    public convenience init(folder: ModelFolder, context: ComputeContext = ComputeContext()) throws {
        let weights = try folder.weights("unet")
        try self.init(config: try folder.config("unet"), source: weights, context: context, lora: folder.lora)
        weights.file.releasePages()
    }

    public convenience init(config json: JSONConfig, weights: WeightStore, context: ComputeContext = ComputeContext()) throws {
        try self.init(config: json, source: weights, context: context)
    }

    /// A UNet of the given configuration with deterministic random weights (benchmarks).
    public convenience init(config json: JSONConfig, randomWeightsSeed seed: UInt64,
                            context: ComputeContext = ComputeContext()) throws {
        try self.init(config: json, source: RandomWeights(seed: seed), context: context)
    }

    init(config json: JSONConfig, source: any WeightSource, context: ComputeContext, lora: LoRASet? = nil) throws {
        let cfg = try UNetConfig(json)
        config = cfg
        self.context = context
        let l = ParameterLoader(source: source, readsInPlace: context.policy.readsWeightsInPlace, lora: lora, part: .unet)
        let boc = cfg.blockOutChannels
        let n = boc.count
        let c0 = boc[0]
        let temb = cfg.timeEmbeddingDim
        let groups = cfg.normNumGroups, eps = cfg.normEps
        timeLinear1 = try LinearLayer(l, "time_embedding.linear_1", in: c0, out: temb)
        timeLinear2 = try LinearLayer(l, "time_embedding.linear_2", in: temb, out: temb)
        convIn = try Conv2DLayer(l, "conv_in", in: cfg.inChannels, out: c0, kernel: cfg.convInKernel,
                                 padding: .same((cfg.convInKernel - 1) / 2))

        func resnet(_ p: String, in i: Int, out o: Int, scale: Float = 1) throws -> ResnetBlock2D {
            try ResnetBlock2D(l, p, in: i, out: o, temb: temb, groups: groups, eps: eps, outputScaleFactor: scale)
        }
        func transformer(_ p: String, channels ch: Int, heads: Int, cross: Int) throws -> Transformer2D {
            try Transformer2D(l, p, channels: ch, heads: heads, headDim: ch / heads, crossDim: cross, groups: groups,
                              linearProjection: cfg.useLinearProjection, layers: 1)
        }

        var downs: [Block] = []
        var output = c0
        for i in 0..<n {
            let input = output
            output = boc[i]
            let p = "down_blocks.\(i)"
            let hasAttention = cfg.downBlockTypes[i] == "CrossAttnDownBlock2D"
            var block = Block(resnets: [], attentions: [])
            for j in 0..<cfg.layersPerBlock[i] {
                block.resnets.append(try resnet("\(p).resnets.\(j)", in: j == 0 ? input : output, out: output))
                if hasAttention {
                    block.attentions.append(try transformer("\(p).attentions.\(j)", channels: output, heads: cfg.heads[i],
                                                            cross: cfg.crossAttentionDim[i]))
                }
            }
            if i < n - 1 {
                block.downsample = try Downsample2D(l, "\(p).downsamplers.0", channels: output, padding: cfg.downsamplePadding)
            }
            downs.append(block)
        }
        downBlocks = downs

        let cm = boc[n - 1]
        midResnets = try (0..<2).map {
            try resnet("mid_block.resnets.\($0)", in: cm, out: cm, scale: cfg.midBlockScaleFactor)
        }
        midAttention = try transformer("mid_block.attentions.0", channels: cm, heads: cfg.heads[n - 1],
                                       cross: cfg.crossAttentionDim[n - 1])

        let rev = Array(boc.reversed())
        let revHeads = Array(cfg.heads.reversed()), revLayers = Array(cfg.layersPerBlock.reversed())
        let revCross = Array(cfg.crossAttentionDim.reversed())
        var ups: [Block] = []
        output = rev[0]
        for i in 0..<n {
            let prevOutput = output
            output = rev[i]
            let input = rev[min(i + 1, n - 1)]
            let p = "up_blocks.\(i)"
            let layers = revLayers[i] + 1
            let hasAttention = cfg.upBlockTypes[i] == "CrossAttnUpBlock2D"
            var block = Block(resnets: [], attentions: [])
            for j in 0..<layers {
                let skip = j == layers - 1 ? input : output
                let resIn = j == 0 ? prevOutput : output
                block.resnets.append(try resnet("\(p).resnets.\(j)", in: resIn + skip, out: output))
                if hasAttention {
                    block.attentions.append(try transformer("\(p).attentions.\(j)", channels: output, heads: revHeads[i],
                                                            cross: revCross[i]))
                }
            }
            if i < n - 1 { block.upsample = try Upsample2D(l, "\(p).upsamplers.0", channels: output) }
            ups.append(block)
        }
        upBlocks = ups
        normOut = try GroupNormLayer(l, "conv_norm_out", channels: c0, groups: groups, eps: eps)
        convOut = try Conv2DLayer(l, "conv_out", in: c0, out: cfg.outChannels, kernel: cfg.convOutKernel,
                                  padding: .same((cfg.convOutKernel - 1) / 2))
        try l.checkLoRAUsed(model: "this UNet")
    }

    /// Number of 2× upsamplers (diffusers' num_upsamplers).
    public var upsamplerCount: Int { config.blockOutChannels.count - 1 }

    /// The query grids (height, width) of the up- and down-block cross-attention layers for a
    /// latent of this size — the grids a `CrossAttentionStore` can be given — each once, in the
    /// order the forward pass meets them (down blocks first). Up block i runs at the size of down
    /// block n−1−i (its skip connections; forward_upsample_size resizes to them).
    public func crossAttentionGrids(latentHeight: Int, latentWidth: Int) -> [(height: Int, width: Int)] {
        var levels: [(height: Int, width: Int)] = [(latentHeight, latentWidth)]
        for block in downBlocks.dropLast() {
            let last = levels[levels.count - 1]
            let conv = block.downsample!.conv
            let (h, w) = Conv2D.outputSize(h: last.height, w: last.width, kernel: (conv.kernel, conv.kernel),
                                           stride: conv.stride, padding: conv.padding)
            levels.append((h, w))
        }
        let n = downBlocks.count
        var grids: [(height: Int, width: Int)] = []
        func note(_ g: (height: Int, width: Int)) {
            if !grids.contains(where: { $0 == g }) { grids.append(g) }
        }
        for i in 0..<n where !downBlocks[i].attentions.isEmpty { note(levels[i]) }
        for i in 0..<n where !upBlocks[i].attentions.isEmpty { note(levels[n - 1 - i]) }
        return grids
    }

    /// diffusers' get_timestep_embedding(t, C, flip_sin_to_cos, freq_shift) for one timestep:
    /// freq_i = exp(−ln(10000)·i / (C/2 − shift)) in float32, then sin/cos of t·freq_i.
    func sinusoidalEmbedding(_ t: Float, into emb: UnsafeMutablePointer<Float>) {
        let dim = config.blockOutChannels[0]
        let half = dim / 2
        let logMax = Float(-log(10000.0))
        for i in 0..<half {
            let exponent = logMax * Float(i) / (Float(half) - config.freqShift)
            let freq = Float(Foundation.exp(Double(exponent)))
            let arg = t * freq
            let s = Float(Foundation.sin(Double(arg))), c = Float(Foundation.cos(Double(arg)))
            if config.flipSinToCos { emb[i] = c; emb[half + i] = s } else { emb[i] = s; emb[half + i] = c }
        }
        if dim % 2 == 1 { emb[dim - 1] = 0 }
    }

    /// One forward pass. sample [B, 4, h, w], one timestep for the whole batch,
    /// encoder_hidden_states [B, L, cross_attention_dim]; returns [B, 4, h, w].
    public func callAsFunction(sample: Tensor, timestep: Float, encoderHiddenStates: Tensor,
                               attention: CrossAttentionStore? = nil) throws -> Tensor {
        try forward(sample: sample, timesteps: [timestep], encoderHiddenStates: encoderHiddenStates, attention: attention)
    }

    /// One forward pass with one timestep per batch element (or one for all). `observer` sees the
    /// intermediate block outputs. `attention`: LEDITS++'s attention store, handed the cross-attention
    /// probabilities of the up- and down-block layers on its grid (diffusers' prepare_unet: not the
    /// mid block); it is added to, not reset.
    /// `cache`: DeepCache (UNetFeatureCache): the whole UNet on its full steps, the shallow branch between.
    public func forward(sample: Tensor, timesteps: [Float], encoderHiddenStates: Tensor,
                        attention: CrossAttentionStore? = nil, observer: Observer? = nil,
                        cache: UNetFeatureCache? = nil) throws -> Tensor {
        guard sample.rank == 4, sample.shape[1] == config.inChannels, sample.shape[0] >= 1,
              sample.shape[2] >= 1, sample.shape[3] >= 1 else {
            throw ToolError("UNet input has shape \(sample.shape), expected [batch, \(config.inChannels), height, width]")
        }
        let b = sample.shape[0]
        let cross = config.crossAttentionDim
        guard encoderHiddenStates.rank == 3, encoderHiddenStates.shape[0] == b, encoderHiddenStates.shape[1] >= 1,
              cross.allSatisfy({ $0 == encoderHiddenStates.shape[2] }) else {
            throw ToolError("encoder hidden states have shape \(encoderHiddenStates.shape), expected [\(b), tokens, \(cross[0])] — the text embeddings must come from this model's text encoder, one per latent")
        }
        guard timesteps.count == 1 || timesteps.count == b else {
            throw ToolError("\(timesteps.count) timesteps for a batch of \(b)")
        }
        // Skip connections are resized by diffusers' forward_upsample_size when the latent is not
        // a multiple of 2^num_upsamplers; the smallest size must stay ≥ 1.
        var minSide = min(sample.shape[2], sample.shape[3])
        for _ in 0..<upsamplerCount { minSide = (minSide + 1) / 2 }
        guard minSide >= 1 else { throw ToolError("latent \(sample.shape[2])x\(sample.shape[3]) is too small") }
        let forwardUpsampleSize = sample.shape[2...3].contains { $0 % (1 << upsamplerCount) != 0 }
        let ctx = context
        func observe(_ name: String, _ a: @autoclosure () -> Activation) { if let observer { observer(name, a().tensor) } }

        // Time embedding: sinusoid → linear_1 → SiLU → linear_2; resnets take SiLU(temb).
        let c0 = config.blockOutChannels[0]
        let sinus = ctx.activation([b, c0])
        for i in 0..<b { sinusoidalEmbedding(timesteps.count == 1 ? timesteps[0] : timesteps[i], into: sinus.pointer + i * c0) }
        observe("time_proj", sinus)
        let h1 = timeLinear1(sinus, ctx)
        Pointwise.silu(ctx, h1.pointer, count: h1.count)
        let emb = timeLinear2(h1, ctx)
        observe("time_emb", emb)
        let sTemb = ctx.activation(emb.shape)
        sTemb.pointer.update(from: emb.pointer, count: emb.count)
        Pointwise.silu(ctx, sTemb.pointer, count: sTemb.count)

        var x = Activation(config.centerInputSample ? Elementwise.map1(sample) { 2 * $0 - 1 } : sample, ctx)
        x = convIn(x, ctx)
        observe("conv_in", x)
        let enc = Activation(encoderHiddenStates, ctx)

        // DeepCache: the last up block's resnet r takes the first down block's first output back in
        // (r = that block's resnets − 1: its skips are, last to first, the down block's outputs
        // and conv_in's); the shallow branch computes just those and resumes there.
        let resume = downBlocks[0].resnets.count - 1
        let last = upBlocks[upBlocks.count - 1]
        if let cache, cache.takesShallowBranch(sample.shape), let kept = cache.feature {
            var skips: [Activation] = [x]
            var y = downBlocks[0].resnets[0](x, sTemb: sTemb, ctx)
            if !downBlocks[0].attentions.isEmpty { y = downBlocks[0].attentions[0](y, encoder: enc, ctx) }
            skips.append(y)
            x = Activation(kept, ctx)
            for j in resume..<last.resnets.count {
                x = last.resnets[j](concatChannels(x, skips.removeLast(), ctx), sTemb: sTemb, ctx)
                if !last.attentions.isEmpty { x = last.attentions[j](x, encoder: enc, ctx) }
            }
            cache.count(shallow: true)
            return convOut(normOut(x, silu: true, ctx), ctx).tensor
        }

        var skips: [Activation] = [x]
        for (i, block) in downBlocks.enumerated() {
            var res = 0
            for j in 0..<block.resnets.count {
                x = block.resnets[j](x, sTemb: sTemb, ctx)
                if !block.attentions.isEmpty { x = block.attentions[j](x, encoder: enc, store: attention, ctx) }
                skips.append(x)
                observe("down.\(i).res.\(res)", x)
                res += 1
            }
            if let downsample = block.downsample {
                x = downsample(x, ctx)
                skips.append(x)
                observe("down.\(i).res.\(res)", x)
            }
            observe("down.\(i)", x)
        }

        x = midResnets[0](x, sTemb: sTemb, ctx)
        x = midAttention(x, encoder: enc, ctx)
        x = midResnets[1](x, sTemb: sTemb, ctx)
        observe("mid", x)

        for (i, block) in upBlocks.enumerated() {
            for j in 0..<block.resnets.count {
                if let cache, i == upBlocks.count - 1, j == resume { cache.keep(x.tensor, for: sample.shape) }
                let skip = skips.removeLast()
                x = block.resnets[j](concatChannels(x, skip, ctx), sTemb: sTemb, ctx)
                if !block.attentions.isEmpty { x = block.attentions[j](x, encoder: enc, store: attention, ctx) }
            }
            if let upsample = block.upsample {
                // diffusers: upsample_size = the spatial size of the next skip connection.
                let size = forwardUpsampleSize ? (skips.last!.shape[2], skips.last!.shape[3]) : nil
                x = upsample(x, size: size, ctx)
            }
            observe("up.\(i)", x)
        }

        cache?.count(shallow: false)
        if observer != nil { observe("conv_norm_out", normOut(x, ctx)) }
        x = convOut(normOut(x, silu: true, ctx), ctx)
        observe("out", x)
        return x.tensor
    }
}

public extension UNetConfig {
    /// unet/config.json of Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5), for benchmarks.
    static let stableDiffusion15JSON: [String: Any] = [
        "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
        "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
        "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
        "out_channels": 4, "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    ]
}
