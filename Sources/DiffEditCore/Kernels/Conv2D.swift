import CKernels

/// 2-D convolution over NCHW, as torch.nn.Conv2d with groups=1. Every method reads the weight
/// in torch's own layout [O][C·kh·kw] (so it can stay in the checkpoint's memory map) and
/// multiplies it by patches unfolded in the same order, cols[(c·kh + ky)·kw + kx][pixel]:
/// - `im2col`: bands of output rows unfolded and multiplied one GEMM per band (large images,
///   strided convolutions; a 1×1 convolution multiplies its input directly);
/// - `small`: whole small images unfolded together, one GEMM per group (the UNet's 32×32 and
///   smaller levels, whose per-image products are skinny);
/// - `winograd4` (Conv2DWinograd4.swift): F(4×4, 3×3) for 3×3 convolutions of enough tiles;
/// - `winograd` (Conv2DWinograd.swift): F(2×2, 3×3) for large 3×3 convolutions with many channels
///   (with `KernelPolicy.winogradTile` = 2).
public enum Conv2D {
    public struct Padding: Equatable, Sendable {
        public var top, bottom, left, right: Int
        public init(top: Int, bottom: Int, left: Int, right: Int) {
            self.top = top; self.bottom = bottom; self.left = left; self.right = right
        }
        public static func same(_ p: Int) -> Padding { Padding(top: p, bottom: p, left: p, right: p) }
    }

    /// x: [n, c, h, w] → [n, o, oh, ow] by the method the context's policy picks for the size:
    /// 3×3 stride-1 convolutions take F(4×4, 3×3) where it pays (`prefersWinograd4`: 64 tiles and
    /// 24 input channels, so in SD every 3×3 convolution of the UNet at 32×32 and above at batch
    /// ≥ 1, at 16×16 from batch 4, but conv_in; and the VAE decoder's but conv_in); the others
    /// with a spatial kernel, strided ones too, take whole small images (`smallImagePixels`: the
    /// downsampler to 4×4 at a 32² latent read its weight twice, per image, as bands), F(2×2, 3×3)
    /// when the policy asks for it and it pays, else bands; 1×1 ones a product per image.
    static func forward(_ ctx: ComputeContext, x: UnsafePointer<Float>, n: Int, c: Int, h: Int, w: Int,
                        weight: WeightMatrix, bias: UnsafePointer<Float>?, outChannels o: Int, kernel: Int,
                        stride: Int, padding: Padding, out: UnsafeMutablePointer<Float>) {
        let policy = ctx.policy
        let (oh, ow) = outputSize(h: h, w: w, kernel: (kernel, kernel), stride: stride, padding: padding)
        let spatial = stride == 1 && kernel > 1
        if spatial && kernel == 3 && policy.useWinograd && policy.winogradTile == 4
            && prefersWinograd4(policy, images: n, inChannels: c, height: oh, width: ow) {
            ctx.measure("conv winograd4 \(h)x\(w) \(c)->\(o)") {
                forwardWinograd4(ctx, x: x, n: n, c: c, h: h, w: w, weight: weight, bias: bias, outChannels: o,
                                 padding: padding, out: out)
            }
        } else if kernel > 1 && oh * ow <= policy.smallImagePixels {
            ctx.measure("conv small \(stride > 1 ? "\(kernel)x\(kernel)/\(stride) " : "")\(h)x\(w) \(c)->\(o)") {
                forwardSmall(ctx, x: x, n: n, c: c, h: h, w: w, weight: weight, bias: bias, outChannels: o,
                             kernel: (kernel, kernel), stride: stride, padding: padding, out: out)
            }
        } else if spatial && kernel == 3 && policy.useWinograd && prefersWinograd(inChannels: c, outChannels: o) {
            ctx.measure("conv winograd \(h)x\(w) \(c)->\(o)") {
                forwardWinograd(ctx, x: x, n: n, c: c, h: h, w: w, weight: weight, bias: bias, outChannels: o,
                                padding: padding, out: out)
            }
        } else {
            ctx.measure(spatial ? "conv bands \(h)x\(w) \(c)->\(o)"
                        : kernel == 1 && stride == 1 ? "conv 1x1 \(h)x\(w) \(c)->\(o)"
                        : "conv im2col \(kernel)x\(kernel)/\(stride) \(h)x\(w) \(c)->\(o)") {
                forwardIm2col(ctx, x: x, n: n, c: c, h: h, w: w, weight: weight, bias: bias, outChannels: o,
                              kernel: (kernel, kernel), stride: stride, padding: padding, out: out)
            }
        }
    }

