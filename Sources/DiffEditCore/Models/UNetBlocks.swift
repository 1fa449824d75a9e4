import Foundation

// The UNet's transformer blocks (diffusers' attention.py BasicTransformerBlock and
// transformers/transformer_2d.py Transformer2DModel), built from Layers.swift.

/// BasicTransformerBlock (norm_type layer_norm, GEGLU feed-forward):
/// x += attn1(norm1(x)); x += attn2(norm2(x), encoder); x += ff(norm3(x)).
struct BasicTransformerBlock {
    let norm1, norm2, norm3: LayerNormLayer
    let attn1, attn2: AttentionLayer
    let ffIn: LinearLayer  // ff.net.0.proj: dim → 2·4·dim (GEGLU's value and gate halves)
    let ffOut: LinearLayer  // ff.net.2: 4·dim → dim

    init(_ l: ParameterLoader, _ p: String, dim: Int, heads: Int, headDim: Int, crossDim: Int) throws {
        norm1 = try LayerNormLayer(l, "\(p).norm1", dim: dim)
        attn1 = try AttentionLayer(l, "\(p).attn1", queryDim: dim, crossDim: nil, heads: heads, headDim: headDim)
        norm2 = try LayerNormLayer(l, "\(p).norm2", dim: dim)
        attn2 = try AttentionLayer(l, "\(p).attn2", queryDim: dim, crossDim: crossDim, heads: heads, headDim: headDim)
        norm3 = try LayerNormLayer(l, "\(p).norm3", dim: dim)
        ffIn = try LinearLayer(l, "\(p).ff.net.0.proj", in: dim, out: 8 * dim)
        ffOut = try LinearLayer(l, "\(p).ff.net.2", in: 4 * dim, out: dim)
    }

    /// Updates x (tokens [B, L, dim], made by the enclosing Transformer2D) in place. `store`:
    /// LEDITS++'s attention store, fed by the cross-attention (attn2) only.
    func callAsFunction(_ x: Activation, encoder: Activation, store: CrossAttentionStore? = nil, _ ctx: ComputeContext) {
        let a1 = attn1(norm1(x, ctx), encoder: nil, ctx)
        Pointwise.add(ctx, x.pointer, a1.pointer, count: x.count)
        let a2 = attn2(norm2(x, ctx), encoder: encoder, store: store, ctx)
        Pointwise.add(ctx, x.pointer, a2.pointer, count: x.count)
        let f = ffOut(feedForwardGEGLU(norm3(x, ctx), ctx), ctx)
        Pointwise.add(ctx, x.pointer, f.pointer, count: x.count)
    }

    /// GEGLU(ff.net.0.proj(n)): in one product where the kernel can (bf16), else the product
    /// then the gate.
    private func feedForwardGEGLU(_ n: Activation, _ ctx: ComputeContext) -> Activation {
        if let g = ffIn.geglu(n, ctx) { return g }
        let h = ffIn(n, ctx)
        let d = ffOut.inFeatures
        let rows = h.count / (2 * d)
        var gs = h.shape
        gs[gs.count - 1] = d
        let g = ctx.activation(gs)
        ctx.measure("geglu") { Pointwise.geglu(ctx, h.pointer, rows: rows, d: d, out: g.pointer) }
        return g
    }
}

/// Transformer2DModel over continuous input: GroupNorm (eps 1e-6), proj_in (1×1 conv for SD 1.x,
/// linear with use_linear_projection for SD 2.x — the same product), transformer blocks on the
/// [B, H·W, inner] tokens, proj_out, plus the input as residual. The NCHW↔token permutes are
/// folded into the projections' products.
struct Transformer2D {
    let norm: GroupNormLayer
    let projIn: LinearLayer  // [inner, C]
    let projOut: LinearLayer  // [C, inner]
    let blocks: [BasicTransformerBlock]

    init(_ l: ParameterLoader, _ p: String, channels c: Int, heads: Int, headDim: Int, crossDim: Int,
         groups: Int, linearProjection: Bool, layers: Int) throws {
        let inner = heads * headDim
        norm = try GroupNormLayer(l, "\(p).norm", channels: c, groups: groups, eps: 1e-6)
        let inShape = linearProjection ? [inner, c] : [inner, c, 1, 1]
        let outShape = linearProjection ? [c, inner] : [c, inner, 1, 1]
        projIn = try LinearLayer(l, "\(p).proj_in", storedShape: inShape, in: c, out: inner)
        projOut = try LinearLayer(l, "\(p).proj_out", storedShape: outShape, in: inner, out: c)
        blocks = try (0..<layers).map {
            try BasicTransformerBlock(l, "\(p).transformer_blocks.\($0)", dim: inner, heads: heads, headDim: headDim,
                                      crossDim: crossDim)
        }
    }

    func callAsFunction(_ x: Activation, encoder: Activation, store: CrossAttentionStore? = nil,
                        _ ctx: ComputeContext) -> Activation {
        let tokens = projIn.fromChannels(norm(x, ctx), ctx)
        for block in blocks { block(tokens, encoder: encoder, store: store, ctx) }
        return projOut.toChannels(tokens, residual: x, ctx)
    }
}
