import Foundation

// The layer vocabulary every model (UNet, VAE, CLIP) is built from, named like the checkpoint
// keys they load. Layers own their Parameters and call kernels; models call only layers.
// A layer never writes into its input: it returns a fresh Activation from the context's
// workspace (only activations a layer has just made are updated in place).

/// torch.nn.Linear over the last dimension.
struct LinearLayer {
    let weight: Parameter  // [out, in]
    let bias: Parameter?
    let inFeatures: Int
    let outFeatures: Int
    /// LoRA adapters' term, added to the base product (nil without adapters).
    let lowRank: LowRankUpdate?

    init(_ l: ParameterLoader, _ p: String, in i: Int, out o: Int, bias: Bool = true) throws {
        weight = try l.matrix("\(p).weight", [o, i])
        self.bias = bias ? try l.load("\(p).bias", [o]) : nil
        inFeatures = i
        outFeatures = o
        lowRank = try l.lowRank(p, out: o, inFlat: i)
    }

    /// A linear stored as a 1×1 convolution ([out, in, 1, 1]: SD 1.x's proj_in and proj_out).
    init(_ l: ParameterLoader, _ p: String, storedShape: [Int], in i: Int, out o: Int) throws {
        weight = try l.load("\(p).weight", storedShape)
        bias = try l.load("\(p).bias", [o])
        inFeatures = i
        outFeatures = o
        lowRank = try l.lowRank(p, out: o, inFlat: i)
    }

    /// Several linears over the same input fused into one product (their weights stacked:
    /// self-attention's q, k and v).
    init(_ l: ParameterLoader, stacking names: [String], in i: Int, outs: [Int], bias: Bool) throws {
        weight = try l.stacked(names.map { "\($0).weight" }, rows: outs, columns: i)
        self.bias = bias ? try l.stacked(names.map { "\($0).bias" }, rows: outs, columns: nil) : nil
        inFeatures = i
        outFeatures = outs.reduce(0, +)
        lowRank = try l.lowRank(stacking: names, outs: outs, inFlat: i)
    }

    init(weight: Parameter, bias: Parameter?) {
        self.weight = weight
        self.bias = bias
        outFeatures = weight.shape[0]
        inFeatures = weight.count / weight.shape[0]
        lowRank = nil
    }

    /// x: [..., in] → [..., out].
    func callAsFunction(_ x: Activation, _ ctx: ComputeContext) -> Activation {
        precondition(x.shape.last == inFeatures, "linear expects \(inFeatures) features, got \(x.shape)")
        let rows = x.count / inFeatures
        var shape = x.shape
        shape[shape.count - 1] = outFeatures
        let y = ctx.activation(shape)
        let matrix = weight.matrix  // outside the closure: Swift 6.3's optimiser crashes on it inside
        ctx.measure("linear") {
            Linear.forward(ctx, x: x.pointer, rows: rows, inFeatures: inFeatures, weight: matrix,
                           bias: bias?.pointer, outFeatures: outFeatures, out: y.pointer)
        }
        if let u = lowRank {
            ctx.measure("lora") {
                LowRank.linear(ctx, x: x.pointer, rows: rows, down: u.down.pointer, up: u.up.pointer, rank: u.rank,
                               inFeatures: inFeatures, outFeatures: outFeatures, out: y.pointer)
            }
        }
        ctx.countMACs(rows * inFeatures * outFeatures)
        return y
    }

    /// GEGLU of this projection ([h | g] = x·Wᵀ + b, out/2 wide each) as one product where the
    /// kernel can (`Linear.forwardGEGLU`: bf16, weights packed once, no LoRA); nil elsewhere.
    func geglu(_ x: Activation, _ ctx: ComputeContext) -> Activation? {
        // Only where the fused product can run: no activation taken for nothing.
        guard lowRank == nil, ctx.policy.precision == .bf16, ctx.policy.packsWeightsBF16, outFeatures % 32 == 0,
              x.shape.last == inFeatures else { return nil }
        let rows = x.count / inFeatures
        var shape = x.shape
        shape[shape.count - 1] = outFeatures / 2
        let y = ctx.activation(shape)
        let matrix = weight.matrix
        let done = ctx.measure("linear") {
            Linear.forwardGEGLU(ctx, x: x.pointer, rows: rows, inFeatures: inFeatures, weight: matrix,
                                bias: bias?.pointer, outFeatures: outFeatures, out: y.pointer)
        }
        guard done else { return nil }
        ctx.countMACs(rows * inFeatures * outFeatures)
        return y
    }

