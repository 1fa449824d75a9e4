/// Cropping and resizing of NCHW images, used to bring an image to a size the VAE accepts.
public enum Resample {
    /// The centred height × width window (offsets rounded down, as torchvision's center_crop).
    public static func centerCrop(_ x: Tensor, height oh: Int, width ow: Int) -> Tensor {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        precondition(oh <= h && ow <= w && oh > 0 && ow > 0)
        let top = (h - oh) / 2, left = (w - ow) / 2
        var out = [Float](repeating: 0, count: n * c * oh * ow)
        x.data.withUnsafeBufferPointer { xp in
            out.withUnsafeMutableBufferPointer { op in
                for p in 0..<(n * c) {
                    for y in 0..<oh {
                        (op.baseAddress! + (p * oh + y) * ow)
                            .update(from: xp.baseAddress! + (p * h + top + y) * w + left, count: ow)
                    }
                }
            }
        }
        return Tensor(shape: [n, c, oh, ow], data: out)
    }

    /// Bilinear resize as torch's F.interpolate(mode="bilinear", align_corners=False,
    /// antialias=False): source coordinate (d + ½)·in/out − ½, clamped at 0, blending the two
    /// neighbouring samples on each axis.
    public static func resizeBilinear(_ x: Tensor, height oh: Int, width ow: Int) -> Tensor {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        precondition(oh > 0 && ow > 0)
        func taps(_ outSize: Int, _ inSize: Int) -> [(i0: Int, i1: Int, l0: Float, l1: Float)] {
            let scale = Float(inSize) / Float(outSize)
            return (0..<outSize).map { d in
                let src = max(0, (Float(d) + 0.5) * scale - 0.5)
                let i0 = min(Int(src), inSize - 1)
                let i1 = i0 < inSize - 1 ? i0 + 1 : i0
                let l1 = src - Float(i0)
                return (i0, i1, 1 - l1, l1)
            }
        }
        let ys = taps(oh, h), xs = taps(ow, w)
        var out = [Float](repeating: 0, count: n * c * oh * ow)
        x.data.withUnsafeBufferPointer { xp in
            out.withUnsafeMutableBufferPointer { op in
                for p in 0..<(n * c) {
                    let plane = xp.baseAddress! + p * h * w
                    for oy in 0..<oh {
                        let ty = ys[oy]
                        let r0 = plane + ty.i0 * w, r1 = plane + ty.i1 * w
                        let d = op.baseAddress! + (p * oh + oy) * ow
                        for ox in 0..<ow {
                            let tx = xs[ox]
                            d[ox] = ty.l0 * (tx.l0 * r0[tx.i0] + tx.l1 * r0[tx.i1])
                                  + ty.l1 * (tx.l0 * r1[tx.i0] + tx.l1 * r1[tx.i1])
                        }
                    }
                }
            }
        }
        return Tensor(shape: [n, c, oh, ow], data: out)
    }
}
