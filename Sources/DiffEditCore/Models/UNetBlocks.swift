import Foundation

// Building blocks of diffusers' UNet2DConditionModel (models/resnet.py, attention.py,
// attention_processor.py, transformers/transformer_2d.py, unets/unet_2d_blocks.py), with the
// weights loaded once and laid out for the kernels.

/// Counts multiply–accumulates of the products run (convs, linears, attention), for GFLOP/s.
public final class FlopCounter: @unchecked Sendable {
    public private(set) var macs: Int = 0
    public init() {}
    func add(_ n: Int) { macs += n }
}

/// ResnetBlock2D with time_embedding_norm "default":
/// h = conv1(silu(norm1(x))) + time_emb_proj(silu(temb)); h = conv2(silu(norm2(h)));
/// out = (shortcut(x) + h) / output_scale_factor.
struct ResnetBlock2D {
    let norm1: GroupNormLayer
    let conv1: Conv2DLayer
    let timeEmbProj: LinearLayer
    let norm2: GroupNormLayer
    let conv2: Conv2DLayer
    let shortcut: Conv2DLayer?
    let outputScaleFactor: Float

    init(_ l: WeightLoader, _ p: String, in i: Int, out o: Int, temb: Int, groups: Int, eps: Float,
         outputScaleFactor: Float) throws {
        norm1 = try l.groupNorm("\(p).norm1", channels: i, groups: groups, eps: eps)
        conv1 = try l.conv("\(p).conv1", in: i, out: o, kernel: 3, padding: .same(1))
        timeEmbProj = try l.linear("\(p).time_emb_proj", in: temb, out: o)
        norm2 = try l.groupNorm("\(p).norm2", channels: o, groups: groups, eps: eps)
        conv2 = try l.conv("\(p).conv2", in: o, out: o, kernel: 3, padding: .same(1))
        shortcut = i != o ? try l.conv("\(p).conv_shortcut", in: i, out: o, kernel: 1, padding: .same(0)) : nil
        self.outputScaleFactor = outputScaleFactor
    }

    /// `sTemb` is silu(temb), [B, temb].
    func callAsFunction(_ x: Tensor, sTemb: Tensor, flops: FlopCounter?) -> Tensor {
        let (b, hw) = (x.shape[0], x.shape[2] * x.shape[3])
        var h = conv1(norm1(x, silu: true))
        let t = timeEmbProj(sTemb)  // [B, out]
        let o = conv1.outChannels
        h.data.withUnsafeMutableBufferPointer { hp in
            for bi in 0..<b {
                for c in 0..<o {
                    let v = t.data[bi * o + c]
                    let base = (bi * o + c) * hw
                    for i in 0..<hw { hp[base + i] += v }
                }
            }
        }
        h = conv2(norm2(h, silu: true))
        let residual = shortcut.map { $0(x) } ?? x
        var out = residual + h
        if outputScaleFactor != 1 {
            let s = outputScaleFactor
            out.data.withUnsafeMutableBufferPointer { p in for i in 0..<p.count { p[i] /= s } }
        }
        if let flops {
            flops.add(b * (conv1.macs(outPixels: hw) + conv2.macs(outPixels: hw) + (shortcut?.macs(outPixels: hw) ?? 0)
                           + timeEmbProj.inFeatures * timeEmbProj.outFeatures))
        }
        return out
    }
}

/// diffusers' Attention with the default processor: to_q/to_k/to_v without bias, scaled
/// dot-product attention over `heads` heads of size d = inner/heads (scale 1/√d), to_out.0 with
/// bias. Self-attention fuses q, k and v into one GEMM.
struct AttentionLayer {
    let heads: Int
    let inner: Int
    let isSelf: Bool
    /// Self: [to_q; to_k; to_v]. Cross: to_q only.
    let qProj: LinearLayer
    /// Cross: [to_k; to_v] over the encoder states.
    let kvProj: LinearLayer?
    let outProj: LinearLayer

    init(_ l: WeightLoader, _ p: String, queryDim: Int, crossDim: Int?, heads: Int, headDim: Int) throws {
        self.heads = heads
        inner = heads * headDim
        isSelf = crossDim == nil
        let q = try l.linear("\(p).to_q", in: queryDim, out: inner, bias: false)
        let kvIn = crossDim ?? queryDim
        let k = try l.linear("\(p).to_k", in: kvIn, out: inner, bias: false)
        let v = try l.linear("\(p).to_v", in: kvIn, out: inner, bias: false)
        if isSelf {
            qProj = LinearLayer.stacked([q, k, v])
            kvProj = nil
        } else {
            qProj = q
            kvProj = LinearLayer.stacked([k, v])
        }
        outProj = try l.linear("\(p).to_out.0", in: inner, out: queryDim)
    }

