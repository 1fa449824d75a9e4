#if canImport(Glibc)
import Glibc
#endif

/// The parts of diffusers' AutoencoderKL config (vae/config.json) that shape the network.
public struct AutoencoderKLConfig: Equatable {
    public var inChannels: Int
    public var outChannels: Int
    public var latentChannels: Int
    public var blockOutChannels: [Int]
    public var layersPerBlock: Int
    public var normNumGroups: Int
    public var scalingFactor: Float
    public var useQuantConv: Bool
    public var usePostQuantConv: Bool
    public var midBlockAddAttention: Bool

    /// ResNet and attention GroupNorm epsilon: diffusers' Encoder/Decoder hard-code 1e-6.
    public static let normEps: Float = 1e-6

    /// Pixels per latent along each axis: one stride-2 downsample per block but the last.
    public var downsamplingFactor: Int { 1 << (blockOutChannels.count - 1) }

    public init(inChannels: Int = 3, outChannels: Int = 3, latentChannels: Int = 4,
                blockOutChannels: [Int], layersPerBlock: Int, normNumGroups: Int,
                scalingFactor: Float = 0.18215, useQuantConv: Bool = true, usePostQuantConv: Bool = true,
                midBlockAddAttention: Bool = true) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.latentChannels = latentChannels
        self.blockOutChannels = blockOutChannels
        self.layersPerBlock = layersPerBlock
        self.normNumGroups = normNumGroups
        self.scalingFactor = scalingFactor
        self.useQuantConv = useQuantConv
        self.usePostQuantConv = usePostQuantConv
        self.midBlockAddAttention = midBlockAddAttention
    }

    /// Reads vae/config.json. The keys that fix the architecture are required; the rest take
    /// diffusers' AutoencoderKL defaults. Variants this implementation does not compute (other
    /// block types or activations, latent shift/normalisation of SD3/Flux/SDXL-style VAEs) are
    /// refused rather than silently mis-decoded.
    public init(_ json: JSONConfig) throws {
        let label = json.label
        if json.has("_class_name") {
            let cls = try json.string("_class_name")
            guard cls == "AutoencoderKL" else {
                throw ToolError("\(label): _class_name is '\(cls)', only AutoencoderKL is supported — use a Stable Diffusion 1.x/2.x VAE")
            }
        }
        for key in ["block_out_channels", "layers_per_block", "down_block_types", "up_block_types"] {
            guard json.has(key) else {
                throw ToolError("\(label): missing key '\(key)' — the VAE config is incomplete; use the vae/config.json saved with the weights")
            }
        }
        blockOutChannels = try json.ints("block_out_channels")
        layersPerBlock = try json.int("layers_per_block")
        latentChannels = try json.int("latent_channels", default: 4)
        normNumGroups = try json.int("norm_num_groups", default: 32)
        inChannels = try json.int("in_channels", default: 3)
        outChannels = try json.int("out_channels", default: 3)
        scalingFactor = Float(try json.double("scaling_factor", default: 0.18215))
        useQuantConv = try json.bool("use_quant_conv", default: true)
        usePostQuantConv = try json.bool("use_post_quant_conv", default: true)
        midBlockAddAttention = try json.bool("mid_block_add_attention", default: true)
        // force_upcast only matters for half-precision runs; everything here is f32.

        guard !blockOutChannels.isEmpty, blockOutChannels.allSatisfy({ $0 > 0 }) else {
            throw ToolError("\(label): block_out_channels must list one or more positive channel counts")
        }
        guard blockOutChannels.count <= 8 else {
            throw ToolError("\(label): \(blockOutChannels.count) blocks (downsampling 2^\(blockOutChannels.count - 1)) is more than this VAE implementation supports (8)")
        }
        guard layersPerBlock >= 1 else { throw ToolError("\(label): layers_per_block must be at least 1") }
        guard latentChannels >= 1 else { throw ToolError("\(label): latent_channels must be at least 1") }
        guard inChannels == 3, outChannels == 3 else {
            throw ToolError("\(label): in_channels \(inChannels) / out_channels \(outChannels) — only RGB VAEs (3 and 3) are supported")
        }
        guard normNumGroups >= 1, blockOutChannels.allSatisfy({ $0 % normNumGroups == 0 }) else {
            throw ToolError("\(label): norm_num_groups \(normNumGroups) does not divide every entry of block_out_channels \(blockOutChannels)")
        }
        guard scalingFactor.isFinite, scalingFactor > 0 else {
            throw ToolError("\(label): scaling_factor must be a positive number")
        }
        let down = try json.strings("down_block_types")
        let up = try json.strings("up_block_types")
        guard down.count == blockOutChannels.count, up.count == blockOutChannels.count else {
            throw ToolError("\(label): down_block_types (\(down.count)) and up_block_types (\(up.count)) must have one entry per block_out_channels entry (\(blockOutChannels.count))")
        }
        if let bad = down.first(where: { $0 != "DownEncoderBlock2D" }) {
            throw ToolError("\(label): down block type '\(bad)' is not supported — only DownEncoderBlock2D (Stable Diffusion's VAE)")
        }
        if let bad = up.first(where: { $0 != "UpDecoderBlock2D" }) {
            throw ToolError("\(label): up block type '\(bad)' is not supported — only UpDecoderBlock2D (Stable Diffusion's VAE)")
        }
        let act = try json.string("act_fn", default: "silu")
        guard act == "silu" || act == "swish" else {
            throw ToolError("\(label): act_fn '\(act)' is not supported — only silu")
        }
        if json.has("norm_type"), try json.string("norm_type") != "group" {
            throw ToolError("\(label): norm_type '\(try json.string("norm_type"))' is not supported — only group")
        }
        for key in ["shift_factor", "latents_mean", "latents_std"] where json.has(key) {
            throw ToolError("\(label): '\(key)' is set — this VAE belongs to a model (SD3, Flux, …) whose latents are shifted or normalised; Stable Diffusion 1.x/2.x VAEs only scale")
        }
    }
}

