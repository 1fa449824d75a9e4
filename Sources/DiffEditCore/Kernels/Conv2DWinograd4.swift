import CKernels

/// 3×3 stride-1 convolution by Winograd's minimal filtering F(4×4, 3×3) (Lavin & Gray 2015): each
/// 4×4 output tile is Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A over a 6×6 input tile d, so the channel sums
/// become 36 GEMMs M_ξ[O][tiles] = U_ξ[O][C] · V_ξ[C][tiles]: 36 multiplies per 16 outputs
/// (2.25 per output) against 4 for F(2×2, 3×3) and 9 for the direct or shifted forms.
///
/// Interpolation points 0, 1, −1, ½, −2 and ∞ rather than Lavin's 0, ±1, ±2, ∞: on random SD-shaped
/// data (320–1280 channels, f16 weights, transforms and products in f32) the worst error against
/// a float64 direct convolution, relative to the largest output, is 4.9e-6 / 8.0e-6 / 1.2e-5 at
/// 320 / 640 / 1280 channels against 1.4e-5 / 2.2e-5 / 2.7e-5 with ±2 (the points Barabasz et al.
/// 2020, "Error analysis and improving the accuracy of Winograd convolution for DNNs", found
/// best for 6 points); F(2×2) is 0.7e-6 – 1.5e-6 there, im2col 4e-7. Every entry of Bᵀ and Aᵀ is
/// a small multiple of a power of two (exact); only G has thirds and fifteenths, rounded once.
/// Measured in Swift (`unet-bench --conv`, f32 weights ~ N(0, 1/(3C)), inputs ~ N(0, 1), against
/// a float64 direct convolution of the same numbers), the worst error relative to the largest
/// output is 3.0e-6 – 5.3e-6 on SD's shapes (320 → 320 at 64², 640 → 640 and 1920 → 640 at 32²,
/// 1280 → 1280 and 2560 → 1280 at 16², 512 → 512 at 128², 128 → 128 at 512²), against
/// 4.3e-7 – 6.9e-7 for F(2×2) and 3.4e-7 – 4.9e-7 for the unfolded products.
///
///     Bᵀ = [ 1 −3/2  −2  3/2  1  0 ]     G = [    1      0     0  ]     Aᵀ = [ 1  1  1   1    1  0 ]
///          [ 0  −1  1/2  5/2  1  0 ]         [  1/3    1/3   1/3 ]          [ 0  1 −1  1/2  −2  0 ]
///          [ 0   1 −5/2  1/2  1  0 ]         [ −1/3    1/3  −1/3 ]          [ 0  1  1  1/4   4  0 ]
///          [ 0  −2   −1    2  1  0 ]         [−16/15 −8/15 −4/15 ]          [ 0  1 −1  1/8  −8  1 ]
///          [ 0  1/2  −1 −1/2  1  0 ]         [ 1/15  −2/15  4/15 ]
///          [ 0   1 −3/2   −2 3/2 1 ]         [    0      0     1  ]
///
/// The transforms run on 8 lanes at once: U over 8 input channels (contiguous in U), V and the
/// output over 8 tiles (contiguous in V and M). U is not kept between calls (it is 4× the
/// weights): it is rebuilt per call into workspace scratch, in blocks of output channels of at
/// most the policy's `winogradWeightBudget` floats.
public extension Conv2D {
    typealias Lanes = SIMD8<Float>

