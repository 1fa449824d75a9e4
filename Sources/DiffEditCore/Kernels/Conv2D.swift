/// 2-D convolution over NCHW as im2col + one sgemm per image, as torch.nn.Conv2d with groups=1.
public enum Conv2D {
    public struct Padding: Equatable {
        public var top, bottom, left, right: Int
        public init(top: Int, bottom: Int, left: Int, right: Int) {
            self.top = top; self.bottom = bottom; self.left = left; self.right = right
        }
        public static func same(_ p: Int) -> Padding { Padding(top: p, bottom: p, left: p, right: p) }
    }

    /// Largest im2col buffer kept at once, in floats (64 MiB). Patches are unfolded a band of
    /// output rows at a time, so a 3×3 convolution over 512×512 with 256 input channels needs
    /// this much scratch instead of the 2.4 GB of a whole-image unfold.
    public static var columnBudget = 1 << 24

    /// weight: [outC, inC, kh, kw] (torch layout), bias: [outC].
    public static func forward(_ x: Tensor, weight: [Float], bias: [Float]?, outChannels: Int,
                               kernel: (Int, Int), stride: Int = 1, padding: Padding) -> Tensor {
        precondition(x.rank == 4)
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let (kh, kw) = kernel
        precondition(weight.count == outChannels * c * kh * kw,
                     "conv weight \(weight.count) != \(outChannels)x\(c)x\(kh)x\(kw)")
        let oh = (h + padding.top + padding.bottom - kh) / stride + 1
        let ow = (w + padding.left + padding.right - kw) / stride + 1
        precondition(oh > 0 && ow > 0, "conv: \(h)x\(w) input is smaller than the \(kh)x\(kw) kernel")
        let ohw = oh * ow
        let kdim = c * kh * kw
        var out = [Float](repeating: 0, count: n * outChannels * ohw)
        let direct = kh == 1 && kw == 1 && stride == 1 && padding == .same(0)
        // Output rows unfolded per band: as many as fit the budget, at least one.
        let band = direct ? oh : max(1, min(oh, columnBudget / max(1, kdim * ow)))
        var cols = direct ? [] : [Float](repeating: 0, count: kdim * band * ow)
        x.data.withUnsafeBufferPointer { xp in
            weight.withUnsafeBufferPointer { wp in
                out.withUnsafeMutableBufferPointer { op in
                    cols.withUnsafeMutableBufferPointer { cp in
                        for b in 0..<n {
                            let img = xp.baseAddress! + b * c * h * w
                            let dst = op.baseAddress! + b * outChannels * ohw
                            if let bias {
                                for o in 0..<outChannels {
                                    (dst + o * ohw).update(repeating: bias[o], count: ohw)
                                }
                            }
                            if direct {
                                BLAS.gemm(m: outChannels, n: ohw, k: kdim, a: wp.baseAddress!, lda: kdim,
                                          b: img, ldb: ohw, beta: bias == nil ? 0 : 1,
                                          c: dst, ldc: ohw)
                                continue
                            }
                            var oy0 = 0
                            while oy0 < oh {
                                let rows = min(band, oh - oy0)
                                im2col(img, c: c, h: h, w: w, kh: kh, kw: kw, stride: stride,
                                       padding: padding, rows: oy0..<(oy0 + rows), ow: ow,
                                       cols: cp.baseAddress!)
                                // The band's outputs are columns [oy0·ow, (oy0+rows)·ow) of every
                                // output-channel row: a sub-matrix of dst with leading dim ohw.
                                BLAS.gemm(m: outChannels, n: rows * ow, k: kdim, a: wp.baseAddress!, lda: kdim,
                                          b: cp.baseAddress!, ldb: rows * ow, beta: bias == nil ? 0 : 1,
                                          c: dst + oy0 * ow, ldc: ohw)
                                oy0 += rows
                            }
                        }
                    }
                }
            }
        }
        return Tensor(shape: [n, outChannels, oh, ow], data: out)
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

    /// Nearest-neighbour upsampling to an explicit size (2× in SD's up blocks), as
    /// F.interpolate(mode="nearest"): source index = floor(dst · in/out).
    public static func upsampleNearest(_ x: Tensor, height oh: Int, width ow: Int) -> Tensor {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        var out = [Float](repeating: 0, count: n * c * oh * ow)
        let sy = Float(h) / Float(oh), sx = Float(w) / Float(ow)
        var xIndex = [Int](repeating: 0, count: ow)
        for ox in 0..<ow { xIndex[ox] = min(Int(Float(ox) * sx), w - 1) }
        x.data.withUnsafeBufferPointer { xp in
            out.withUnsafeMutableBufferPointer { op in
                for p in 0..<(n * c) {
                    let src = xp.baseAddress! + p * h * w
                    let dst = op.baseAddress! + p * oh * ow
                    for oy in 0..<oh {
                        let iy = min(Int(Float(oy) * sy), h - 1)
                        let s = src + iy * w
                        let d = dst + oy * ow
                        for ox in 0..<ow { d[ox] = s[xIndex[ox]] }
                    }
                }
            }
        }
        return Tensor(shape: [n, c, oh, ow], data: out)
    }
}