/// The encoder's output distribution (diffusers' DiagonalGaussianDistribution), unscaled:
/// mean and logvar are the two channel halves of the moments, logvar clamped to [−30, 20],
/// std = exp(logvar/2).
public struct DiagonalGaussian {
    public var mean: Tensor
    public var std: Tensor

    /// Splits moments [N, 2L, h, w] into the mean and the standard deviation.
    public init(moments: Tensor) {
        precondition(moments.rank == 4 && moments.shape[1] % 2 == 0)
        let (n, c2, h, w) = (moments.shape[0], moments.shape[1], moments.shape[2], moments.shape[3])
        let c = c2 / 2, plane = c * h * w
        var m = [Float](repeating: 0, count: n * plane)
        var s = [Float](repeating: 0, count: n * plane)
        moments.data.withUnsafeBufferPointer { mp in
            for b in 0..<n {
                for i in 0..<plane {
                    m[b * plane + i] = mp[b * 2 * plane + i]
                    let logvar = min(max(mp[b * 2 * plane + plane + i], -30), 20)
                    s[b * plane + i] = expf(0.5 * logvar)
                }
            }
        }
        mean = Tensor(shape: [n, c, h, w], data: m)
        std = Tensor(shape: [n, c, h, w], data: s)
    }

    public init(mean: Tensor, std: Tensor) {
        precondition(mean.shape == std.shape)
        self.mean = mean
        self.std = std
    }

    /// mean + std·ε for a standard normal ε of the same shape (latent_dist.sample(generator)).
    public func sample(noise: [Float]) -> Tensor {
        precondition(noise.count == mean.count)
        var out = mean
        out.data.withUnsafeMutableBufferPointer { o in
            std.data.withUnsafeBufferPointer { s in
                for i in 0..<o.count { o[i] = o[i] + s[i] * noise[i] }
            }
        }
        return out
    }
}

// MARK: - Blocks

/// The mid block's single-head self-attention over all h·w positions (diffusers' Attention with
/// group_norm, heads = 1, dim_head = C, residual connection, rescale 1):
/// x + to_out(softmax(q·kᵀ/√C)·v) with q, k, v = to_q/to_k/to_v(groupnorm(x)) as [N, hw, C].
/// The NCHW↔token permutes are folded into the projections' products, and q, k, v are one.
struct SpatialSelfAttention {
    let norm: GroupNormLayer
    let attention: AttentionLayer