    /// The same product read from NCHW channels: x [B, C = in, H, W] → tokens [B, H·W, out]
    /// (the permute to tokens folded into the product: tokens[b] = x[b]ᵀ·Wᵀ + bias).
    func fromChannels(_ x: Activation, _ ctx: ComputeContext) -> Activation {
        let (b, c, hw) = (x.shape[0], x.shape[1], x.shape[2] * x.shape[3])
        precondition(c == inFeatures)
        let y = ctx.activation([b, hw, outFeatures])
        let matrix = weight.matrix
        ctx.measure("linear") {
            Linear.fromChannels(ctx, x: x.pointer, images: b, pixels: hw, inFeatures: c, weight: matrix,
                                bias: bias?.pointer, outFeatures: outFeatures, out: y.pointer)
        }
        if let u = lowRank {
            ctx.measure("lora") {
                LowRank.fromChannels(ctx, x: x.pointer, images: b, pixels: hw, down: u.down.pointer, up: u.up.pointer,
                                     rank: u.rank, inFeatures: c, outFeatures: outFeatures, out: y.pointer)
            }
        }
        ctx.countMACs(b * hw * c * outFeatures)
        return y
    }

    /// The product written back to NCHW channels plus a residual: tokens [B, H·W, in] →
    /// residual + bias + W·tokensᵀ as [B, out, H, W] (the shape of `residual`).
    func toChannels(_ t: Activation, residual: Activation, _ ctx: ComputeContext) -> Activation {
        let (b, c, hw) = (residual.shape[0], residual.shape[1], residual.shape[2] * residual.shape[3])
        precondition(c == outFeatures && t.shape == [b, hw, inFeatures])
        let y = ctx.activation(residual.shape)
        let matrix = weight.matrix
        ctx.measure("linear") {
            Linear.toChannels(ctx, tokens: t.pointer, images: b, pixels: hw, inFeatures: inFeatures, weight: matrix,
                              bias: bias?.pointer, outFeatures: c, residual: residual.pointer, out: y.pointer)
        }
        if let u = lowRank {
            ctx.measure("lora") {
                LowRank.toChannels(ctx, tokens: t.pointer, images: b, pixels: hw, down: u.down.pointer, up: u.up.pointer,
                                   rank: u.rank, inFeatures: inFeatures, outFeatures: c, out: y.pointer)
            }
        }
        ctx.countMACs(b * hw * c * inFeatures)
        return y
    }
}

/// torch.nn.Conv2d (groups 1, square kernel), its weight read in place as [O][C·k·k]; the kernel
/// picks its method by size (`Conv2D.forward`).
struct Conv2DLayer {
    let weight: Parameter
    let bias: Parameter?
    let inChannels: Int
    let outChannels: Int
    let kernel: Int
    let stride: Int
    let padding: Conv2D.Padding
    /// LoRA adapters' term (a k×k conv to rank channels, then 1×1 back), added to the output.
    let lowRank: LowRankUpdate?

    /// `optionalBias`: the VAE's checkpoints may omit a conv bias; the UNet's may not.
    init(_ l: ParameterLoader, _ p: String, in i: Int, out o: Int, kernel k: Int, stride: Int = 1,
         padding: Conv2D.Padding, optionalBias: Bool = false) throws {
        weight = try l.matrix("\(p).weight", [o, i, k, k])
        bias = optionalBias ? try l.loadIfPresent("\(p).bias", [o]) : try l.load("\(p).bias", [o])
        inChannels = i
        outChannels = o
        kernel = k
        self.stride = stride
        self.padding = padding
        lowRank = try l.lowRank(p, out: o, inFlat: i * k * k)
    }

    func callAsFunction(_ x: Activation, _ ctx: ComputeContext) -> Activation {
        precondition(x.rank == 4 && x.shape[1] == inChannels, "conv expects \(inChannels) channels, got \(x.shape)")
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let (oh, ow) = Conv2D.outputSize(h: h, w: w, kernel: (kernel, kernel), stride: stride, padding: padding)
        precondition(oh > 0 && ow > 0, "conv: \(h)x\(w) input is smaller than the \(kernel)x\(kernel) kernel")
        let y = ctx.activation([n, outChannels, oh, ow])
        Conv2D.forward(ctx, x: x.pointer, n: n, c: c, h: h, w: w, weight: weight.matrix, bias: bias?.pointer,
                       outChannels: outChannels, kernel: kernel, stride: stride, padding: padding, out: y.pointer)
        if let u = lowRank {
            ctx.measure("lora") {
                LowRank.conv(ctx, x: x.pointer, n: n, c: c, h: h, w: w, down: u.down.pointer, up: u.up.pointer, rank: u.rank,
                             outChannels: outChannels, kernel: kernel, stride: stride, padding: padding, out: y.pointer)
            }
        }
        ctx.countMACs(n * outChannels * inChannels * kernel * kernel * oh * ow)
        return y
    }
}

