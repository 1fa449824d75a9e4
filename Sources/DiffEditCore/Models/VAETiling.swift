/// diffusers' AutoencoderKL tiling (enable_tiling): an image larger than `sampleSize` pixels (or
/// latents larger than `sampleSize / f`) is encoded (decoded) tile by tile, tiles overlapping by
/// tile_overlap_factor 0.25, each tile blended linearly into its upper and left neighbours
/// (blend_v, blend_h) and cut to the stride (row_limit), as _tiled_encode / tiled_decode do.
/// The encoder or decoder only ever sees one tile, so its activations stay those of one tile
/// whatever the image size; only the input and output tensors grow with the image.
///
/// The result differs from the untiled one (each tile's GroupNorm sees only that tile), exactly
/// as diffusers' does: seams and colour shifts between tiles. Beyond diffusers, `Norm.shared`
/// normalises every tile with the same statistics (the "fast" mode of the Tiled VAE extension,
/// pkuliyi2015/multidiffusion-upscaler-for-automatic1111): each GroupNorm's per-(image, group)
/// mean and variance are recorded once on a copy of the whole input scaled down to one tile, and
/// every tile is normalised with them. Memory stays that of one tile.
public struct VAETiling: Equatable {
    /// tile_sample_min_size: the tile's side in pixels.
    public let sampleSize: Int
    /// tile_latent_min_size: the tile's side in latents (sampleSize / f).
    public let latentSize: Int
    /// Where each tile's GroupNorms take their statistics from.
    public let norm: Norm
    /// diffusers' tile_overlap_factor.
    public static let overlapFactor = 0.25

    /// `--tile-size PX`: the tile's side in pixels; it must also be a multiple of 4·f (32 for
    /// Stable Diffusion's VAE), checked once the VAE is known.
    public static let sizeOption = NumberOption<Int>("--tile-size", .from(32, to: 8192))

    /// `--tile-norm tile|shared`.
    public enum Norm: String, CaseIterable, Sendable {
        /// diffusers': each tile's GroupNorms normalise with that tile's own statistics.
        case tile
        /// Every tile's GroupNorms normalise with statistics recorded once on the whole input
        /// scaled down to one tile.
        case shared
    }

    /// The tools' `--tile` / `--tile-size PX` / `--tile-norm`: nil when neither of the first two
    /// is given (no tiling); `--tile` alone takes diffusers' default tile, the VAE config's
    /// sample_size. `--tile-norm` (nil when not given) qualifies tiling: refused without it.
    public static func option(tile: Bool, size: Int?, norm: Norm? = nil, vae: AutoencoderKL) throws -> VAETiling? {
        let config = vae.config
        if let size { return try VAETiling(sampleSize: size, config: config, norm: norm ?? .tile) }
        guard tile else {
            if let norm {
                throw ToolError("--tile-norm \(norm.rawValue) applies to tiled runs only — add --tile (or --tile-size PX), or drop --tile-norm")
            }
            return nil
        }
        guard vae.sampleSize % tileMultiple(config) == 0, vae.sampleSize > 0 else {
            throw ToolError("--tile: this VAE's sample_size \(vae.sampleSize) is not a multiple of \(tileMultiple(config)) — give the tile with --tile-size PX")
        }
        return try VAETiling(sampleSize: vae.sampleSize, config: config, option: "--tile", norm: norm ?? .tile)
    }

    /// The tile sizes diffusers' tiling handles without fractional strides here: multiples of
    /// 4·f (so that the stride, 3/4 of a tile, and the blend, 1/4, are whole latents).
    public static func tileMultiple(_ config: AutoencoderKLConfig) -> Int { 4 * config.downsamplingFactor }

