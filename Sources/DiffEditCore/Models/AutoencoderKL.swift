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

// MARK: - Layers

/// diffusers' ResnetBlock2D without a time embedding (temb_channels=None, output_scale_factor 1):
/// shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x)))))), the shortcut a 1×1 conv when the
/// channel count changes.
struct ResnetBlock {
    let norm1: GroupNormLayer
    let conv1: Conv2DLayer
    let norm2: GroupNormLayer
    let conv2: Conv2DLayer
    let shortcut: Conv2DLayer?

    init(_ store: WeightStore, _ prefix: String, in inC: Int, out outC: Int, groups: Int) throws {
        norm1 = try GroupNormLayer(store, prefix + ".norm1", channels: inC, groups: groups)
        conv1 = try Conv2DLayer(store, prefix + ".conv1", in: inC, out: outC, kernel: 3, padding: .same(1))
        norm2 = try GroupNormLayer(store, prefix + ".norm2", channels: outC, groups: groups)
        conv2 = try Conv2DLayer(store, prefix + ".conv2", in: outC, out: outC, kernel: 3, padding: .same(1))
        shortcut = inC == outC ? nil
            : try Conv2DLayer(store, prefix + ".conv_shortcut", in: inC, out: outC, kernel: 1, padding: .same(0))
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        var h = conv1(norm1(x, silu: true))
        h = conv2(norm2(h, silu: true))
        if let shortcut { h += shortcut(x) } else { h += x }
        return h
    }
}

/// The mid block's single-head self-attention over all h·w positions (diffusers' Attention with
/// group_norm, heads = 1, dim_head = C, residual connection, rescale 1):
/// x + to_out(softmax(q·kᵀ/√C)·v) with q, k, v = to_q/to_k/to_v(groupnorm(x)) as [N, hw, C].
struct SpatialSelfAttention {
    let norm: GroupNormLayer
    let q, k, v, out: (weight: [Float], bias: [Float])
    let channels: Int

    init(_ store: WeightStore, _ prefix: String, channels c: Int, groups: Int) throws {
        channels = c
        norm = try GroupNormLayer(store, prefix + ".group_norm", channels: c, groups: groups)
        // Older checkpoints name the projections query/key/value/proj_attn (diffusers converts
        // them when loading); some store them as 1×1 conv weights [C, C, 1, 1].
        func linear(_ names: [String]) throws -> (weight: [Float], bias: [Float]) {
            let name = names.first { store.contains(prefix + "." + $0 + ".weight") } ?? names[0]
            let entry = store.file.entries[prefix + "." + name + ".weight"]
            let shape = entry?.shape.count == 4 ? [c, c, 1, 1] : [c, c]
            return (try store.load(prefix + "." + name + ".weight", shape: shape),
                    try store.load(prefix + "." + name + ".bias", shape: [c]))
        }
        q = try linear(["to_q", "query"])
        k = try linear(["to_k", "key"])
        v = try linear(["to_v", "value"])
        out = try linear(["to_out.0", "proj_attn"])
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let tokens = Self.toTokens(norm(x, silu: false))
        let qt = Linear.forward(tokens, weight: q.weight, bias: q.bias, outFeatures: c)
        let kt = Linear.forward(tokens, weight: k.weight, bias: k.bias, outFeatures: c)
        let vt = Linear.forward(tokens, weight: v.weight, bias: v.bias, outFeatures: c)
        let attended = Attention.forward(q: qt, k: kt, v: vt, heads: 1, scale: 1 / Float(c).squareRoot())
        let projected = Linear.forward(attended, weight: out.weight, bias: out.bias, outFeatures: c)
        var y = Self.fromTokens(projected, height: h, width: w)
        precondition(y.shape == [n, c, h, w])
        y += x
        return y
    }

    /// [N, C, H, W] → [N, H·W, C].
    static func toTokens(_ x: Tensor) -> Tensor {
        let (n, c, hw) = (x.shape[0], x.shape[1], x.shape[2] * x.shape[3])
        var out = [Float](repeating: 0, count: x.count)
        x.data.withUnsafeBufferPointer { xp in
            out.withUnsafeMutableBufferPointer { op in
                for b in 0..<n {
                    let src = xp.baseAddress! + b * c * hw, dst = op.baseAddress! + b * c * hw
                    for ch in 0..<c { for i in 0..<hw { dst[i * c + ch] = src[ch * hw + i] } }
                }
            }
        }
        return Tensor(shape: [n, hw, c], data: out)
    }