    /// Output size of a convolution.
    static func outputSize(h: Int, w: Int, kernel: (Int, Int), stride: Int, padding: Padding) -> (Int, Int) {
        ((h + padding.top + padding.bottom - kernel.0) / stride + 1, (w + padding.left + padding.right - kernel.1) / stride + 1)
    }

    /// Unfolds output rows `rows` of `images` consecutive images [c, h, w] on all workers:
    /// cols[k·ld + i·rows.count·ow + (oy − rows.lower)·ow + ox] = x[i][ci][oy·s + ky − pt][ox·s + kx − pl]
    /// for k = (ci·kh + ky)·kw + kx (the order of torch's weight), zero outside the image.
    static func unfold(_ ctx: ComputeContext, x: UnsafePointer<Float>, images: Int, c: Int, h: Int, w: Int,
                       kernel: (Int, Int), stride: Int, padding: Padding, rows: Range<Int>, ow: Int,
                       into cols: UnsafeMutablePointer<Float>, ld: Int) {
        let (kh, kw) = kernel, taps = kh * kw, band = rows.count * ow
        ctx.parallelRanges(c * taps, minChunk: 16) { part in
            for k in part {
                let ci = k / taps, ky = (k % taps) / kw, kx = k % kw
                // Output columns whose input column ox·s + kx − pl lies inside [0, w).
                let shift = kx - padding.left
                let oxFirst = shift >= 0 ? 0 : (-shift + stride - 1) / stride
                let oxEnd = min(ow, w - shift <= 0 ? 0 : (w - 1 - shift) / stride + 1)
                for i in 0..<images {
                    let plane = x + (i * c + ci) * h * w
                    let d0 = cols + k * ld + i * band
                    for oy in rows {
                        let iy = oy * stride + ky - padding.top
                        let d = d0 + (oy - rows.lowerBound) * ow
                        if iy < 0 || iy >= h || oxFirst >= oxEnd {
                            d.update(repeating: 0, count: ow)
                            continue
                        }
                        let srow = plane + iy * w + shift
                        if oxFirst > 0 { d.update(repeating: 0, count: oxFirst) }
                        if stride == 1 {
                            (d + oxFirst).update(from: srow + oxFirst, count: oxEnd - oxFirst)
                        } else {
                            for ox in oxFirst..<oxEnd { d[ox] = srow[ox * stride] }
                        }
                        if oxEnd < ow { (d + oxEnd).update(repeating: 0, count: ow - oxEnd) }
                    }
                }
            }
        }
    }