    /// Whether F(4×4, 3×3) pays (asked when the policy's `useWinograd` and `winogradTile` = 4
    /// allow it): at least `winograd4MinTiles` output tiles and `winograd4MinInChannels` input
    /// channels. Measured per call on this AVX2 AMD EPYC, 2 threads, quiet machine
    /// (`unet-bench --conv C O H W --batch N`), F(4×4) against the best other method:
    /// - tiles (n·⌈oh/4⌉·⌈ow/4⌉): at 32 it loses, 16×16 batch 2: 1280 → 1280 106 ms against 87 ms
    ///   (small), 640 → 640 26.6 against 26.1 ms, 1920 → 640 82 against 72 ms (F(2×2)); 8×8 batch
    ///   8: 1280 → 1280 99 against 88 ms. At 64 it wins, 16×16 batch 4: 1280 → 1280 128 against
    ///   143 ms (F(2×2)) and 215 ms (small), 640 → 640 32 against 45 / 55 ms; 32×32 batch 1:
    ///   640 → 640 33 against 44 / 55 ms, 320 → 320 11 against 16 / 21 ms. Few tiles make the 36
    ///   products skinny while U (36·O·C floats) is still rebuilt whole.
    /// - input channels: 4 → 320 at 64² batch 2 (the UNet's conv_in) 11.1 ms against 3.3 ms
    ///   (bands), 4 → 512 (the VAE's) 8.9 against 2.9 ms, 16 → 16 at 256² 9.0 against 6.2 ms,
    ///   16 → 128 at 128² 14.1 against 12.0 ms: the transforms cost ∝ C + O per tile and the
    ///   products saved ∝ C·O. 24 → 24 at 256² 12.4 against 27.5 ms, 32 → 128 at 128² 13.9
    ///   against 17.0 ms. Few output channels are no loss: 320 → 4 at 64² batch 2 (conv_out)
    ///   10.4 against 12.5 ms, 128 → 3 at 512² 0.12 against 0.22 s, 128 → 16 19 against 22 ms.
    /// - elsewhere in SD it is the fastest: the UNet at batch 2, 320 → 320 at 64² 47 ms against
    ///   72 ms (F(2×2)) and 122 ms (bands), 640 → 640 at 32² 61 against 72 / 89 ms, 1920 → 640
    ///   at 32² 121 against 171 / 268 ms; the VAE decoder, 128 → 128 at 512² 0.35 against 0.67 s
    ///   (small and F(2×2)), 256 → 128 at 512² 0.58 against 0.92 s (F(2×2)), 256 → 256 at 256²
    ///   0.27 against 0.54 s, 512 → 512 at 128² 0.22 against 0.35 s, at 64² 85 against 145 ms.
    static func prefersWinograd4(_ policy: KernelPolicy, images n: Int, inChannels c: Int, height oh: Int,
                                 width ow: Int) -> Bool {
        c >= policy.winograd4MinInChannels && n * ((oh + 3) / 4) * ((ow + 3) / 4) >= policy.winograd4MinTiles
    }

    /// Bᵀ x for a column x of 6.
    @inline(__always)
    static func inputTransform4(_ d0: Lanes, _ d1: Lanes, _ d2: Lanes, _ d3: Lanes, _ d4: Lanes, _ d5: Lanes)
        -> (Lanes, Lanes, Lanes, Lanes, Lanes, Lanes) {
        let half: Float = 0.5, threeHalves: Float = 1.5, fiveHalves: Float = 2.5
        return (d0 - threeHalves * d1 - 2 * d2 + threeHalves * d3 + d4,
                d4 - d1 + half * d2 + fiveHalves * d3,
                d4 + d1 - fiveHalves * d2 + half * d3,
                d4 - 2 * d1 - d2 + 2 * d3,
                d4 + half * d1 - d2 - half * d3,
                d5 + d1 - threeHalves * d2 - 2 * d3 + threeHalves * d4)
    }

    /// Aᵀ m for a column m of 6.
    @inline(__always)
    static func outputTransform4(_ m0: Lanes, _ m1: Lanes, _ m2: Lanes, _ m3: Lanes, _ m4: Lanes, _ m5: Lanes)
        -> (Lanes, Lanes, Lanes, Lanes) {
        let s = m1 + m2, t = m1 - m2
        return (m0 + s + m3 + m4,
                t + 0.5 * m3 - 2 * m4,
                s + 0.25 * m3 + 4 * m4,
                t + 0.125 * m3 - 8 * m4 + m5)
    }

    /// A tile's image, tile row and tile column, stepped to the next tile without divisions.
    struct TileCursor {
        var image: Int, row: Int, column: Int
        let rows: Int, columns: Int
        @inline(__always)
        init(_ tile: Int, rows: Int, columns: Int) {
            let perImage = rows * columns, rest = tile % perImage
            image = tile / perImage; row = rest / columns; column = rest % columns
            self.rows = rows; self.columns = columns
        }
        @inline(__always)
        mutating func next() {
            column += 1
            if column == columns {
                column = 0; row += 1
                if row == rows { row = 0; image += 1 }
            }
        }
    }

    /// Stores the first `count` lanes of `v` at `p`.
    @inline(__always)
    static func storeLanes(_ v: Lanes, _ p: UnsafeMutablePointer<Float>, count: Int) {
        if count == 8 {
            UnsafeMutableRawPointer(p).storeBytes(of: v, as: Lanes.self)
        } else {
            for j in 0..<count { p[j] = v[j] }
        }
    }

    /// Lanes of `count` floats at `p` (the rest zero).
    @inline(__always)
    static func loadLanes(_ p: UnsafePointer<Float>, count: Int) -> Lanes {
        if count == 8 { return UnsafeRawPointer(p).loadUnaligned(as: Lanes.self) }
        var v = Lanes()
        for j in 0..<count { v[j] = p[j] }
        return v
    }