    /// Tiles of `sampleSize` pixels (diffusers' default: the VAE config's sample_size). Refuses a
    /// size that is not a multiple of 4·f.
    public init(sampleSize: Int, config: AutoencoderKLConfig, option: String = "--tile-size", norm: Norm = .tile) throws {
        let m = Self.tileMultiple(config)
        guard sampleSize >= m, sampleSize % m == 0 else {
            let lo = max(m, sampleSize / m * m)
            throw ToolError("\(option) \(sampleSize) is not a multiple of \(m) (4 × this VAE's factor \(config.downsamplingFactor)) — use \(lo)\(lo < sampleSize ? " or \(lo + m)" : "")")
        }
        self.sampleSize = sampleSize
        self.latentSize = sampleSize / config.downsamplingFactor
        self.norm = norm
    }

    /// diffusers' use_tiling check in _encode: width or height above the tile.
    public func tilesImage(width: Int, height: Int) -> Bool { width > sampleSize || height > sampleSize }
    /// diffusers' use_tiling check in _decode: latent width or height above the tile.
    public func tilesLatents(width: Int, height: Int) -> Bool { width > latentSize || height > latentSize }

    /// Moments [N, 2·latent, H/f, W/f] as diffusers' _encode with tiling on (untiled when the image
    /// fits in one tile).
    public func moments(_ image: Tensor, encoder: VAEEncoder) -> Tensor {
        guard tilesImage(width: image.shape[3], height: image.shape[2]) else { return encoder.moments(image) }
        let f = encoder.config.downsamplingFactor
        // _tiled_encode: overlap_size = int(tile_sample_min_size·0.75), blend_extent =
        // int(tile_latent_min_size·0.25), row_limit = tile_latent_min_size − blend_extent.
        let blend = Int(Double(latentSize) * Self.overlapFactor)
        let ctx = encoder.context
        let shared = norm == .shared
            ? Self.recordStatistics(ctx) { _ = encoder.moments(Self.thumbnail(image, side: sampleSize, multiple: f)) } : nil
        return Self.tiled(image, inputTile: sampleSize, stride: Int(Double(sampleSize) * (1 - Self.overlapFactor)),
                          blend: blend, keep: latentSize - blend, outputSize: { $0 / f },
                          run: { tile in Self.normalising(with: shared, ctx) { encoder.moments(tile) } })
    }

    /// `vae.decode(z).sample` with tiling on (untiled when the latents fit in one tile).
    public func decode(_ z: Tensor, decoder: VAEDecoder) -> Tensor {
        guard tilesLatents(width: z.shape[3], height: z.shape[2]) else { return decoder.decode(z) }
        let f = decoder.config.downsamplingFactor
        // tiled_decode: overlap_size = int(tile_latent_min_size·0.75), blend_extent =
        // int(tile_sample_min_size·0.25), row_limit = tile_sample_min_size − blend_extent.
        let blend = Int(Double(sampleSize) * Self.overlapFactor)
        let ctx = decoder.context
        let shared = norm == .shared
            ? Self.recordStatistics(ctx) { _ = decoder.decode(Self.thumbnail(z, side: latentSize, multiple: 1)) } : nil
        return Self.tiled(z, inputTile: latentSize, stride: Int(Double(latentSize) * (1 - Self.overlapFactor)),
                          blend: blend, keep: sampleSize - blend, outputSize: { $0 * f },
                          run: { tile in Self.normalising(with: shared, ctx) { decoder.decode(tile) } })
    }

    // MARK: Shared GroupNorm statistics

    /// Runs `pass` with every GroupNorm recording its input's statistics, and returns them ready
    /// for replay.
    static func recordStatistics(_ ctx: ComputeContext, _ pass: () -> Void) -> GroupNormStatistics {
        let statistics = GroupNormStatistics()
        ctx.groupNormStatistics = statistics
        defer { ctx.groupNormStatistics = nil }
        pass()
        statistics.replay()
        return statistics
    }

    /// Runs `pass` (one forward pass) normalising with `statistics`, or with each input's own when nil.
    static func normalising<R>(with statistics: GroupNormStatistics?, _ ctx: ComputeContext, _ pass: () -> R) -> R {
        guard let statistics else { return pass() }
        statistics.rewind()
        ctx.groupNormStatistics = statistics
        defer { ctx.groupNormStatistics = nil }
        return pass()
    }