    /// x: [B, L, queryDim]; encoder: [B, Le, crossDim] for cross-attention.
    func callAsFunction(_ x: Tensor, encoder: Tensor?, flops: FlopCounter?) -> Tensor {
        let b = x.shape[0], l = x.shape[1]
        let d = inner / heads
        let scale = 1 / Float(d).squareRoot()
        var attended = [Float](repeating: 0, count: b * l * inner)
        var lk = l
        if isSelf {
            let qkv = qProj(x)  // [B, L, 3·inner]
            attended.withUnsafeMutableBufferPointer { op in
                qkv.data.withUnsafeBufferPointer { p in
                    let base = p.baseAddress!
                    Attention.forward(q: base, ldq: 3 * inner, k: base + inner, ldk: 3 * inner,
                                      v: base + 2 * inner, ldv: 3 * inner, out: op.baseAddress!, ldo: inner,
                                      batch: b, lq: l, lk: l, heads: heads, headDim: d, scale: scale)
                }
            }
            flops?.add(b * l * qProj.inFeatures * qProj.outFeatures)
        } else {
            let enc = encoder!
            lk = enc.shape[1]
            let q = qProj(x)  // [B, L, inner]
            let kv = kvProj!(enc)  // [B, Le, 2·inner]
            attended.withUnsafeMutableBufferPointer { op in
                q.data.withUnsafeBufferPointer { qp in
                    kv.data.withUnsafeBufferPointer { kp in
                        Attention.forward(q: qp.baseAddress!, ldq: inner, k: kp.baseAddress!, ldk: 2 * inner,
                                          v: kp.baseAddress! + inner, ldv: 2 * inner, out: op.baseAddress!,
                                          ldo: inner, batch: b, lq: l, lk: lk, heads: heads, headDim: d,
                                          scale: scale)
                    }
                }
            }
            flops?.add(b * l * qProj.inFeatures * qProj.outFeatures
                       + b * lk * kvProj!.inFeatures * kvProj!.outFeatures)
        }
        flops?.add(b * l * inner * outProj.outFeatures + 2 * b * l * lk * inner)
        return outProj(Tensor(shape: [b, l, inner], data: attended))
    }
}

/// BasicTransformerBlock (norm_type layer_norm, GEGLU feed-forward):
/// x += attn1(norm1(x)); x += attn2(norm2(x), encoder); x += ff(norm3(x)).
struct BasicTransformerBlock {
    let norm1, norm2, norm3: LayerNormLayer
    let attn1, attn2: AttentionLayer
    let ffIn: LinearLayer  // ff.net.0.proj: dim → 2·4·dim
    let ffOut: LinearLayer  // ff.net.2: 4·dim → dim

    init(_ l: WeightLoader, _ p: String, dim: Int, heads: Int, headDim: Int, crossDim: Int) throws {
        norm1 = try l.layerNorm("\(p).norm1", dim: dim)
        attn1 = try AttentionLayer(l, "\(p).attn1", queryDim: dim, crossDim: nil, heads: heads, headDim: headDim)
        norm2 = try l.layerNorm("\(p).norm2", dim: dim)
        attn2 = try AttentionLayer(l, "\(p).attn2", queryDim: dim, crossDim: crossDim, heads: heads, headDim: headDim)
        norm3 = try l.layerNorm("\(p).norm3", dim: dim)
        ffIn = try l.linear("\(p).ff.net.0.proj", in: dim, out: 8 * dim)
        ffOut = try l.linear("\(p).ff.net.2", in: 4 * dim, out: dim)
    }

    func callAsFunction(_ x: inout Tensor, encoder: Tensor, flops: FlopCounter?) {
        x += attn1(norm1(x), encoder: nil, flops: flops)
        x += attn2(norm2(x), encoder: encoder, flops: flops)
        let h = ffIn(norm3(x))
        let d = ffOut.inFeatures
        let rows = h.count / (2 * d)
        var g = [Float](repeating: 0, count: rows * d)
        Profile.measure("geglu") { h.data.withUnsafeBufferPointer { hp in
            g.withUnsafeMutableBufferPointer { gp in
                Parallel.ranges(rows, minChunk: 64) { r in
                    VectorMath.geglu(hp.baseAddress! + r.lowerBound * 2 * d, rows: r.count, d: d,
                                     out: gp.baseAddress! + r.lowerBound * d)
                }
            }
        } }
        var gs = h.shape
        gs[gs.count - 1] = d
        x += ffOut(Tensor(shape: gs, data: g))
        flops?.add(rows * (ffIn.inFeatures * ffIn.outFeatures + ffOut.inFeatures * ffOut.outFeatures))
    }
}

/// Transformer2DModel over continuous input: GroupNorm (eps 1e-6), proj_in (1×1 conv for SD 1.x,
/// linear with use_linear_projection for SD 2.x — the same product), transformer blocks on the
/// [B, H·W, inner] tokens, proj_out, plus the input as residual. The NCHW↔token permutes are
/// folded into the projections' GEMMs.
struct Transformer2D {
    let norm: GroupNormLayer
    let projInWeight: [Float]  // [inner, C]
    let projInBias: [Float]
    let projOutWeight: [Float]  // [C, inner]
    let projOutBias: [Float]
    let blocks: [BasicTransformerBlock]
    let channels: Int
    let inner: Int