    /// G as exact fractions (numerator, denominator), rows ξ.
    private static let g4: [[(Double, Double)]] = [
        [(1, 1), (0, 1), (0, 1)],
        [(1, 3), (1, 3), (1, 3)],
        [(-1, 3), (1, 3), (-1, 3)],
        [(-16, 15), (-8, 15), (-4, 15)],
        [(1, 15), (-2, 15), (4, 15)],
        [(0, 1), (0, 1), (1, 1)],
    ]

    /// G ⊗ G (36×9, row ξ = 6i + j, column 3a + b): U_ξ = Σ G[i][a] g[a][b] G[j][b], each entry
    /// the product rounded once from float64.
    private static let weightTransform4Matrix: [Float] = {
        var t = [Float](repeating: 0, count: 36 * 9)
        for i in 0..<6 {
            for j in 0..<6 {
                for a in 0..<3 {
                    for b in 0..<3 {
                        let (p, q) = (g4[i][a], g4[j][b])
                        t[(i * 6 + j) * 9 + a * 3 + b] = Float(p.0 * q.0 / (p.1 * q.1))
                    }
                }
            }
        }
        return t
    }()

    /// U_ξ[r][c] = (G g Gᵀ)_ξ for output channels `rows` (r counted from rows.lowerBound), ξ-planes
    /// `rows.count · c` apart: one product U[36][rows·C] = (G ⊗ G)[36][9] · Wᵀ[9][rows·C] per widened
    /// block of the weight (the transform is a linear map of each 3×3 kernel, and as a product it
    /// streams the weight once at memory speed).
    internal static func transformWeights4(_ ctx: ComputeContext, weight: WeightMatrix, c: Int, rows: Range<Int>,
                                           into u: UnsafeMutablePointer<Float>) {
        let plane = rows.count * c
        weightTransform4Matrix.withUnsafeBufferPointer { t in
            weight.rowBlocks(ctx, rows: rows, rowLength: 9 * c) { block, data in
                ctx.gemm(transB: true, m: 36, n: block.count * c, k: 9, a: t.baseAddress!, lda: 9, b: data, ldb: 9,
                         c: u + (block.lowerBound - rows.lowerBound) * c, ldc: plane)
            }
        }
    }

    /// At `precision` bf16 (with `KernelPolicy.packsWeightsBF16`): the 36 planes U_ξ (o × c each)
    /// of this model weight, built once by `transformWeights4` in blocks of whole 12-row panels and
    /// packed as the left operand (plane ξ at `units + ξ·planeUnits`), kept with the weight; nil
    /// otherwise. The same f32 U rounded the same way as a per-product build: the same bits.
    internal static func packedWinograd4BF16(_ ctx: ComputeContext, weight: WeightMatrix, o: Int,
                                             c: Int) -> (units: UnsafePointer<UInt32>, planeUnits: Int)? {
        guard ctx.policy.precision == .bf16, ctx.policy.packsWeightsBF16, let packs = weight.packs else { return nil }
        let planeUnits = Int(diffedit_bf16_packed_units(WeightRole.left.rawValue, o, c))
        let units = packs.units(.winograd4, rows: o, columns: c, count: 36 * planeUnits) { units in
            let blockRows = max(12, ctx.policy.winogradWeightBudget / max(1, 36 * c) / 12 * 12)
            ctx.workspace.withScratch(36 * min(o, blockRows) * c) { u in
                var r0 = 0
                while r0 < o {
                    let rows = r0..<min(o, r0 + blockRows), mr = rows.count
                    transformWeights4(ctx, weight: weight, c: c, rows: rows, into: u)
                    ctx.parallelRanges(36, minChunk: 1) { planes in
                        for xi in planes {
                            diffedit_bf16_pack_weight(WeightRole.left.rawValue, u + xi * mr * c, c, o, c, r0,
                                                      rows.upperBound, units + xi * planeUnits)
                        }
                    }
                    r0 = rows.upperBound
                }
            }
        }
        return (units, planeUnits)
    }

