/// 2-D convolution over NCHW as im2col + one sgemm per image, as torch.nn.Conv2d with groups=1.
public enum Conv2D {
    public struct Padding: Equatable {
        public var top, bottom, left, right: Int
        public init(top: Int, bottom: Int, left: Int, right: Int) {
            self.top = top; self.bottom = bottom; self.left = left; self.right = right
        }
        public static func same(_ p: Int) -> Padding { Padding(top: p, bottom: p, left: p, right: p) }
    }

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
        let ohw = oh * ow
        let kdim = c * kh * kw
        var out = [Float](repeating: 0, count: n * outChannels * ohw)
        let direct = kh == 1 && kw == 1 && stride == 1 && padding == .same(0)
        var cols = direct ? [] : [Float](repeating: 0, count: kdim * ohw)
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
                            let src: UnsafePointer<Float>
                            if direct {
                                src = img
                            } else {
                                im2col(img, c: c, h: h, w: w, kh: kh, kw: kw, stride: stride,
                                       padding: padding, oh: oh, ow: ow, cols: cp.baseAddress!)
                                src = UnsafePointer(cp.baseAddress!)
                            }
                            BLAS.gemm(m: outChannels, n: ohw, k: kdim, a: wp.baseAddress!, lda: kdim,
                                      b: src, ldb: ohw, beta: bias == nil ? 0 : 1,
                                      c: dst, ldc: ohw)
                        }
                    }
                }
            }
        }
        return Tensor(shape: [n, outChannels, oh, ow], data: out)
    }

    /// Unfolds patches: cols[(ci·kh + ky)·kw + kx][oy·ow + ox] = x[ci][oy·s + ky − pt][ox·s + kx − pl].
    @inline(__always)
    static func im2col(_ x: UnsafePointer<Float>, c: Int, h: Int, w: Int, kh: Int, kw: Int,
                       stride: Int, padding: Padding, oh: Int, ow: Int,
                       cols: UnsafeMutablePointer<Float>) {
        var row = 0
        for ci in 0..<c {
            let plane = x + ci * h * w
            for ky in 0..<kh {
                for kx in 0..<kw {
                    let dst = cols + row * oh * ow
                    for oy in 0..<oh {
                        let iy = oy * stride + ky - padding.top
                        let d = dst + oy * ow
                        if iy < 0 || iy >= h {
                            d.update(repeating: 0, count: ow)
                            continue
                        }
                        let srow = plane + iy * w
                        if stride == 1 {
                            // Contiguous run with zero borders.
                            let shift = kx - padding.left
                            for ox in 0..<ow {
                                let ix = ox + shift
                                d[ox] = (ix >= 0 && ix < w) ? srow[ix] : 0
                            }
                        } else {
                            for ox in 0..<ow {
                                let ix = ox * stride + kx - padding.left
                                d[ox] = (ix >= 0 && ix < w) ? srow[ix] : 0
                            }
                        }
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
