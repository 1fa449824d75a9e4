/// 3×3 stride-1 convolution by Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray 2015):
/// each 2×2 output tile is Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A over a 4×4 input tile d, so the channel sums
/// become 16 GEMMs M_ξ[O][tiles] = U_ξ[O][C] · V_ξ[C][tiles] with 16 multiplies per 4 outputs
/// instead of 36: 2.25× fewer FLOPs than the direct or shifted forms. The transforms use only
/// ±1 and ½, so the rounding error stays at a few ulp of the sums (measured against the fixtures
/// and a direct convolution in the tests).
///
///     G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]
///     Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]
///     Aᵀ = [1 1 1 0; 0 1 −1 −1]
public extension Conv2D {
    /// Whether F(2×2, 3×3) pays for these channel counts (asked only when the policy's
    /// `useWinograd` allows it): its transforms cost per tile ∝ C + O against products ∝ C·O, so
    /// it needs a harmonic mean 2·C·O/(C + O) of at least 160 (measured on the SD VAE decoder at
    /// 512²: 128 → 128 channels 0.47 s per conv in bands against 0.56 s by Winograd; 256 → 128
    /// 0.67 s by Winograd against 0.92 s in bands).
    static func prefersWinograd(inChannels c: Int, outChannels o: Int) -> Bool {
        2 * c * o >= 160 * (c + o)
    }