    /// V_ξ[c][k] = (Bᵀ d B)_ξ over the 6×6 input tile d of tile t0 + k (zero outside the image),
    /// ξ-planes c·nt apart.
    internal static func transformInput4(_ ctx: ComputeContext, x: UnsafePointer<Float>, c: Int, h: Int, w: Int,
                                         padding: Padding, tileRows th: Int, tileColumns tw: Int,
                                         tiles t0: Int, count nt: Int, into v: UnsafeMutablePointer<Float>) {
        let plane = c * nt
        ctx.parallelRanges(c, minChunk: 4) { range in
            withUnsafeTemporaryAllocation(of: Lanes.self, capacity: 36) { buffer in
                let d = buffer.baseAddress!
                let lanesOf = UnsafeMutableRawPointer(d).assumingMemoryBound(to: Float.self)
                for ci in range {
                    var k0 = 0
                    while k0 < nt {
                        let lanes = min(8, nt - k0)
                        if lanes < 8 { d.update(repeating: Lanes(), count: 36) }
                        // Gather the lanes' tiles: lane j of d[r·6 + q] is row r, column q of tile k0 + j.
                        var tile = TileCursor(t0 + k0, rows: th, columns: tw)
                        for j in 0..<lanes {
                            let y0 = tile.row * 4 - padding.top, x0 = tile.column * 4 - padding.left
                            let src = x + (tile.image * c + ci) * h * w
                            if y0 >= 0 && y0 + 6 <= h && x0 >= 0 && x0 + 6 <= w {
                                for r in 0..<6 {
                                    let row = src + (y0 + r) * w + x0
                                    for q in 0..<6 { lanesOf[(r * 6 + q) * 8 + j] = row[q] }
                                }
                            } else {
                                for r in 0..<6 {
                                    let yy = y0 + r
                                    let inside = yy >= 0 && yy < h
                                    for q in 0..<6 {
                                        let xx = x0 + q
                                        lanesOf[(r * 6 + q) * 8 + j] = inside && xx >= 0 && xx < w ? src[yy * w + xx] : 0
                                    }
                                }
                            }
                            tile.next()
                        }
                        // Bᵀ d by columns in place, then (Bᵀ d) B by rows into V.
                        for q in 0..<6 {
                            let t = inputTransform4(d[q], d[6 + q], d[12 + q], d[18 + q], d[24 + q], d[30 + q])
                            d[q] = t.0; d[6 + q] = t.1; d[12 + q] = t.2; d[18 + q] = t.3; d[24 + q] = t.4; d[30 + q] = t.5
                        }
                        let dst = v + ci * nt + k0
                        for r in 0..<6 {
                            let t = inputTransform4(d[r * 6], d[r * 6 + 1], d[r * 6 + 2], d[r * 6 + 3], d[r * 6 + 4], d[r * 6 + 5])
                            storeLanes(t.0, dst + (r * 6 + 0) * plane, count: lanes)
                            storeLanes(t.1, dst + (r * 6 + 1) * plane, count: lanes)
                            storeLanes(t.2, dst + (r * 6 + 2) * plane, count: lanes)
                            storeLanes(t.3, dst + (r * 6 + 3) * plane, count: lanes)
                            storeLanes(t.4, dst + (r * 6 + 4) * plane, count: lanes)
                            storeLanes(t.5, dst + (r * 6 + 5) * plane, count: lanes)
                        }
                        k0 += lanes
                    }
                }
            }
        }
    }

    /// Y = Aᵀ M A per tile t0 + k and output channel rows.lower + r, plus the bias, written where
    /// inside the output; M's ξ-planes are rows.count · nt apart.
    internal static func transformOutput4(_ ctx: ComputeContext, m: UnsafePointer<Float>, o: Int, rows: Range<Int>,
                                          oh: Int, ow: Int, tileRows th: Int, tileColumns tw: Int, tiles t0: Int,
                                          count nt: Int, bias: UnsafePointer<Float>?, out: UnsafeMutablePointer<Float>) {
        let plane = rows.count * nt
        ctx.parallelRanges(rows.count, minChunk: 4) { range in
            withUnsafeTemporaryAllocation(of: Lanes.self, capacity: 24 + 16) { buffer in
                let t = buffer.baseAddress!, y = t + 24
                let yLanes = UnsafeMutableRawPointer(y).assumingMemoryBound(to: Float.self)
                for r in range {
                    let oi = rows.lowerBound + r
                    let bv = Lanes(repeating: bias?[oi] ?? 0)
                    var k0 = 0
                    while k0 < nt {
                        let lanes = min(8, nt - k0)
                        let src = m + r * nt + k0
                        // t = Aᵀ M (4×6) by columns of M, then Y = t A by rows of t.
                        for q in 0..<6 {
                            func at(_ i: Int) -> Lanes { loadLanes(src + (i * 6 + q) * plane, count: lanes) }
                            let v = outputTransform4(at(0), at(1), at(2), at(3), at(4), at(5))
                            t[q] = v.0; t[6 + q] = v.1; t[12 + q] = v.2; t[18 + q] = v.3
                        }
                        for i in 0..<4 {
                            let v = outputTransform4(t[i * 6], t[i * 6 + 1], t[i * 6 + 2], t[i * 6 + 3], t[i * 6 + 4], t[i * 6 + 5])
                            y[i * 4] = v.0 + bv; y[i * 4 + 1] = v.1 + bv; y[i * 4 + 2] = v.2 + bv; y[i * 4 + 3] = v.3 + bv
                        }
                        // Lane j of y[i·4 + q] is row i, column q of tile k0 + j.
                        var tile = TileCursor(t0 + k0, rows: th, columns: tw)
                        for j in 0..<lanes {
                            let oy = tile.row * 4, ox = tile.column * 4
                            let dst = out + ((tile.image * o + oi) * oh + oy) * ow + ox
                            if oy + 4 <= oh && ox + 4 <= ow {
                                for i in 0..<4 {
                                    for q in 0..<4 { dst[i * ow + q] = yLanes[(i * 4 + q) * 8 + j] }
                                }
                            } else {
                                for i in 0..<min(4, oh - oy) {
                                    for q in 0..<min(4, ow - ox) { dst[i * ow + q] = yLanes[(i * 4 + q) * 8 + j] }
                                }
                            }
                            tile.next()
                        }
                        k0 += lanes
                    }
                }
            }
        }
    }