    /// x: [n, c, h, w] at `x`; weight [outC, c, kh, kw] (torch layout), bias [outC];
    /// writes [n, outC, oh, ow] to `out`, one GEMM Y[O][band] = W[O][C·kh·kw] · cols per band of
    /// output rows (bands of the policy's `columnBudget` floats), written straight into the
    /// output onto the bias (a band of an output plane is contiguous).
    static func forwardIm2col(_ ctx: ComputeContext, x: UnsafePointer<Float>, n: Int, c: Int, h: Int, w: Int,
                              weight: WeightMatrix, bias: UnsafePointer<Float>?, outChannels o: Int,
                              kernel: (Int, Int), stride: Int, padding: Padding, out: UnsafeMutablePointer<Float>) {
        let (kh, kw) = kernel
        let (oh, ow) = outputSize(h: h, w: w, kernel: kernel, stride: stride, padding: padding)
        precondition(oh > 0 && ow > 0, "conv: \(h)x\(w) input is smaller than the \(kh)x\(kw) kernel")
        let pixels = oh * ow, k = c * kh * kw
        if kh == 1 && kw == 1 && stride == 1 && padding == .same(0) {
            // Y[b] = W · X[b]: each weight block widened once for every image.
            weight.accumulate(ctx, rows: o, columns: k, into: out,
                              onto: .biasPlanes(bias, planes: n * o, width: pixels, ld: pixels), as: .left) { kr, wk, beta in
                for b in 0..<n {
                    ctx.gemm(m: o, n: pixels, k: kr.count, weight: wk, b: x + b * c * h * w + kr.lowerBound * pixels,
                             ldb: pixels, beta: beta, c: out + b * o * pixels, ldc: pixels)
                }
            }
            return
        }
        let band = max(1, min(oh, ctx.policy.columnBudget / max(1, k * ow)))
        ctx.workspace.withScratch(k * band * ow) { cols in
            for b in 0..<n {
                var y0 = 0
                while y0 < oh {
                    let rows = min(band, oh - y0), columns = rows * ow
                    unfold(ctx, x: x + b * c * h * w, images: 1, c: c, h: h, w: w, kernel: kernel, stride: stride,
                           padding: padding, rows: y0..<(y0 + rows), ow: ow, into: cols, ld: columns)
                    // This band's rows of every output plane of image b.
                    let y = out + b * o * pixels + y0 * ow
                    weight.accumulate(ctx, rows: o, columns: k, into: y,
                                      onto: .biasPlanes(bias, planes: o, width: columns, ld: pixels), as: .left) { kr, wk, beta in
                        ctx.gemm(m: o, n: columns, k: kr.count, weight: wk, b: cols + kr.lowerBound * columns,
                                 ldb: columns, beta: beta, c: y, ldc: pixels)
                    }
                    y0 += rows
                }
            }
        }
    }

    /// Convolution of small images as one GEMM per group of whole images (groups of the
    /// policy's `smallColumnBudget` floats unfolded): cols holds the group's unfolded images side
    /// by side, Y[O][g·oh·ow] = W[O][C·kh·kw] · cols, then Y's columns are scattered to
    /// [n][O][oh·ow] with the bias.
    internal static func forwardSmall(_ ctx: ComputeContext, x: UnsafePointer<Float>, n: Int, c: Int, h: Int, w: Int,
                                      weight: WeightMatrix, bias: UnsafePointer<Float>?, outChannels o: Int,
                                      kernel: (Int, Int), stride: Int = 1, padding: Padding,
                                      out: UnsafeMutablePointer<Float>) {
        let (oh, ow) = outputSize(h: h, w: w, kernel: kernel, stride: stride, padding: padding)
        let pixels = oh * ow, k = c * kernel.0 * kernel.1
        let group = max(1, min(n, ctx.policy.smallColumnBudget / max(1, k * pixels)))
        let ws = ctx.workspace
        ws.withScratch(o * group * pixels) { y in
            var b0 = 0
            while b0 < n {
                let g = min(group, n - b0), columns = g * pixels
                // The bias comes with the scatter below.
                let xg = x + b0 * c * h * w
                if let packed = weight.packedBF16(ctx, role: .left, rows: o, columns: k),
                   productFromImages(ctx, x: xg, images: g, c: c, h: h, w: w, kernel: kernel, stride: stride,
                                     padding: padding, packedWeight: packed, outChannels: o, into: y) {
                    // bf16, weight packed once: no unfolded copy.
                } else {
                    // The unfolded copy only here (the bf16 form above packs from the images).
                    ws.withScratch(k * group * pixels) { cols in
                        unfold(ctx, x: xg, images: g, c: c, h: h, w: w, kernel: kernel, stride: stride,
                               padding: padding, rows: 0..<oh, ow: ow, into: cols, ld: columns)
                        if weight.streams(ctx, rows: o, columns: columns) {
                            weight.stream(ctx, rows: o, k: k, n: columns, x: cols, xj: 1, xl: columns, into: y,
                                          ci: columns, cj: 1, onto: .empty)
                        } else {
                            weight.accumulate(ctx, rows: o, columns: k, into: y, onto: .empty, as: .left) { kr, wk, beta in
                                ctx.gemm(m: o, n: columns, k: kr.count, weight: wk, b: cols + kr.lowerBound * columns,
                                         ldb: columns, beta: beta, c: y, ldc: columns)
                            }
                        }
                    }
                }
                ctx.parallelRanges(o, minChunk: 16) { range in
                    for oi in range {
                        let bv = bias?[oi] ?? 0
                        for i in 0..<g {
                            let s = y + oi * columns + i * pixels, d = out + ((b0 + i) * o + oi) * pixels
                            for p in 0..<pixels { d[p] = s[p] + bv }
                        }
                    }
                }
                b0 += g
            }
        }
    }