/// torch.nn.GroupNorm (affine), optionally followed by SiLU.
struct GroupNormLayer {
    let weight: Parameter
    let bias: Parameter
    let groups: Int
    let eps: Float

    init(_ l: ParameterLoader, _ p: String, channels c: Int, groups: Int, eps: Float) throws {
        weight = try l.load("\(p).weight", [c])
        bias = try l.load("\(p).bias", [c])
        self.groups = groups
        self.eps = eps
    }

    func callAsFunction(_ x: Activation, silu: Bool = false, _ ctx: ComputeContext) -> Activation {
        let (n, c) = (x.shape[0], x.shape[1])
        let spatial = x.count / max(1, n * c)
        let y = ctx.activation(x.shape)
        ctx.measure("groupnorm") {
            guard let shared = ctx.groupNormStatistics else {
                Normalization.groupNorm(ctx, x: x.pointer, n: n, c: c, spatial: spatial, groups: groups,
                                        weight: weight.pointer, bias: bias.pointer, eps: eps, silu: silu, out: y.pointer)
                return
            }
            // Shared statistics (VAETiling): record this input's, or normalise with the recorded ones.
            shared.next(pairs: n * groups) { stats, record in
                if record {
                    Normalization.groupStatistics(ctx, x: x.pointer, n: n, c: c, spatial: spatial, groups: groups, into: stats)
                }
                Normalization.groupNorm(ctx, x: x.pointer, n: n, c: c, spatial: spatial, groups: groups, statistics: stats,
                                        weight: weight.pointer, bias: bias.pointer, eps: eps, silu: silu, out: y.pointer)
            }
        }
        return y
    }
}

/// torch.nn.LayerNorm over the last dimension.
struct LayerNormLayer {
    let weight: Parameter
    let bias: Parameter
    let eps: Float

    init(_ l: ParameterLoader, _ p: String, dim d: Int, eps: Float = 1e-5) throws {
        weight = try l.load("\(p).weight", [d])
        bias = try l.load("\(p).bias", [d])
        self.eps = eps
    }

    func callAsFunction(_ x: Activation, _ ctx: ComputeContext) -> Activation {
        let d = x.shape.last!
        let y = ctx.activation(x.shape)
        ctx.measure("layernorm") {
            Normalization.layerNorm(ctx, x: x.pointer, rows: x.count / d, d: d, weight: weight.pointer, bias: bias.pointer,
                                    eps: eps, out: y.pointer)
        }
        return y
    }
}

/// diffusers' ResnetBlock2D (time_embedding_norm "default"), the UNet's with a time embedding
/// and the VAE's without:
/// h = conv1(silu(norm1(x))) [+ time_emb_proj(silu(temb))]; h = conv2(silu(norm2(h)));
/// out = (shortcut(x) + h) / output_scale_factor, the shortcut a 1×1 conv when channels change.
struct ResnetBlock2D {
    let norm1: GroupNormLayer
    let conv1: Conv2DLayer
    let timeEmbProj: LinearLayer?
    let norm2: GroupNormLayer
    let conv2: Conv2DLayer
    let convShortcut: Conv2DLayer?
    let outputScaleFactor: Float

    /// `temb`: the time embedding's width (nil: the VAE's blocks, which have none).
    init(_ l: ParameterLoader, _ p: String, in i: Int, out o: Int, temb: Int?, groups: Int, eps: Float,
         outputScaleFactor: Float = 1, optionalBias: Bool = false) throws {
        norm1 = try GroupNormLayer(l, "\(p).norm1", channels: i, groups: groups, eps: eps)
        conv1 = try Conv2DLayer(l, "\(p).conv1", in: i, out: o, kernel: 3, padding: .same(1), optionalBias: optionalBias)
        timeEmbProj = try temb.map { try LinearLayer(l, "\(p).time_emb_proj", in: $0, out: o) }
        norm2 = try GroupNormLayer(l, "\(p).norm2", channels: o, groups: groups, eps: eps)
        conv2 = try Conv2DLayer(l, "\(p).conv2", in: o, out: o, kernel: 3, padding: .same(1), optionalBias: optionalBias)
        convShortcut = i != o
            ? try Conv2DLayer(l, "\(p).conv_shortcut", in: i, out: o, kernel: 1, padding: .same(0), optionalBias: optionalBias)
            : nil
        self.outputScaleFactor = outputScaleFactor
    }