    /// x: [n, c, h, w]; weight [O, C, 3, 3] (torch layout); writes [n, o, oh, ow] by F(4×4, 3×3).
    /// U is built for blocks of output channels of at most `winogradWeightBudget` floats; tiles
    /// are transformed in groups of the policy's `winogradBudget` floats (36·(C + block)·tiles).
    /// The input's transform is done once when all tiles fit in one group, else once per block.
    internal static func forwardWinograd4(_ ctx: ComputeContext, x: UnsafePointer<Float>, n: Int, c: Int, h: Int, w: Int,
                                          weight: WeightMatrix, bias: UnsafePointer<Float>?,
                                          outChannels o: Int, padding: Padding, out: UnsafeMutablePointer<Float>) {
        let (oh, ow) = outputSize(h: h, w: w, kernel: (3, 3), stride: 1, padding: padding)
        precondition(oh > 0 && ow > 0, "conv: \(h)x\(w) input is smaller than the 3x3 kernel")
        let th = (oh + 3) / 4, tw = (ow + 3) / 4
        let tilesPerImage = th * tw, tiles = n * tilesPerImage
        let policy = ctx.policy
        // At bf16 the planes are packed once for all output channels (no U per product).
        let packedU = packedWinograd4BF16(ctx, weight: weight, o: o, c: c)
        let blockRows = packedU != nil ? o : max(1, min(o, policy.winogradWeightBudget / max(1, 36 * c)))
        let group = max(1, min(tiles, policy.winogradBudget / max(1, 36 * (c + blockRows))))
        let inputOnce = group == tiles
        let ws = ctx.workspace
        ws.withScratch(packedU != nil ? 16 : 36 * blockRows * c) { u in
            ws.withScratch(36 * c * group) { v in
                ws.withScratch(36 * blockRows * group) { m in
                    if inputOnce {
                        transformInput4(ctx, x: x, c: c, h: h, w: w, padding: padding, tileRows: th,
                                        tileColumns: tw, tiles: 0, count: tiles, into: v)
                    }
                    var r0 = 0
                    while r0 < o {
                        let rows = r0..<min(o, r0 + blockRows)
                        if packedU == nil { transformWeights4(ctx, weight: weight, c: c, rows: rows, into: u) }
                        var t0 = 0
                        while t0 < tiles {
                            let nt = min(group, tiles - t0)
                            if !inputOnce {
                                transformInput4(ctx, x: x, c: c, h: h, w: w, padding: padding, tileRows: th,
                                                tileColumns: tw, tiles: t0, count: nt, into: v)
                            }
                            let mr = rows.count
                            for xi in 0..<36 {
                                let plane = packedU.map { WeightBlock(values: nil, ld: c, packed: $0.units + xi * $0.planeUnits) }
                                    ?? WeightBlock(values: u + xi * mr * c, ld: c, packed: nil)
                                ctx.gemm(m: mr, n: nt, k: c, weight: plane, b: v + xi * c * nt, ldb: nt,
                                         c: m + xi * mr * nt, ldc: nt)
                            }
                            transformOutput4(ctx, m: m, o: o, rows: rows, oh: oh, ow: ow, tileRows: th,
                                             tileColumns: tw, tiles: t0, count: nt, bias: bias, out: out)
                            t0 += nt
                        }
                        r0 = rows.upperBound
                    }
                }
            }
        }
    }
}