    /// [N, H·W, C] → [N, C, H, W].
    static func fromTokens(_ x: Tensor, height: Int, width: Int) -> Tensor {
        let (n, hw, c) = (x.shape[0], x.shape[1], x.shape[2])
        precondition(hw == height * width)
        var out = [Float](repeating: 0, count: x.count)
        x.data.withUnsafeBufferPointer { xp in
            out.withUnsafeMutableBufferPointer { op in
                for b in 0..<n {
                    let src = xp.baseAddress! + b * c * hw, dst = op.baseAddress! + b * c * hw
                    for i in 0..<hw { for ch in 0..<c { dst[ch * hw + i] = src[i * c + ch] } }
                }
            }
        }
        return Tensor(shape: [n, c, height, width], data: out)
    }
}

/// UNetMidBlock2D as the VAE uses it: resnet, [attention], resnet.
struct VAEMidBlock {
    let resnet0: ResnetBlock
    let attention: SpatialSelfAttention?
    let resnet1: ResnetBlock

    init(_ store: WeightStore, _ prefix: String, channels c: Int, groups: Int, attention: Bool) throws {
        resnet0 = try ResnetBlock(store, prefix + ".resnets.0", in: c, out: c, groups: groups)
        self.attention = attention
            ? try SpatialSelfAttention(store, prefix + ".attentions.0", channels: c, groups: groups) : nil
        resnet1 = try ResnetBlock(store, prefix + ".resnets.1", in: c, out: c, groups: groups)
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        var h = resnet0(x)
        if let attention { h = attention(h) }
        return resnet1(h)
    }
}

// MARK: - Encoder and decoder

/// diffusers' vae.Encoder followed by quant_conv: image [N, 3, H, W] in [−1, 1] → moments
/// [N, 2·latent, H/f, W/f].
public struct VAEEncoder {
    let config: AutoencoderKLConfig
    let convIn: Conv2DLayer
    /// Per down block: its resnets and, except for the last block, a stride-2 conv.
    let blocks: [(resnets: [ResnetBlock], downsample: Conv2DLayer?)]
    let mid: VAEMidBlock
    let normOut: GroupNormLayer
    let convOut: Conv2DLayer
    let quantConv: Conv2DLayer?

    public init(config: AutoencoderKLConfig, weights store: WeightStore) throws {
        self.config = config
        let ch = config.blockOutChannels, g = config.normNumGroups
        convIn = try Conv2DLayer(store, "encoder.conv_in", in: config.inChannels, out: ch[0], kernel: 3, padding: .same(1))
        var blocks: [(resnets: [ResnetBlock], downsample: Conv2DLayer?)] = []
        var inC = ch[0]
        for (i, outC) in ch.enumerated() {
            var resnets: [ResnetBlock] = []
            for j in 0..<config.layersPerBlock {
                resnets.append(try ResnetBlock(store, "encoder.down_blocks.\(i).resnets.\(j)",
                                               in: j == 0 ? inC : outC, out: outC, groups: g))
            }
            // Downsample2D(padding=0): F.pad (0, 1, 0, 1) — right and bottom only — then a
            // stride-2 3×3 conv.
            let down = i == ch.count - 1 ? nil
                : try Conv2DLayer(store, "encoder.down_blocks.\(i).downsamplers.0.conv", in: outC, out: outC,
                                kernel: 3, stride: 2, padding: Conv2D.Padding(top: 0, bottom: 1, left: 0, right: 1))
            blocks.append((resnets, down))
            inC = outC
        }
        self.blocks = blocks
        let last = ch[ch.count - 1]
        mid = try VAEMidBlock(store, "encoder.mid_block", channels: last, groups: g, attention: config.midBlockAddAttention)
        normOut = try GroupNormLayer(store, "encoder.conv_norm_out", channels: last, groups: g)
        convOut = try Conv2DLayer(store, "encoder.conv_out", in: last, out: 2 * config.latentChannels, kernel: 3, padding: .same(1))
        quantConv = config.useQuantConv
            ? try Conv2DLayer(store, "quant_conv", in: 2 * config.latentChannels, out: 2 * config.latentChannels,
                            kernel: 1, padding: .same(0))
            : nil
    }

    /// Moments [N, 2·latent, H/f, W/f] (after quant_conv). H and W must be multiples of f.
    /// `trace` sees each stage's output under the names of the reference fixtures
    /// (vae.encoder.conv_in, vae.encoder.down.i, vae.encoder.mid, vae.encoder.conv_out, vae.quant_conv).
    public func moments(_ image: Tensor, trace: ((String, Tensor) -> Void)? = nil) -> Tensor {
        precondition(image.rank == 4 && image.shape[1] == config.inChannels)
        var x = convIn(image)
        trace?("vae.encoder.conv_in", x)
        for (i, block) in blocks.enumerated() {
            for resnet in block.resnets { x = resnet(x) }
            if let down = block.downsample { x = down(x) }
            trace?("vae.encoder.down.\(i)", x)
        }
        x = mid(x)
        trace?("vae.encoder.mid", x)
        x = convOut(normOut(x, silu: true))
        trace?("vae.encoder.conv_out", x)
        if let quantConv {
            x = quantConv(x)
            trace?("vae.quant_conv", x)
        }
        return x
    }
}