    /// x: [n, c, h, w]; weight [O, C, 3, 3] (torch layout); writes [n, o, oh, ow]. Tiles are
    /// transformed in groups of the policy's `winogradBudget` floats.
    internal static func forwardWinograd(_ ctx: ComputeContext, x: UnsafePointer<Float>, n: Int, c: Int, h: Int, w: Int,
                                         weight: WeightMatrix, bias: UnsafePointer<Float>?,
                                         outChannels o: Int, padding: Padding, out: UnsafeMutablePointer<Float>) {
        let (oh, ow) = outputSize(h: h, w: w, kernel: (3, 3), stride: 1, padding: padding)
        let th = (oh + 1) / 2, tw = (ow + 1) / 2
        let tilesPerImage = th * tw, tiles = n * tilesPerImage
        let group = max(1, min(tiles, ctx.policy.winogradBudget / max(1, 16 * (c + o))))
        let ws = ctx.workspace
        ws.withScratch(16 * o * c) { u in
            // U_ξ[o][c] = (G g Gᵀ)_ξ for every (o, c), from whole rows of the weight.
            weight.rowBlocks(ctx, rows: o, rowLength: 9 * c) { rows, block in
                ctx.parallelRanges(rows.count, minChunk: 8) { range in
                    for r in range {
                        let oi = rows.lowerBound + r
                        for ci in 0..<c {
                            let src = block + (r * c + ci) * 9
                            let g = (src[0], src[1], src[2], src[3], src[4], src[5], src[6], src[7], src[8])
                            // t = G g (4×3), rows of g: (g.0 g.1 g.2), (g.3 g.4 g.5), (g.6 g.7 g.8)
                            let t0 = (g.0, g.1, g.2)
                            let t1 = ((g.0 + g.3 + g.6) * 0.5, (g.1 + g.4 + g.7) * 0.5, (g.2 + g.5 + g.8) * 0.5)
                            let t2 = ((g.0 - g.3 + g.6) * 0.5, (g.1 - g.4 + g.7) * 0.5, (g.2 - g.5 + g.8) * 0.5)
                            let t3 = (g.6, g.7, g.8)
                            let dst = u + oi * c + ci
                            let stride = o * c
                            // U = t Gᵀ, row by row.
                            func store(_ r: Int, _ row: (Float, Float, Float)) {
                                dst[(r * 4 + 0) * stride] = row.0
                                dst[(r * 4 + 1) * stride] = (row.0 + row.1 + row.2) * 0.5
                                dst[(r * 4 + 2) * stride] = (row.0 - row.1 + row.2) * 0.5
                                dst[(r * 4 + 3) * stride] = row.2
                            }
                            store(0, t0)
                            store(1, t1)
                            store(2, t2)
                            store(3, t3)
                        }
                    }
                }
            }
            ws.withScratch(16 * c * group) { v in
                ws.withScratch(16 * o * group) { m in
                    var t0 = 0
                    while t0 < tiles {
                        let nt = min(group, tiles - t0)
                        // V_ξ[c][tile] = (Bᵀ d B)_ξ over the 4×4 input tile (zero outside the image).
                        ctx.parallelRanges(c, minChunk: 4) { range in
                            for ci in range {
                                for k in 0..<nt {
                                    let tile = t0 + k
                                    let img = tile / tilesPerImage, rest = tile % tilesPerImage
                                    let y0 = (rest / tw) * 2 - padding.top, x0 = (rest % tw) * 2 - padding.left
                                    let plane = x + (img * c + ci) * h * w
                                    var dd = (Float(0), Float(0), Float(0), Float(0), Float(0), Float(0), Float(0), Float(0),
                                              Float(0), Float(0), Float(0), Float(0), Float(0), Float(0), Float(0), Float(0))
                                    withUnsafeMutableBytes(of: &dd) { raw in
                                        let p = raw.baseAddress!.assumingMemoryBound(to: Float.self)
                                        for r in 0..<4 {
                                            let yy = y0 + r
                                            if yy < 0 || yy >= h { continue }
                                            let row = plane + yy * w
                                            for q in 0..<4 {
                                                let xx = x0 + q
                                                if xx >= 0 && xx < w { p[r * 4 + q] = row[xx] }
                                            }
                                        }
                                        // Bᵀ d (rows) in place, then V = (Bᵀ d) B (columns).
                                        for q in 0..<4 {
                                            let a0 = p[q], a1 = p[4 + q], a2 = p[8 + q], a3 = p[12 + q]
                                            p[q] = a0 - a2
                                            p[4 + q] = a1 + a2
                                            p[8 + q] = a2 - a1
                                            p[12 + q] = a1 - a3
                                        }
                                        let stride = c * nt
                                        let dst = v + ci * nt + k
                                        for r in 0..<4 {
                                            let a0 = p[r * 4], a1 = p[r * 4 + 1], a2 = p[r * 4 + 2], a3 = p[r * 4 + 3]
                                            dst[(r * 4 + 0) * stride] = a0 - a2
                                            dst[(r * 4 + 1) * stride] = a1 + a2
                                            dst[(r * 4 + 2) * stride] = a2 - a1
                                            dst[(r * 4 + 3) * stride] = a1 - a3
                                        }
                                    }
                                }
                            }
                        }
                        for xi in 0..<16 {
                            ctx.gemm(m: o, n: nt, k: c, a: u + xi * o * c, lda: c, b: v + xi * c * nt, ldb: nt,
                                     c: m + xi * o * nt, ldc: nt)
                        }
                        // Y = Aᵀ M A per tile, plus the bias, written where inside the output.
                        ctx.parallelRanges(o, minChunk: 4) { range in
                            let stride = o * nt
                            for oi in range {
                                let bv = bias?[oi] ?? 0
                                for k in 0..<nt {
                                    let tile = t0 + k
                                    let img = tile / tilesPerImage, rest = tile % tilesPerImage
                                    let y0 = (rest / tw) * 2, x0 = (rest % tw) * 2
                                    let src = m + oi * nt + k
                                    // t = Aᵀ M (2×4)
                                    var r0 = (Float(0), Float(0), Float(0), Float(0)), r1 = r0
                                    for q in 0..<4 {
                                        let a0 = src[q * stride], a1 = src[(4 + q) * stride]
                                        let a2 = src[(8 + q) * stride], a3 = src[(12 + q) * stride]
                                        let top = a0 + a1 + a2, bottom = a1 - a2 - a3
                                        switch q {
                                        case 0: r0.0 = top; r1.0 = bottom
                                        case 1: r0.1 = top; r1.1 = bottom
                                        case 2: r0.2 = top; r1.2 = bottom
                                        default: r0.3 = top; r1.3 = bottom
                                        }
                                    }
                                    let y00 = r0.0 + r0.1 + r0.2 + bv, y01 = r0.1 - r0.2 - r0.3 + bv
                                    let y10 = r1.0 + r1.1 + r1.2 + bv, y11 = r1.1 - r1.2 - r1.3 + bv
                                    let dst = out + (img * o + oi) * oh * ow
                                    dst[y0 * ow + x0] = y00
                                    if x0 + 1 < ow { dst[y0 * ow + x0 + 1] = y01 }
                                    if y0 + 1 < oh {
                                        dst[(y0 + 1) * ow + x0] = y10
                                        if x0 + 1 < ow { dst[(y0 + 1) * ow + x0 + 1] = y11 }
                                    }
                                }
                            }
                        }
                        t0 += nt
                    }
                }
            }
        }
    }
}

public extension Conv2D {
    /// Tensor form of the Winograd convolutions: x [N, C, H, W], weight [O, C, 3, 3]; `tile` 2 for
    /// F(2×2, 3×3) (`forwardWinograd`), 4 for F(4×4, 3×3) (`forwardWinograd4`, Conv2DWinograd4.swift).
    static func forwardWinograd(_ x: Tensor, weight: [Float], bias: [Float]?, outChannels o: Int,
                                padding: Padding, tile: Int = 2, context: ComputeContext = ComputeContext()) -> Tensor {
        precondition(tile == 2 || tile == 4, "Winograd tiles are 2×2 or 4×4")
        return onTensors(x, weight: weight, bias: bias, outChannels: o, kernel: (3, 3), stride: 1,
                         padding: padding, context: context) { ctx, x, n, c, h, w, wp, bp, out in
            if tile == 4 {
                forwardWinograd4(ctx, x: x, n: n, c: c, h: h, w: w, weight: wp, bias: bp, outChannels: o,
                                 padding: padding, out: out)
            } else {
                forwardWinograd(ctx, x: x, n: n, c: c, h: h, w: w, weight: wp, bias: bp, outChannels: o,
                                padding: padding, out: out)
            }
        }
    }
}
