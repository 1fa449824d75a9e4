import Foundation

/// Stride-1 convolution without im2col: with the input zero-padded once into planes of width
/// Wp, the contribution of kernel tap (ky, kx) to every output is one GEMM
///     Y[o, y·Wp + x] += Σ_c W[o, c, ky, kx] · P[c, (y + ky)·Wp + x + kx],
/// whose B operand is just the padded planes shifted by ky·Wp + kx (row stride = plane size).
/// Y is computed on rows of width Wp (the kw − 1 extra columns per row are discarded), so a
/// 3×3 conv is 9 GEMMs with K = C instead of one GEMM over a 9×-larger unfolded copy.
///
/// On small images (the UNet's 8×8 and 4×4 levels) those GEMMs are skinny — N is a few dozen
/// padded columns against 1280 × 1280 weights per tap — and a single GEMM over a tap-major
/// unfolded copy (`forwardSmall`, K = taps·C, N = the images' pixels exactly) is faster. The
/// packed weight [O][taps][C] serves both: tap t is the sub-matrix at t·C with row stride taps·C.
public extension Conv2D {
    /// Rearranges a torch-layout weight [O, C, kh, kw] into [O][kh·kw][C] (tap-major rows).
    static func packShifted(weight: [Float], outChannels o: Int, inChannels c: Int, kernel: (Int, Int)) -> [Float] {
        precondition(weight.count == o * c * kernel.0 * kernel.1)
        var packed = [Float](repeating: 0, count: weight.count)
        weight.withUnsafeBufferPointer { w in
            packed.withUnsafeMutableBufferPointer { p in
                packShifted(w.baseAddress!, outChannels: o, inChannels: c, taps: kernel.0 * kernel.1, into: p.baseAddress!)
            }
        }
        return packed
    }

    /// The pointer form of `packShifted`, for f32 values or 16-bit patterns: out[o][t][c] =
    /// w[o][c][t] (large weights on all cores).
    static func packShifted<T>(_ w: UnsafePointer<T>, outChannels o: Int, inChannels c: Int, taps: Int,
                               into p: UnsafeMutablePointer<T>) {
        let threads = o * c * taps >= 1 << 18 ? ComputeContext.defaultThreads : 1
        let chunk = (o + threads - 1) / threads
        DispatchQueue.concurrentPerform(iterations: threads) { part in
            for oi in (part * chunk)..<min(o, (part + 1) * chunk) {
                for t in 0..<taps {
                    let dst = p + (oi * taps + t) * c
                    let src = w + oi * c * taps + t
                    for ci in 0..<c { dst[ci] = src[ci * taps] }
                }
            }
        }
    }

    /// Images of at most this many output pixels (oh·ow) take `forwardSmall` (measured on SD
    /// 1.5's UNet at 32×32 latents: the step 3.1 s → 2.2 s; equal at 64×64).
    nonisolated(unsafe) static var smallImagePixels = 1024

    /// Most floats of the unfolded copy `forwardSmall` keeps at once (128 MiB); images are
    /// unfolded and multiplied in groups that fit.
    nonisolated(unsafe) static var smallColumnBudget = 1 << 25

    /// Scratch for the padded input of one group of images, in floats (64 MiB): images are
    /// processed together (one set of GEMMs, N = images × padded plane) while they fit.
    nonisolated(unsafe) static var shiftedGroupBudget = 1 << 24

    /// x: [n, c, h, w]; packedWeight from `packShifted`; stride 1; writes [n, o, oh, ow].
    internal static func forwardShifted(_ ctx: ComputeContext, x: UnsafePointer<Float>, n: Int, c: Int, h: Int, w: Int,
                                        packedWeight: WeightMatrix, bias: UnsafePointer<Float>?,
                                        outChannels o: Int, kernel: (Int, Int), padding: Padding,
                                        out: UnsafeMutablePointer<Float>) {
        let (kh, kw) = kernel
        let hp = h + padding.top + padding.bottom, wp = w + padding.left + padding.right
        let oh = hp - kh + 1, ow = wp - kw + 1
        precondition(oh > 0 && ow > 0, "conv input \(h)x\(w) is smaller than the kernel")
        let plane = hp * wp
        // Images per group: their padded planes sit side by side in each channel row, so one GEMM
        // per tap covers the whole group (the rows between images produce discarded columns).
        let group = max(1, min(n, shiftedGroupBudget / max(1, max(c, o) * plane)))
        let rowLength = group * plane  // one channel row of the padded group
        let ws = ctx.workspace
        ws.withScratch(c * rowLength + kw) { padded in
            ws.withScratch(o * rowLength) { y in
                padded.update(repeating: 0, count: c * rowLength + kw)
                var b0 = 0
                while b0 < n {
                    let g = min(group, n - b0)
                    // Pad: only the interiors are rewritten, the zero borders stay.
                    ctx.parallelRanges(c, minChunk: 16) { range in
                        for ci in range {
                            for i in 0..<g {
                                let src = x + ((b0 + i) * c + ci) * h * w
                                let dst = padded + ci * rowLength + i * plane + padding.top * wp + padding.left
                                for yy in 0..<h { (dst + yy * wp).update(from: src + yy * w, count: w) }
                            }
                        }
                    }
                    // Output columns: image i's row yy starts at i·plane + yy·wp.
                    let columns = (g - 1) * plane + oh * wp
                    // Column k of the packed weight is tap k / c, channel k % c.
                    packedWeight.columnBlocks(ctx, rows: o, ld: kh * kw * c, columns: 0..<(kh * kw * c)) { k, wk, ldw in
                        var k0 = k.lowerBound
                        while k0 < k.upperBound {
                            let t = k0 / c, ci = k0 % c, kc = min(k.upperBound, (t + 1) * c) - k0
                            let (ky, kx) = (t / kw, t % kw)
                            ctx.gemm(m: o, n: columns, k: kc, a: wk + (k0 - k.lowerBound), lda: ldw,
                                     b: padded + ci * rowLength + ky * wp + kx, ldb: rowLength, beta: k0 == 0 ? 0 : 1,
                                     c: y, ldc: rowLength)
                            k0 += kc
                        }
                    }
                    ctx.parallelRanges(o, minChunk: 16) { range in
                        for oi in range {
                            let bv = bias?[oi] ?? 0
                            for i in 0..<g {
                                let srcPlane = y + oi * rowLength + i * plane
                                let dstPlane = out + ((b0 + i) * o + oi) * oh * ow
                                for yy in 0..<oh {
                                    let s = srcPlane + yy * wp, d = dstPlane + yy * ow
                                    for xx in 0..<ow { d[xx] = s[xx] + bv }
                                }
                            }
                        }
                    }
                    b0 += g
                }
            }
        }
    }