    init(_ l: ParameterLoader, _ p: String, channels c: Int, groups: Int) throws {
        norm = try GroupNormLayer(l, p + ".group_norm", channels: c, groups: groups, eps: AutoencoderKLConfig.normEps)
        // Older checkpoints name the projections query/key/value/proj_attn (diffusers converts
        // them when loading); some store them as 1×1 conv weights [C, C, 1, 1].
        func name(_ names: [String]) -> (String, [Int]) {
            let n = names.first { l.contains(p + "." + $0 + ".weight") } ?? names[0]
            return (p + "." + n, l.storedShape(p + "." + n + ".weight")?.count == 4 ? [c, c, 1, 1] : [c, c])
        }
        let projections = [["to_q", "query"], ["to_k", "key"], ["to_v", "value"]].map(name)
        let qkv = Parameter(shape: [3 * c, c]), qkvBias = Parameter(shape: [3 * c])
        for (i, (n, shape)) in projections.enumerated() {
            try l.source.read(n + ".weight", shape: shape, into: qkv.pointer + i * c * c)
            try l.source.read(n + ".bias", shape: [c], into: qkvBias.pointer + i * c)
        }
        let (outName, outShape) = name(["to_out.0", "proj_attn"])
        let out = LinearLayer(weight: try l.load(outName + ".weight", outShape), bias: try l.load(outName + ".bias", [c]))
        attention = AttentionLayer(heads: 1, inner: c, qkv: LinearLayer(weight: qkv, bias: qkvBias), out: out)
    }

    func callAsFunction(_ x: Activation, _ ctx: ComputeContext) -> Activation {
        let qkv = attention.qkv.fromChannels(norm(x, ctx), ctx)  // [N, hw, 3C]
        let attended = attention.attendProjected(qkv: qkv, ctx)
        return attention.out.toChannels(attended, residual: x, ctx)
    }
}

/// UNetMidBlock2D as the VAE uses it: resnet, [attention], resnet.
struct VAEMidBlock {
    let resnet0: ResnetBlock2D
    let attention: SpatialSelfAttention?
    let resnet1: ResnetBlock2D

    init(_ l: ParameterLoader, _ prefix: String, channels c: Int, groups: Int, attention: Bool) throws {
        resnet0 = try .vae(l, prefix + ".resnets.0", in: c, out: c, groups: groups)
        self.attention = attention
            ? try SpatialSelfAttention(l, prefix + ".attentions.0", channels: c, groups: groups) : nil
        resnet1 = try .vae(l, prefix + ".resnets.1", in: c, out: c, groups: groups)
    }

    func callAsFunction(_ x: Activation, _ ctx: ComputeContext) -> Activation {
        var h = resnet0(x, ctx)
        if let attention { h = attention(h, ctx) }
        return resnet1(h, ctx)
    }
}

extension ResnetBlock2D {
    /// The VAE's ResnetBlock2D: no time embedding, eps 1e-6, conv biases optional.
    static func vae(_ l: ParameterLoader, _ p: String, in i: Int, out o: Int, groups: Int) throws -> ResnetBlock2D {
        try ResnetBlock2D(l, p, in: i, out: o, temb: nil, groups: groups, eps: AutoencoderKLConfig.normEps, optionalBias: true)
    }
}

// MARK: - Encoder and decoder

/// diffusers' vae.Encoder followed by quant_conv: image [N, 3, H, W] in [−1, 1] → moments
/// [N, 2·latent, H/f, W/f].
public struct VAEEncoder {
    let config: AutoencoderKLConfig
    let context: ComputeContext
    let convIn: Conv2DLayer
    /// Per down block: its resnets and, except for the last block, a stride-2 conv.
    let blocks: [(resnets: [ResnetBlock2D], downsample: Downsample2D?)]
    let mid: VAEMidBlock
    let normOut: GroupNormLayer
    let convOut: Conv2DLayer
    let quantConv: Conv2DLayer?