    /// `sTemb` is silu(temb), [B, temb], for blocks with a time embedding.
    func callAsFunction(_ x: Activation, sTemb: Activation? = nil, _ ctx: ComputeContext) -> Activation {
        let (b, hw) = (x.shape[0], x.shape[2] * x.shape[3])
        let h = conv1(norm1(x, silu: true, ctx), ctx)
        if let timeEmbProj, let sTemb {
            let t = timeEmbProj(sTemb, ctx)  // [B, out]
            Pointwise.addPerChannel(ctx, h.pointer, n: b, channels: conv1.outChannels, plane: hw, t.pointer, perImage: true)
        }
        let out = conv2(norm2(h, silu: true, ctx), ctx)
        let residual = convShortcut.map { $0(x, ctx) } ?? x
        if outputScaleFactor != 1 {
            Pointwise.addScaled(ctx, out.pointer, residual.pointer, divideBy: outputScaleFactor, count: out.count)
        } else {
            Pointwise.add(ctx, out.pointer, residual.pointer, count: out.count)
        }
        return out
    }
}

/// diffusers' Attention (AttnProcessor) and CLIP's self-attention: q, k, v projections,
/// scaled dot-product attention over `heads` heads of size d = inner/heads (scale 1/√d), and the
/// output projection. Self-attention fuses q, k and v into one product; cross-attention fuses
/// k and v over the encoder states.
struct AttentionLayer {
    /// Checkpoint names of the four projections.
    struct Names {
        var q, k, v, out: String
        static let diffusers = Names(q: "to_q", k: "to_k", v: "to_v", out: "to_out.0")
        static let clip = Names(q: "q_proj", k: "k_proj", v: "v_proj", out: "out_proj")
    }

    let heads: Int
    let inner: Int
    let causal: Bool
    /// Self: [q; k; v]. Cross: q only.
    let qkv: LinearLayer
    /// Cross: [k; v] over the encoder states.
    let kv: LinearLayer?
    let out: LinearLayer

    /// `crossDim` nil for self-attention. `projectionBias`: q/k/v carry biases (CLIP, the VAE).
    init(_ l: ParameterLoader, _ p: String, names: Names = .diffusers, queryDim: Int, crossDim: Int?, heads: Int,
         headDim: Int, projectionBias: Bool = false, causal: Bool = false) throws {
        self.heads = heads
        self.causal = causal
        inner = heads * headDim
        let n = names
        if let crossDim {
            qkv = try LinearLayer(l, "\(p).\(n.q)", in: queryDim, out: inner, bias: projectionBias)
            kv = try LinearLayer(l, stacking: ["\(p).\(n.k)", "\(p).\(n.v)"], in: crossDim, outs: [inner, inner],
                                 bias: projectionBias)
        } else {
            qkv = try LinearLayer(l, stacking: ["\(p).\(n.q)", "\(p).\(n.k)", "\(p).\(n.v)"], in: queryDim,
                                  outs: [inner, inner, inner], bias: projectionBias)
            kv = nil
        }
        out = try LinearLayer(l, "\(p).\(n.out)", in: inner, out: queryDim)
    }

    init(heads: Int, inner: Int, qkv: LinearLayer, out: LinearLayer) {
        self.heads = heads
        self.inner = inner
        causal = false
        self.qkv = qkv
        kv = nil
        self.out = out
    }

    /// x: [B, L, queryDim]; encoder: [B, Le, crossDim] for cross-attention → [B, L, queryDim].
    /// `store`: cross-attention hands its probabilities to it when it wants this query grid.
    func callAsFunction(_ x: Activation, encoder: Activation?, store: CrossAttentionStore? = nil,
                        _ ctx: ComputeContext) -> Activation {
        out(attend(x, encoder: encoder, store: store, ctx), ctx)
    }

    /// The attended values before the output projection, [B, L, inner].
    func attend(_ x: Activation, encoder: Activation?, store: CrossAttentionStore? = nil,
                _ ctx: ComputeContext) -> Activation {
        if let kv {
            let q = qkv(x, ctx)
            let keysValues = kv(encoder!, ctx)
            if let store { handProbabilities(q: q, kv: keysValues, to: store, ctx) }
            return attendProjected(q: q, kv: keysValues, ctx)
        }
        return attendProjected(qkv: qkv(x, ctx), ctx)
    }