    /// Stride-1 convolution of small images as one GEMM per group of images: the tap-major
    /// unfolded copy cols[t·C + c][i·oh·ow + y·ow + x] = x[i][c][y + ky − pt][x + kx − pl]
    /// (zero outside), Y[O][g·oh·ow] = W[O][taps·C] · cols, then Y's columns are scattered to
    /// [n][O][oh·ow].
    internal static func forwardSmall(_ ctx: ComputeContext, x: UnsafePointer<Float>, n: Int, c: Int, h: Int, w: Int,
                                      packedWeight: WeightMatrix, bias: UnsafePointer<Float>?,
                                      outChannels o: Int, kernel: (Int, Int), padding: Padding,
                                      out: UnsafeMutablePointer<Float>) {
        let (kh, kw) = kernel
        let (oh, ow) = outputSize(h: h, w: w, kernel: kernel, stride: 1, padding: padding)
        let pixels = oh * ow, taps = kh * kw
        let group = max(1, min(n, smallColumnBudget / max(1, taps * c * pixels)))
        let ws = ctx.workspace
        ws.withScratch(taps * c * group * pixels) { cols in
            ws.withScratch(o * group * pixels) { y in
                var b0 = 0
                while b0 < n {
                    let g = min(group, n - b0), columns = g * pixels
                    ctx.parallelRanges(taps * c, minChunk: 64) { rows in
                        for row in rows {
                            let t = row / c, ci = row % c
                            let ky = t / kw, kx = t % kw
                            for i in 0..<g {
                                let src = x + ((b0 + i) * c + ci) * h * w
                                let dst = cols + row * columns + i * pixels
                                for yy in 0..<oh {
                                    let iy = yy + ky - padding.top
                                    let d = dst + yy * ow
                                    if iy < 0 || iy >= h { d.update(repeating: 0, count: ow); continue }
                                    let srow = src + iy * w
                                    for xx in 0..<ow {
                                        let ix = xx + kx - padding.left
                                        d[xx] = ix >= 0 && ix < w ? srow[ix] : 0
                                    }
                                }
                            }
                        }
                    }
                    packedWeight.columnBlocks(ctx, rows: o, ld: taps * c, columns: 0..<(taps * c)) { k, wk, ldw in
                        ctx.gemm(m: o, n: columns, k: k.count, a: wk, lda: ldw, b: cols + k.lowerBound * columns, ldb: columns,
                                 beta: k.lowerBound == 0 ? 0 : 1, c: y, ldc: columns)
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
    }

    /// Tensor form of `forwardSmall`.
    static func forwardSmall(_ x: Tensor, packedWeight: [Float], bias: [Float]?, outChannels o: Int,
                             kernel: (Int, Int), padding: Padding) -> Tensor {
        onTensors(x, weight: packedWeight, bias: bias, outChannels: o, kernel: kernel, stride: 1,
                  padding: padding) { ctx, x, n, c, h, w, wp, bp, out in
            forwardSmall(ctx, x: x, n: n, c: c, h: h, w: w, packedWeight: wp, bias: bp, outChannels: o, kernel: kernel,
                         padding: padding, out: out)
        }
    }

    /// Tensor form: x [N, C, H, W]; packedWeight from `packShifted`; stride 1.
    static func forwardShifted(_ x: Tensor, packedWeight: [Float], bias: [Float]?, outChannels o: Int,
                               kernel: (Int, Int), padding: Padding) -> Tensor {
        onTensors(x, weight: packedWeight, bias: bias, outChannels: o, kernel: kernel, stride: 1,
                  padding: padding) { ctx, x, n, c, h, w, wp, bp, out in
            forwardShifted(ctx, x: x, n: n, c: c, h: h, w: w, packedWeight: wp, bias: bp, outChannels: o, kernel: kernel,
                           padding: padding, out: out)
        }
    }
}