    public init(config: AutoencoderKLConfig, weights store: WeightStore, context: ComputeContext = ComputeContext()) throws {
        self.config = config
        self.context = context
        let l = ParameterLoader(source: store, readsInPlace: context.policy.readsWeightsInPlace)
        let ch = config.blockOutChannels, g = config.normNumGroups
        convIn = try Conv2DLayer(l, "encoder.conv_in", in: config.inChannels, out: ch[0], kernel: 3, padding: .same(1),
                                 optionalBias: true)
        var blocks: [(resnets: [ResnetBlock2D], downsample: Downsample2D?)] = []
        var inC = ch[0]
        for (i, outC) in ch.enumerated() {
            var resnets: [ResnetBlock2D] = []
            for j in 0..<config.layersPerBlock {
                resnets.append(try .vae(l, "encoder.down_blocks.\(i).resnets.\(j)", in: j == 0 ? inC : outC, out: outC, groups: g))
            }
            // Downsample2D(padding=0): F.pad (0, 1, 0, 1) — right and bottom only — then a
            // stride-2 3×3 conv.
            let down = i == ch.count - 1 ? nil
                : try Downsample2D(l, "encoder.down_blocks.\(i).downsamplers.0", channels: outC, padding: 0, optionalBias: true)
            blocks.append((resnets, down))
            inC = outC
        }
        self.blocks = blocks
        let last = ch[ch.count - 1]
        mid = try VAEMidBlock(l, "encoder.mid_block", channels: last, groups: g, attention: config.midBlockAddAttention)
        normOut = try GroupNormLayer(l, "encoder.conv_norm_out", channels: last, groups: g, eps: AutoencoderKLConfig.normEps)
        convOut = try Conv2DLayer(l, "encoder.conv_out", in: last, out: 2 * config.latentChannels, kernel: 3,
                                  padding: .same(1), optionalBias: true)
        quantConv = config.useQuantConv
            ? try Conv2DLayer(l, "quant_conv", in: 2 * config.latentChannels, out: 2 * config.latentChannels,
                              kernel: 1, padding: .same(0), optionalBias: true)
            : nil
    }

    /// Moments [N, 2·latent, H/f, W/f] (after quant_conv). H and W must be multiples of f.
    /// `trace` sees each stage's output under the names of the reference fixtures
    /// (vae.encoder.conv_in, vae.encoder.down.i, vae.encoder.mid, vae.encoder.conv_out, vae.quant_conv).
    public func moments(_ image: Tensor, trace: ((String, Tensor) -> Void)? = nil) -> Tensor {
        precondition(image.rank == 4 && image.shape[1] == config.inChannels)
        let ctx = context
        var x = convIn(Activation(image, ctx), ctx)
        trace?("vae.encoder.conv_in", x.tensor)
        for (i, block) in blocks.enumerated() {
            for resnet in block.resnets { x = resnet(x, ctx) }
            if let down = block.downsample { x = down(x, ctx) }
            trace?("vae.encoder.down.\(i)", x.tensor)
        }
        x = mid(x, ctx)
        trace?("vae.encoder.mid", x.tensor)
        x = convOut(normOut(x, silu: true, ctx), ctx)
        trace?("vae.encoder.conv_out", x.tensor)
        if let quantConv {
            x = quantConv(x, ctx)
            trace?("vae.quant_conv", x.tensor)
        }
        return x.tensor
    }
}

/// post_quant_conv followed by diffusers' vae.Decoder: latents [N, latent, h, w] (already
/// divided by scaling_factor) → image [N, 3, h·f, w·f], roughly in [−1, 1].
public struct VAEDecoder {
    let config: AutoencoderKLConfig
    let context: ComputeContext
    let postQuantConv: Conv2DLayer?
    let convIn: Conv2DLayer
    let mid: VAEMidBlock
    /// Per up block (deepest first): layers_per_block + 1 resnets and, except for the last
    /// block, a nearest 2× upsample followed by a 3×3 conv.
    let blocks: [(resnets: [ResnetBlock2D], upsample: Upsample2D?)]
    let normOut: GroupNormLayer
    let convOut: Conv2DLayer

