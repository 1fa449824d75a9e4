/// 2-D convolution over NCHW, as torch.nn.Conv2d with groups=1. Methods:
/// - `im2col`: patches unfolded a band of output rows at a time, one sgemm per band (strided
///   and 1×1 convolutions, torch-layout weight);
/// - `small` and `bands` (Conv2DShifted.swift): stride-1 convolutions with a spatial kernel over
///   a tap-major packed weight, whole small images or bands of rows of large ones;
/// - `winograd` (Conv2DWinograd.swift): F(2×2, 3×3) for large 3×3 convolutions with many channels.
public enum Conv2D {
    public struct Padding: Equatable, Sendable {
        public var top, bottom, left, right: Int
        public init(top: Int, bottom: Int, left: Int, right: Int) {
            self.top = top; self.bottom = bottom; self.left = left; self.right = right
        }
        public static func same(_ p: Int) -> Padding { Padding(top: p, bottom: p, left: p, right: p) }
    }

    /// Largest im2col buffer kept at once, in floats (64 MiB). Patches are unfolded a band of
    /// output rows at a time, so a 3×3 convolution over 512×512 with 256 input channels needs
    /// this much scratch instead of the 2.4 GB of a whole-image unfold.
    nonisolated(unsafe) public static var columnBudget = 1 << 24

    /// Output size of a convolution.
    static func outputSize(h: Int, w: Int, kernel: (Int, Int), stride: Int, padding: Padding) -> (Int, Int) {
        ((h + padding.top + padding.bottom - kernel.0) / stride + 1, (w + padding.left + padding.right - kernel.1) / stride + 1)
    }

    /// x: [n, c, h, w] at `x`; weight [outC, c, kh, kw] (torch layout), bias [outC];
    /// writes [n, outC, oh, ow] to `out`.
    static func forwardIm2col(_ ctx: ComputeContext, x: UnsafePointer<Float>, n: Int, c: Int, h: Int, w: Int,
                              weight: WeightMatrix, bias: UnsafePointer<Float>?, outChannels: Int,
                              kernel: (Int, Int), stride: Int, padding: Padding, out: UnsafeMutablePointer<Float>) {
        let (kh, kw) = kernel
        let (oh, ow) = outputSize(h: h, w: w, kernel: kernel, stride: stride, padding: padding)
        precondition(oh > 0 && ow > 0, "conv: \(h)x\(w) input is smaller than the \(kh)x\(kw) kernel")
        let ohw = oh * ow
        let kdim = c * kh * kw
        let direct = kh == 1 && kw == 1 && stride == 1 && padding == .same(0)
        // Output rows unfolded per band: as many as fit the budget, at least one.
        let band = direct ? oh : max(1, min(oh, columnBudget / max(1, kdim * ow)))
        for b in 0..<n {
            let dst = out + b * outChannels * ohw
            if let bias {
                for o in 0..<outChannels { (dst + o * ohw).update(repeating: bias[o], count: ohw) }
            }
        }
        if direct {
            // Y[b] = W · X[b]: each weight block widened once for every image.
            weight.columnBlocks(ctx, rows: outChannels, ld: kdim, columns: 0..<kdim) { k, wk, ldw in
                for b in 0..<n {
                    ctx.gemm(m: outChannels, n: ohw, k: k.count, a: wk, lda: ldw, b: x + b * c * h * w + k.lowerBound * ohw,
                             ldb: ohw, beta: bias == nil && k.lowerBound == 0 ? 0 : 1, c: out + b * outChannels * ohw, ldc: ohw)
                }
            }
            return
        }
        ctx.workspace.withScratch(kdim * band * ow) { cols in
            for b in 0..<n {
                let img = x + b * c * h * w
                let dst = out + b * outChannels * ohw
                var oy0 = 0
                while oy0 < oh {
                    let rows = min(band, oh - oy0), columns = rows * ow
                    im2col(img, c: c, h: h, w: w, kh: kh, kw: kw, stride: stride, padding: padding,
                           rows: oy0..<(oy0 + rows), ow: ow, cols: cols)
                    // The band's outputs are columns [oy0·ow, (oy0+rows)·ow) of every output-channel
                    // row: a sub-matrix of dst with leading dimension ohw.
                    weight.columnBlocks(ctx, rows: outChannels, ld: kdim, columns: 0..<kdim) { k, wk, ldw in
                        ctx.gemm(m: outChannels, n: columns, k: k.count, a: wk, lda: ldw, b: cols + k.lowerBound * columns,
                                 ldb: columns, beta: bias == nil && k.lowerBound == 0 ? 0 : 1, c: dst + oy0 * ow, ldc: ohw)
                    }
                    oy0 += rows
                }
            }
        }
    }

    /// Unfolds patches for output rows `rows` (a band of r = rows.count rows):
    /// cols[(ci·kh + ky)·kw + kx][(oy − rows.lowerBound)·ow + ox] = x[ci][oy·s + ky − pt][ox·s + kx − pl],
    /// zero outside the image.
    @inline(__always)
    static func im2col(_ x: UnsafePointer<Float>, c: Int, h: Int, w: Int, kh: Int, kw: Int,
                       stride: Int, padding: Padding, rows: Range<Int>, ow: Int,
                       cols: UnsafeMutablePointer<Float>) {
        let bandSize = rows.count * ow
        var row = 0
        for ci in 0..<c {
            let plane = x + ci * h * w
            for ky in 0..<kh {
                for kx in 0..<kw {
                    let dst = cols + row * bandSize
                    // Output columns whose input column kx + ox·s − pl lies inside [0, w).
                    let shift = kx - padding.left
                    let oxFirst = shift >= 0 ? 0 : (-shift + stride - 1) / stride
                    let oxEnd = min(ow, w - shift <= 0 ? 0 : (w - 1 - shift) / stride + 1)
                    for oy in rows {
                        let iy = oy * stride + ky - padding.top
                        let d = dst + (oy - rows.lowerBound) * ow
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
                    row += 1
                }
            }
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
    /// The pointer kernel `method(context, x, n, c, h, w, weight, bias, out)` run on Tensors:
    /// x [N, C, H, W] → [N, outChannels, oh, ow].
    static func onTensors(_ x: Tensor, weight: [Float], bias: [Float]?, outChannels o: Int, kernel: (Int, Int),
                          stride: Int, padding: Padding,
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
                        method(ComputeContext(), xp.baseAddress!, n, c, h, w, WeightMatrix(f32: wp.baseAddress!), bp, op.baseAddress!)
                    }
                }
            }
        }
        return Tensor(shape: [n, o, oh, ow], data: out)
    }
}

public extension Conv2D {
    /// weight: [outC, inC, kh, kw] (torch layout), bias: [outC].
    static func forward(_ x: Tensor, weight: [Float], bias: [Float]?, outChannels: Int,
                        kernel: (Int, Int), stride: Int = 1, padding: Padding) -> Tensor {
        onTensors(x, weight: weight, bias: bias, outChannels: outChannels, kernel: kernel, stride: stride,
                  padding: padding) { ctx, x, n, c, h, w, wp, bp, out in
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