    /// The input scaled down to fit one tile of `side` (aspect kept, sides multiples of
    /// `multiple`: f for an image, 1 for latents) by nearest sampling (torch's nearest-exact,
    /// as the Tiled VAE extension does): every value kept is one of the input's, so the
    /// thumbnail keeps the input's distribution of values and its local contrast, which is what
    /// the GroupNorms measure. Averaging (area, bilinear) removes fine texture and shrinks the
    /// variances: on the fixtures' noise image an area-averaged thumbnail made the shared
    /// encode 20× further from the untiled one than per-tile statistics; on demo scenes all
    /// three were within 2 dB of each other (bench/tile_seams.py).
    static func thumbnail(_ x: Tensor, side: Int, multiple: Int) -> Tensor {
        let (h, w) = (x.shape[2], x.shape[3])
        let scale = Double(side) / Double(max(h, w))
        guard scale < 1 else { return x }
        let fit = { (n: Int) in max(multiple, Int((Double(n) * scale).rounded()) / multiple * multiple) }
        return nearestExact(x, height: fit(h), width: fit(w))
    }

    /// torch's F.interpolate(mode="nearest-exact"): output d takes source ⌊(d + ½)·in/out⌋.
    static func nearestExact(_ x: Tensor, height oh: Int, width ow: Int) -> Tensor {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let source = { (d: Int, outSize: Int, inSize: Int) in min(inSize - 1, Int((Double(d) + 0.5) * Double(inSize) / Double(outSize))) }
        let xs = (0..<ow).map { source($0, ow, w) }
        var out = [Float](repeating: 0, count: n * c * oh * ow)
        x.data.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for p in 0..<(n * c) {
                    for oy in 0..<oh {
                        let s = src.baseAddress! + (p * h + source(oy, oh, h)) * w, d = dst.baseAddress! + (p * oh + oy) * ow
                        for (ox, sx) in xs.enumerated() { d[ox] = s[sx] }
                    }
                }
            }
        }
        return Tensor(shape: [n, c, oh, ow], data: out)
    }

    /// The tiling loop shared by encode and decode. Tiles start every `stride` input positions and
    /// are `inputTile` wide (less at the right and bottom edges); `run` maps a tile to its output
    /// (`outputSize` of its side). Each output tile is blended with the already blended tile above
    /// (blend_v) and then the one to its left (blend_h) — diffusers blends in place, so the
    /// neighbours are their blended selves — and its top-left `keep`×`keep` is written out.
    /// Only the previous row of tiles is held, not all of them as diffusers does.
    static func tiled(_ input: Tensor, inputTile: Int, stride: Int, blend: Int, keep: Int,
                      outputSize: (Int) -> Int, run: (Tensor) -> Tensor) -> Tensor {
        let (h, w) = (input.shape[2], input.shape[3])
        let starts = { (n: Int) in Array(Swift.stride(from: 0, to: n, by: stride)) }
        let (rows, cols) = (starts(h), starts(w))
        // Output sides: the sum of the kept parts of one row (column) of tiles.
        let outH = rows.reduce(0) { $0 + min(keep, outputSize(min(inputTile, h - $1))) }
        let outW = cols.reduce(0) { $0 + min(keep, outputSize(min(inputTile, w - $1))) }
        var output: Tensor?
        var above: [Tensor] = []
        var y0 = 0
        for i in rows {
            var row: [Tensor] = []
            var x0 = 0
            for (j, jx) in cols.enumerated() {
                var tile = run(crop(input, y: i, x: jx, height: min(inputTile, h - i), width: min(inputTile, w - jx)))
                if output == nil { output = Tensor(zeros: [tile.shape[0], tile.shape[1], outH, outW]) }
                if !above.isEmpty { blendVertical(above[j], into: &tile, extent: blend) }
                if j > 0 { blendHorizontal(row[j - 1], into: &tile, extent: blend) }
                let (th, tw) = (min(keep, tile.shape[2]), min(keep, tile.shape[3]))
                paste(tile, height: th, width: tw, into: &output!, y: y0, x: x0)
                x0 += tw
                row.append(tile)
            }
            y0 += min(keep, row[0].shape[2])
            above = row
        }
        return output!
    }

    /// x[:, :, y:y+height, x:x+width].
    static func crop(_ t: Tensor, y: Int, x: Int, height: Int, width: Int) -> Tensor {
        let (n, c, h, w) = (t.shape[0], t.shape[1], t.shape[2], t.shape[3])
        var out = [Float](repeating: 0, count: n * c * height * width)
        t.data.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for p in 0..<(n * c) {
                    for r in 0..<height {
                        let s = src.baseAddress! + (p * h + y + r) * w + x
                        (dst.baseAddress! + (p * height + r) * width).update(from: s, count: width)
                    }
                }
            }
        }
        return Tensor(shape: [n, c, height, width], data: out)
    }

    /// output[:, :, y:y+height, x:x+width] = tile[:, :, :height, :width].
    static func paste(_ tile: Tensor, height: Int, width: Int, into output: inout Tensor, y: Int, x: Int) {
        let (tc, th, tw) = (tile.shape[1], tile.shape[2], tile.shape[3])
        let (oh, ow) = (output.shape[2], output.shape[3])
        tile.data.withUnsafeBufferPointer { src in
            output.data.withUnsafeMutableBufferPointer { dst in
                for p in 0..<(tile.shape[0] * tc) {
                    for r in 0..<height {
                        (dst.baseAddress! + (p * oh + y + r) * ow + x)
                            .update(from: src.baseAddress! + (p * th + r) * tw, count: width)
                    }
                }
            }
        }
    }

    /// diffusers' blend_v: e = min(a.h, b.h, extent); b[:, :, y] = a[:, :, a.h − e + y]·(1 − y/e) +
    /// b[:, :, y]·(y/e) for y < e (the weights are float64 quotients, rounded to float32 by torch).
    static func blendVertical(_ a: Tensor, into b: inout Tensor, extent: Int) {
        let (ah, bh, w) = (a.shape[2], b.shape[2], b.shape[3])
        precondition(a.shape[3] == w)
        let e = min(ah, bh, extent)
        let planes = b.shape[0] * b.shape[1]
        a.data.withUnsafeBufferPointer { ap in
            b.data.withUnsafeMutableBufferPointer { bp in
                for y in 0..<e {
                    let wb = Float(Double(y) / Double(e)), wa = Float(1 - Double(y) / Double(e))
                    for p in 0..<planes {
                        let ar = (p * ah + ah - e + y) * w, br = (p * bh + y) * w
                        for x in 0..<w { bp[br + x] = ap[ar + x] * wa + bp[br + x] * wb }
                    }
                }
            }
        }
    }

    /// diffusers' blend_h: the same along the width.
    static func blendHorizontal(_ a: Tensor, into b: inout Tensor, extent: Int) {
        let (aw, bw, h) = (a.shape[3], b.shape[3], b.shape[2])
        precondition(a.shape[2] == h)
        let e = min(aw, bw, extent)
        let planes = b.shape[0] * b.shape[1]
        var wa = [Float](repeating: 0, count: e), wb = [Float](repeating: 0, count: e)
        for x in 0..<e { wb[x] = Float(Double(x) / Double(e)); wa[x] = Float(1 - Double(x) / Double(e)) }
        a.data.withUnsafeBufferPointer { ap in
            b.data.withUnsafeMutableBufferPointer { bp in
                for r in 0..<(planes * h) {
                    let ar = r * aw + aw - e, br = r * bw
                    for x in 0..<e { bp[br + x] = ap[ar + x] * wa[x] + bp[br + x] * wb[x] }
                }
            }
        }
    }
}