/// post_quant_conv followed by diffusers' vae.Decoder: latents [N, latent, h, w] (already
/// divided by scaling_factor) → image [N, 3, h·f, w·f], roughly in [−1, 1].
public struct VAEDecoder {
    let config: AutoencoderKLConfig
    let postQuantConv: Conv2DLayer?
    let convIn: Conv2DLayer
    let mid: VAEMidBlock
    /// Per up block (deepest first): layers_per_block + 1 resnets and, except for the last
    /// block, a nearest 2× upsample followed by a 3×3 conv.
    let blocks: [(resnets: [ResnetBlock], upsampleConv: Conv2DLayer?)]
    let normOut: GroupNormLayer
    let convOut: Conv2DLayer

    public init(config: AutoencoderKLConfig, weights store: WeightStore) throws {
        self.config = config
        let ch = config.blockOutChannels, g = config.normNumGroups
        let lc = config.latentChannels
        postQuantConv = config.usePostQuantConv
            ? try Conv2DLayer(store, "post_quant_conv", in: lc, out: lc, kernel: 1, padding: .same(0)) : nil
        let reversed = Array(ch.reversed())
        convIn = try Conv2DLayer(store, "decoder.conv_in", in: lc, out: reversed[0], kernel: 3, padding: .same(1))
        mid = try VAEMidBlock(store, "decoder.mid_block", channels: reversed[0], groups: g, attention: config.midBlockAddAttention)
        var blocks: [(resnets: [ResnetBlock], upsampleConv: Conv2DLayer?)] = []
        var inC = reversed[0]
        for (i, outC) in reversed.enumerated() {
            var resnets: [ResnetBlock] = []
            for j in 0...config.layersPerBlock {
                resnets.append(try ResnetBlock(store, "decoder.up_blocks.\(i).resnets.\(j)",
                                               in: j == 0 ? inC : outC, out: outC, groups: g))
            }
            let up = i == reversed.count - 1 ? nil
                : try Conv2DLayer(store, "decoder.up_blocks.\(i).upsamplers.0.conv", in: outC, out: outC,
                                kernel: 3, padding: .same(1))
            blocks.append((resnets, up))
            inC = outC
        }
        self.blocks = blocks
        normOut = try GroupNormLayer(store, "decoder.conv_norm_out", channels: ch[0], groups: g)
        convOut = try Conv2DLayer(store, "decoder.conv_out", in: ch[0], out: config.outChannels, kernel: 3, padding: .same(1))
    }

    /// The decoded image, as `vae.decode(z).sample` (no clamping). `trace` sees each stage's
    /// output under the fixtures' names (vae.post_quant_conv, vae.decoder.conv_in,
    /// vae.decoder.mid, vae.decoder.up.i).
    public func decode(_ z: Tensor, trace: ((String, Tensor) -> Void)? = nil) -> Tensor {
        precondition(z.rank == 4 && z.shape[1] == config.latentChannels)
        var x = z
        if let postQuantConv {
            x = postQuantConv(x)
            trace?("vae.post_quant_conv", x)
        }
        x = convIn(x)
        trace?("vae.decoder.conv_in", x)
        x = mid(x)
        trace?("vae.decoder.mid", x)
        for (i, block) in blocks.enumerated() {
            for resnet in block.resnets { x = resnet(x) }
            if let conv = block.upsampleConv {
                // Upsample2D: F.interpolate(scale_factor=2, mode="nearest"), then conv.
                x = conv(Conv2D.upsampleNearest(x, height: 2 * x.shape[2], width: 2 * x.shape[3]))
            }
            trace?("vae.decoder.up.\(i)", x)
        }
        return convOut(normOut(x, silu: true))
    }
}

/// diffusers' AutoencoderKL: the encoder and decoder load separately so that a tool needing only
/// one of them reads only its weights.
public struct AutoencoderKL {
    public let config: AutoencoderKLConfig
    let store: WeightStore

    public init(config: AutoencoderKLConfig, weights: WeightStore) {
        self.config = config
        self.store = weights
    }

    /// The `vae` component of a model folder.
    public init(folder: ModelFolder) throws {
        config = try AutoencoderKLConfig(folder.config("vae"))
        store = try folder.weights("vae")
    }

    public func makeEncoder() throws -> VAEEncoder { try VAEEncoder(config: config, weights: store) }
    public func makeDecoder() throws -> VAEDecoder { try VAEDecoder(config: config, weights: store) }

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
