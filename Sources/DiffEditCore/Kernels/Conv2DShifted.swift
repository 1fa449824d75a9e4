import Foundation

/// Stride-1 convolutions with a spatial kernel over a tap-major packed weight [O][kh·kw][C]: the
/// unfolded copy cols[t·C + c][pixel] = the input shifted by tap t (zero outside), multiplied
/// in one GEMM with K = taps·C. Small images (the UNet's 32×32 and smaller levels) go in groups
/// of whole images (`forwardSmall`: the GEMMs are skinny, one per group keeps them efficient);
/// large ones in bands of output rows that stay in cache (`forwardBands`). Winograd
/// (Conv2DWinograd.swift) takes large 3×3 convolutions with many channels.
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

    /// Floats of the unfolded band `forwardBands` keeps (16 MiB: the band and its share of
    /// the output stay in this machine class's L3 while the product runs).
    nonisolated(unsafe) static var bandColumnBudget = 1 << 22

    /// Stride-1 convolution of large images with few channels, one band of output rows at a
    /// time: the band's tap-major unfolded copy cols[t·C + c][(y − y0)·ow + x] and one GEMM
    /// Y[O][band] = W[O][taps·C] · cols written straight into the output rows (a band of an
    /// output plane is contiguous). One GEMM per tap over a padded copy instead re-reads and
    /// re-writes the whole output once per tap, which at 512×512 with 128 channels is bandwidth,
    /// not arithmetic; Winograd's transforms cost more than its products there.
    internal static func forwardBands(_ ctx: ComputeContext, x: UnsafePointer<Float>, n: Int, c: Int, h: Int, w: Int,
                                      packedWeight: WeightMatrix, bias: UnsafePointer<Float>?,
                                      outChannels o: Int, kernel: (Int, Int), padding: Padding,
                                      out: UnsafeMutablePointer<Float>) {
        let (kh, kw) = kernel
        let (oh, ow) = outputSize(h: h, w: w, kernel: kernel, stride: 1, padding: padding)
        let pixels = oh * ow, taps = kh * kw, k = taps * c
        let band = max(1, min(oh, bandColumnBudget / max(1, k * ow)))
        for img in 0..<n {
            let dst = out + img * o * pixels
            ctx.parallelRanges(o, minChunk: 16) { range in
                for oi in range { (dst + oi * pixels).update(repeating: bias?[oi] ?? 0, count: pixels) }
            }
        }
        ctx.workspace.withScratch(k * band * ow) { cols in
            for img in 0..<n {
                let src0 = x + img * c * h * w
                var y0 = 0
                while y0 < oh {
                    let rows = min(band, oh - y0), columns = rows * ow
                    ctx.parallelRanges(k, minChunk: 16) { part in
                        for row in part {
                            let t = row / c, ci = row % c
                            let ky = t / kw, kx = t % kw
                            let plane = src0 + ci * h * w
                            let d0 = cols + row * columns
                            let shift = kx - padding.left
                            let xFirst = max(0, -shift), xEnd = min(ow, w - shift)
                            for yy in 0..<rows {
                                let iy = y0 + yy + ky - padding.top
                                let d = d0 + yy * ow
                                if iy < 0 || iy >= h || xFirst >= xEnd { d.update(repeating: 0, count: ow); continue }
                                if xFirst > 0 { d.update(repeating: 0, count: xFirst) }
                                (d + xFirst).update(from: plane + iy * w + xFirst + shift, count: xEnd - xFirst)
                                if xEnd < ow { (d + xEnd).update(repeating: 0, count: ow - xEnd) }
                            }
                        }
                    }
                    packedWeight.columnBlocks(ctx, rows: o, ld: k, columns: 0..<k) { kr, wk, ldw in
                        ctx.gemm(m: o, n: columns, k: kr.count, a: wk, lda: ldw, b: cols + kr.lowerBound * columns,
                                 ldb: columns, beta: 1, c: out + img * o * pixels + y0 * ow, ldc: pixels)
                    }
                    y0 += rows
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

    /// Tensor form of `forwardBands`.
    static func forwardBands(_ x: Tensor, packedWeight: [Float], bias: [Float]?, outChannels o: Int,
                             kernel: (Int, Int), padding: Padding) -> Tensor {
        onTensors(x, weight: packedWeight, bias: bias, outChannels: o, kernel: kernel, stride: 1,
                  padding: padding) { ctx, x, n, c, h, w, wp, bp, out in
            forwardBands(ctx, x: x, n: n, c: c, h: h, w: w, packedWeight: wp, bias: bp, outChannels: o, kernel: kernel,
                         padding: padding, out: out)
        }
    }
}