    /// LEDITS++'s attention store: the probabilities of batch items 1 ..< B (item 0, the
    /// unconditional branch, is skipped as in diffusers' LeditsAttentionStore), computed apart
    /// from the attention output, which never materialises them.
    func handProbabilities(q: Activation, kv: Activation, to store: CrossAttentionStore, _ ctx: ComputeContext) {
        let (b, l, le) = (q.shape[0], q.shape[1], kv.shape[1])
        guard b > 1, store.wants(queries: l) else { return }
        ctx.workspace.withScratch((b - 1) * heads * l * le) { p in
            Attention.probabilities(ctx, q: q.pointer, ldq: inner, k: kv.pointer, ldk: 2 * inner, items: 1..<b,
                                    lq: l, lk: le, heads: heads, headDim: inner / heads,
                                    scale: 1 / Float(inner / heads).squareRoot(), out: p)
            store.add(probabilities: p, batch: b, heads: heads, queries: l, keys: le)
        }
    }

    /// Self-attention over fused projections qkv [B, L, 3·inner].
    func attendProjected(qkv p: Activation, _ ctx: ComputeContext) -> Activation {
        let (b, l) = (p.shape[0], p.shape[1])
        let y = ctx.activation([b, l, inner])
        Attention.forward(ctx, q: p.pointer, ldq: 3 * inner, k: p.pointer + inner, ldk: 3 * inner,
                          v: p.pointer + 2 * inner, ldv: 3 * inner, out: y.pointer, ldo: inner, batch: b, lq: l, lk: l,
                          heads: heads, headDim: inner / heads, scale: 1 / Float(inner / heads).squareRoot(),
                          causal: causal)
        return y
    }

    /// Cross-attention: q [B, L, inner] against kv [B, Le, 2·inner].
    func attendProjected(q: Activation, kv: Activation, _ ctx: ComputeContext) -> Activation {
        let (b, l, le) = (q.shape[0], q.shape[1], kv.shape[1])
        let y = ctx.activation([b, l, inner])
        Attention.forward(ctx, q: q.pointer, ldq: inner, k: kv.pointer, ldk: 2 * inner, v: kv.pointer + inner,
                          ldv: 2 * inner, out: y.pointer, ldo: inner, batch: b, lq: l, lk: le, heads: heads,
                          headDim: inner / heads, scale: 1 / Float(inner / heads).squareRoot(), causal: causal)
        return y
    }
}

/// Downsample2D with a conv: 3×3 stride 2, padding `downsample_padding` (0 means diffusers' pad of
/// one row/column at the bottom/right first).
struct Downsample2D {
    let conv: Conv2DLayer

    init(_ l: ParameterLoader, _ p: String, channels c: Int, padding: Int, optionalBias: Bool = false) throws {
        let pad = padding == 0 ? Conv2D.Padding(top: 0, bottom: 1, left: 0, right: 1) : .same(padding)
        conv = try Conv2DLayer(l, "\(p).conv", in: c, out: c, kernel: 3, stride: 2, padding: pad, optionalBias: optionalBias)
    }

    func callAsFunction(_ x: Activation, _ ctx: ComputeContext) -> Activation { conv(x, ctx) }
}

/// Upsample2D with a conv: nearest 2× (or to an explicit size, diffusers' upsample_size), then 3×3.
struct Upsample2D {
    let conv: Conv2DLayer

    init(_ l: ParameterLoader, _ p: String, channels c: Int, optionalBias: Bool = false) throws {
        conv = try Conv2DLayer(l, "\(p).conv", in: c, out: c, kernel: 3, padding: .same(1), optionalBias: optionalBias)
    }

    func callAsFunction(_ x: Activation, size: (Int, Int)? = nil, _ ctx: ComputeContext) -> Activation {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let (oh, ow) = size ?? (2 * h, 2 * w)
        let up = ctx.activation([n, c, oh, ow])
        ctx.measure("upsample") {
            Conv2D.upsampleNearest(ctx, x: x.pointer, planes: n * c, h: h, w: w, height: oh, width: ow, out: up.pointer)
        }
        return conv(up, ctx)
    }
}

/// Concatenation of NCHW activations along channels (the UNet's skip connections).
func concatChannels(_ a: Activation, _ b: Activation, _ ctx: ComputeContext) -> Activation {
    precondition(a.rank == 4 && b.rank == 4 && a.shape[0] == b.shape[0] && a.shape[2] == b.shape[2] && a.shape[3] == b.shape[3])
    let n = a.shape[0], hw = a.shape[2] * a.shape[3]
    let ca = a.shape[1], cb = b.shape[1]
    let y = ctx.activation([n, ca + cb, a.shape[2], a.shape[3]])
    Concat.channels(ctx, a.pointer, channels: ca, b.pointer, channels: cb, images: n, plane: hw, out: y.pointer)
    return y
}