    /// y[O][images·oh·ow] = W · (the images unfolded) at bf16 with the weight packed once: the
    /// unfolded columns packed straight from the images (`diffedit_bf16_pack_im2col`), the values
    /// and bits of unfolding them and packing the copy, without the copy (3 % of a bf16 step at
    /// 32² latents went to unfolding). false when the product's buffers could not be had (the
    /// caller then unfolds).
    private static func productFromImages(_ ctx: ComputeContext, x: UnsafePointer<Float>, images: Int, c: Int, h: Int,
                                          w: Int, kernel: (Int, Int), stride: Int, padding: Padding,
                                          packedWeight: UnsafePointer<UInt32>, outChannels o: Int,
                                          into y: UnsafeMutablePointer<Float>) -> Bool {
        let (oh, ow) = outputSize(h: h, w: w, kernel: kernel, stride: stride, padding: padding)
        let columns = images * oh * ow, k = c * kernel.0 * kernel.1
        let units = Int(diffedit_bf16_packed_units(1, columns, k))
        return ctx.workspace.withScratch(units) { scratch in
            let b = UnsafeMutableRawPointer(scratch).assumingMemoryBound(to: UInt32.self)
            ctx.parallelRanges((columns + 31) / 32, minChunk: 1) { panels in
                diffedit_bf16_pack_im2col(x, images, c, h, w, kernel.0, kernel.1, stride, padding.top, padding.left, oh, ow,
                                          panels.lowerBound * 32, panels.upperBound * 32, b)
            }
            return GEMMBF16.gemm(threads: ctx.threads, transA: false, transB: false, m: o, n: columns, k: k, alpha: 1,
                                 a: nil, lda: k, packedA: packedWeight, b: nil, ldb: columns, packedB: b, beta: 0, c: y,
                                 ldc: columns)
        }
    }

    /// Nearest-neighbour resize of n·c planes to oh × ow (2× in SD's up blocks), as
    /// F.interpolate(mode="nearest"): source index = floor(dst · in/out).
    static func upsampleNearest(_ ctx: ComputeContext, x: UnsafePointer<Float>, planes: Int, h: Int, w: Int,
                                height oh: Int, width ow: Int, out: UnsafeMutablePointer<Float>) {
        let sy = Float(h) / Float(oh), sx = Float(w) / Float(ow)
        ctx.parallelRanges(planes, minChunk: max(1, 4096 / max(1, oh * ow))) { range in
            for p in range {
                let src = x + p * h * w
                let dst = out + p * oh * ow
                for oy in 0..<oh {
                    let s = src + min(Int(Float(oy) * sy), h - 1) * w
                    let d = dst + oy * ow
                    for ox in 0..<ow { d[ox] = s[min(Int(Float(ox) * sx), w - 1)] }
                }
            }
        }
    }
}