    public init(config: AutoencoderKLConfig, weights store: WeightStore, context: ComputeContext = ComputeContext()) throws {
        self.config = config
        self.context = context
        let l = ParameterLoader(source: store, readsInPlace: context.policy.readsWeightsInPlace)
        let ch = config.blockOutChannels, g = config.normNumGroups
        let lc = config.latentChannels
        postQuantConv = config.usePostQuantConv
            ? try Conv2DLayer(l, "post_quant_conv", in: lc, out: lc, kernel: 1, padding: .same(0), optionalBias: true) : nil
        let reversed = Array(ch.reversed())
        convIn = try Conv2DLayer(l, "decoder.conv_in", in: lc, out: reversed[0], kernel: 3, padding: .same(1), optionalBias: true)
        mid = try VAEMidBlock(l, "decoder.mid_block", channels: reversed[0], groups: g, attention: config.midBlockAddAttention)
        var blocks: [(resnets: [ResnetBlock2D], upsample: Upsample2D?)] = []
        var inC = reversed[0]
        for (i, outC) in reversed.enumerated() {
            var resnets: [ResnetBlock2D] = []
            for j in 0...config.layersPerBlock {
                resnets.append(try .vae(l, "decoder.up_blocks.\(i).resnets.\(j)", in: j == 0 ? inC : outC, out: outC, groups: g))
            }
            let up = i == reversed.count - 1 ? nil
                : try Upsample2D(l, "decoder.up_blocks.\(i).upsamplers.0", channels: outC, optionalBias: true)
            blocks.append((resnets, up))
            inC = outC
        }
        self.blocks = blocks
        normOut = try GroupNormLayer(l, "decoder.conv_norm_out", channels: ch[0], groups: g, eps: AutoencoderKLConfig.normEps)
        convOut = try Conv2DLayer(l, "decoder.conv_out", in: ch[0], out: config.outChannels, kernel: 3, padding: .same(1),
                                  optionalBias: true)
    }

    /// The decoded image, as `vae.decode(z).sample` (no clamping). `trace` sees each stage's
    /// output under the fixtures' names (vae.post_quant_conv, vae.decoder.conv_in,
    /// vae.decoder.mid, vae.decoder.up.i).
    public func decode(_ z: Tensor, trace: ((String, Tensor) -> Void)? = nil) -> Tensor {
        precondition(z.rank == 4 && z.shape[1] == config.latentChannels)
        let ctx = context
        var x = Activation(z, ctx)
        if let postQuantConv {
            x = postQuantConv(x, ctx)
            trace?("vae.post_quant_conv", x.tensor)
        }
        x = convIn(x, ctx)
        trace?("vae.decoder.conv_in", x.tensor)
        x = mid(x, ctx)
        trace?("vae.decoder.mid", x.tensor)
        for (i, block) in blocks.enumerated() {
            for resnet in block.resnets { x = resnet(x, ctx) }
            // Upsample2D: F.interpolate(scale_factor=2, mode="nearest"), then conv.
            if let up = block.upsample { x = up(x, ctx) }
            trace?("vae.decoder.up.\(i)", x.tensor)
        }
        return convOut(normOut(x, silu: true, ctx), ctx).tensor
    }
}

/// diffusers' AutoencoderKL: the encoder and decoder load separately so that a tool needing only
/// one of them reads only its weights.
public struct AutoencoderKL {
    public let config: AutoencoderKLConfig
    /// The config's sample_size: diffusers' default tile side in pixels for tiling
    /// (tile_sample_min_size); it does not shape the network.
    public let sampleSize: Int
    let store: WeightStore

    public init(config: AutoencoderKLConfig, weights: WeightStore, sampleSize: Int = 32) {
        self.config = config
        self.store = weights
        self.sampleSize = sampleSize
    }

    /// The `vae` component of a model folder.
    public init(folder: ModelFolder) throws {
        let json = try folder.config("vae")
        config = try AutoencoderKLConfig(json)
        // diffusers' AutoencoderKL default is 32; a list [h, w] counts by its first entry, as
        // AutoencoderKL.__init__ takes it for tile_latent_min_size.
        if let n = try? json.int("sample_size", default: 32) { sampleSize = n } else { sampleSize = try json.ints("sample_size").first ?? 32 }
        store = try folder.weights("vae")
    }

    public func makeEncoder(context: ComputeContext = ComputeContext()) throws -> VAEEncoder {
        try VAEEncoder(config: config, weights: store, context: context)
    }
    public func makeDecoder(context: ComputeContext = ComputeContext()) throws -> VAEDecoder {
        try VAEDecoder(config: config, weights: store, context: context)
    }

    /// Checks that an image size fits the encoder; the message names the nearest valid sizes.
    public func checkImageSize(width: Int, height: Int) throws {
        let f = config.downsamplingFactor
        guard width % f != 0 || height % f != 0 else { return }
        func around(_ v: Int) -> String {
            if v % f == 0 { return "\(v)" }
            let lo = v / f * f
            return lo == 0 ? "\(f)" : "\(lo) or \(lo + f)"
        }
        throw ToolError("image is \(width)x\(height) but this VAE needs width and height divisible by \(f) — nearest valid width \(around(width)), height \(around(height)); use --crop or --resize to fit it, or pamcut/pamscale")
    }
}