    init(_ l: WeightLoader, _ p: String, channels c: Int, heads: Int, headDim: Int, crossDim: Int,
         groups: Int, linearProjection: Bool, layers: Int) throws {
        channels = c
        inner = heads * headDim
        norm = try l.groupNorm("\(p).norm", channels: c, groups: groups, eps: 1e-6)
        let inShape = linearProjection ? [inner, c] : [inner, c, 1, 1]
        let outShape = linearProjection ? [c, inner] : [c, inner, 1, 1]
        projInWeight = try l.load("\(p).proj_in.weight", inShape)
        projInBias = try l.load("\(p).proj_in.bias", [inner])
        projOutWeight = try l.load("\(p).proj_out.weight", outShape)
        projOutBias = try l.load("\(p).proj_out.bias", [c])
        blocks = try (0..<layers).map {
            try BasicTransformerBlock(l, "\(p).transformer_blocks.\($0)", dim: heads * headDim, heads: heads,
                                      headDim: headDim, crossDim: crossDim)
        }
    }

    func callAsFunction(_ x: Tensor, encoder: Tensor, flops: FlopCounter?) -> Tensor {
        let (b, c, hw) = (x.shape[0], x.shape[1], x.shape[2] * x.shape[3])
        let normed = norm(x)
        // tokens[b] (HW × inner) = normed[b]ᵀ (HW × C) · W_inᵀ (C × inner) + bias
        var tokens = [Float](repeating: 0, count: b * hw * inner)
        tokens.withUnsafeMutableBufferPointer { tp in
            for r in 0..<(b * hw) { (tp.baseAddress! + r * inner).update(from: projInBias, count: inner) }
            normed.data.withUnsafeBufferPointer { np in
                projInWeight.withUnsafeBufferPointer { wp in
                    for bi in 0..<b {
                        BLAS.gemm(transA: true, transB: true, m: hw, n: inner, k: c,
                                  a: np.baseAddress! + bi * c * hw, lda: hw, b: wp.baseAddress!, ldb: c,
                                  beta: 1, c: tp.baseAddress! + bi * hw * inner, ldc: inner)
                    }
                }
            }
        }
        var t = Tensor(shape: [b, hw, inner], data: tokens)
        for block in blocks { block(&t, encoder: encoder, flops: flops) }
        // out[b] (C × HW) = x[b] + bias + W_out (C × inner) · tokens[b]ᵀ (inner × HW)
        var out = x.data
        out.withUnsafeMutableBufferPointer { op in
            for bi in 0..<b {
                for ch in 0..<c {
                    let bv = projOutBias[ch]
                    let row = op.baseAddress! + (bi * c + ch) * hw
                    for i in 0..<hw { row[i] += bv }
                }
            }
            t.data.withUnsafeBufferPointer { tp in
                projOutWeight.withUnsafeBufferPointer { wp in
                    for bi in 0..<b {
                        BLAS.gemm(transB: true, m: c, n: hw, k: inner, a: wp.baseAddress!, lda: inner,
                                  b: tp.baseAddress! + bi * hw * inner, ldb: inner, beta: 1,
                                  c: op.baseAddress! + bi * c * hw, ldc: hw)
                    }
                }
            }
        }
        flops?.add(2 * b * hw * c * inner)
        return Tensor(shape: x.shape, data: out)
    }
}

/// Downsample2D with a conv: 3×3 stride 2, padding `downsample_padding` (0 means diffusers' pad of
/// one row/column at the bottom/right first).
struct Downsample2D {
    let conv: Conv2DLayer

    init(_ l: WeightLoader, _ p: String, channels c: Int, padding: Int) throws {
        let pad = padding == 0 ? Conv2D.Padding(top: 0, bottom: 1, left: 0, right: 1) : .same(padding)
        conv = try l.conv("\(p).conv", in: c, out: c, kernel: 3, stride: 2, padding: pad)
    }

    func callAsFunction(_ x: Tensor, flops: FlopCounter?) -> Tensor {
        let y = conv(x)
        flops?.add(y.shape[0] * conv.macs(outPixels: y.shape[2] * y.shape[3]))
        return y
    }
}

/// Upsample2D with a conv: nearest 2× (or to an explicit size, diffusers' upsample_size), then 3×3.
struct Upsample2D {
    let conv: Conv2DLayer

    init(_ l: WeightLoader, _ p: String, channels c: Int) throws {
        conv = try l.conv("\(p).conv", in: c, out: c, kernel: 3, padding: .same(1))
    }

    func callAsFunction(_ x: Tensor, size: (Int, Int)?, flops: FlopCounter?) -> Tensor {
        let (h, w) = size ?? (2 * x.shape[2], 2 * x.shape[3])
        let up = Conv2D.upsampleNearest(x, height: h, width: w)
        let y = conv(up)
        flops?.add(y.shape[0] * conv.macs(outPixels: h * w))
        return y
    }
}