// Tensor forms, for callers outside the models and for tests.
extension Conv2D {
    /// The pointer kernel `method(context, x, n, c, h, w, weight, bias, out)` run on Tensors
    /// with `context`: x [N, C, H, W] → [N, outChannels, oh, ow].
    static func onTensors(_ x: Tensor, weight: [Float], bias: [Float]?, outChannels o: Int, kernel: (Int, Int),
                          stride: Int, padding: Padding, context: ComputeContext,
                          _ method: (ComputeContext, UnsafePointer<Float>, Int, Int, Int, Int, WeightMatrix,
                                     UnsafePointer<Float>?, UnsafeMutablePointer<Float>) -> Void) -> Tensor {
        precondition(x.rank == 4)
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        precondition(weight.count == o * c * kernel.0 * kernel.1, "conv weight \(weight.count) != \(o)x\(c)x\(kernel.0)x\(kernel.1)")
        let (oh, ow) = outputSize(h: h, w: w, kernel: kernel, stride: stride, padding: padding)
        precondition(oh > 0 && ow > 0, "conv: \(h)x\(w) input is smaller than the kernel")
        var out = [Float](repeating: 0, count: n * o * oh * ow)
        x.data.withUnsafeBufferPointer { xp in
            weight.withUnsafeBufferPointer { wp in
                out.withUnsafeMutableBufferPointer { op in
                    bias.withUnsafeOptionalPointer { bp in
                        method(context, xp.baseAddress!, n, c, h, w, WeightMatrix(f32: wp.baseAddress!), bp, op.baseAddress!)
                    }
                }
            }
        }
        return Tensor(shape: [n, o, oh, ow], data: out)
    }
}

public extension Conv2D {
    /// Tensor form of `forwardSmall`.
    static func forwardSmall(_ x: Tensor, weight: [Float], bias: [Float]?, outChannels o: Int,
                             kernel: (Int, Int), padding: Padding, context: ComputeContext = ComputeContext()) -> Tensor {
        onTensors(x, weight: weight, bias: bias, outChannels: o, kernel: kernel, stride: 1,
                  padding: padding, context: context) { ctx, x, n, c, h, w, wp, bp, out in
            forwardSmall(ctx, x: x, n: n, c: c, h: h, w: w, weight: wp, bias: bp, outChannels: o, kernel: kernel,
                         padding: padding, out: out)
        }
    }

    /// Tensor form of `forwardIm2col` (bands at every size, whatever the policy would pick).
    /// weight: [outC, inC, kh, kw] (torch layout), bias: [outC].
    static func forward(_ x: Tensor, weight: [Float], bias: [Float]?, outChannels: Int,
                        kernel: (Int, Int), stride: Int = 1, padding: Padding,
                        context: ComputeContext = ComputeContext()) -> Tensor {
        onTensors(x, weight: weight, bias: bias, outChannels: outChannels, kernel: kernel, stride: stride,
                  padding: padding, context: context) { ctx, x, n, c, h, w, wp, bp, out in
            forwardIm2col(ctx, x: x, n: n, c: c, h: h, w: w, weight: wp, bias: bp, outChannels: outChannels, kernel: kernel,
                          stride: stride, padding: padding, out: out)
        }
    }

    static func upsampleNearest(_ x: Tensor, height oh: Int, width ow: Int) -> Tensor {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        var out = [Float](repeating: 0, count: n * c * oh * ow)
        x.data.withUnsafeBufferPointer { xp in
            out.withUnsafeMutableBufferPointer { op in
                upsampleNearest(ComputeContext(), x: xp.baseAddress!, planes: n * c, h: h, w: w, height: oh, width: ow,
                                out: op.baseAddress!)
            }
        }
        return Tensor(shape: [n, c, oh, ow], data: out)
    }
}

extension Optional where Wrapped == [Float] {
    /// The array's base address (nil for nil) for the duration of `body`.
    @inline(__always)
    func withUnsafeOptionalPointer<R>(_ body: (UnsafePointer<Float>?) throws -> R) rethrows -> R {
        guard let a = self else { return try body(nil) }
        return try a.withUnsafeBufferPointer { try body($0.baseAddress) }
    }
}
