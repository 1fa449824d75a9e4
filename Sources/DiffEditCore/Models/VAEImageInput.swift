/// How an image whose sides are not multiples of the VAE's downsampling factor is made to fit.
public enum VAEImageFit: Equatable {
    /// Refuse, naming the nearest valid sizes.
    case exact
    /// Centre-crop down to the multiple below (at least one factor).
    case crop
    /// Resize to the multiple below (at least one factor), nearest or bilinear.
    case resizeNearest
    case resizeBilinear
}

extension AutoencoderKL {
    /// The size an image of width × height becomes under --crop/--resize: each side rounded down
    /// to a multiple of the downsampling factor, as diffusers' VaeImageProcessor picks its target
    /// size (it then resizes with PIL's Lanczos, which is not reproduced here).
    public func fittedSize(width: Int, height: Int) -> (width: Int, height: Int) {
        let f = config.downsamplingFactor
        return (max(f, width / f * f), max(f, height / f * f))
    }

    /// Images as the VAE's input, [N, 3, H, W] in [−1, 1] (diffusers' VaeImageProcessor: x/maxval,
    /// then 2x − 1; grey replicated to RGB, alpha dropped), brought to a valid size by `fit`.
    /// All images must share one size. Returns the tensor and notes for stderr.
    public func inputTensor(_ images: [NetpbmImage], fit: VAEImageFit) throws -> (tensor: Tensor, notes: [String]) {
        guard let first = images.first else { throw ToolError("no image in the input") }
        for (i, im) in images.enumerated() where im.width != first.width || im.height != first.height {
            throw ToolError("image \(i) is \(im.width)x\(im.height) but image 0 is \(first.width)x\(first.height) — images of one stream form one batch and must share a size")
        }
        var notes: [String] = []
        if images.contains(where: \.hasAlpha) { notes.append("note: alpha channel dropped") }
        var x = Tensor.concat(batch: images.map { $0.rgbTensor() })
        let (w, h) = (first.width, first.height)
        let f = config.downsamplingFactor
        if w % f != 0 || h % f != 0 {
            let target = fittedSize(width: w, height: h)
            switch fit {
            case .exact:
                try checkImageSize(width: w, height: h)
            case .crop:
                guard target.width <= w && target.height <= h else {
                    throw ToolError("image is \(w)x\(h), smaller than the VAE's \(f)x\(f) minimum — nothing to crop to; use --resize")
                }
                x = Resample.centerCrop(x, height: target.height, width: target.width)
                notes.append("note: cropped \(w)x\(h) to \(target.width)x\(target.height) (centre)")
            case .resizeNearest:
                x = Conv2D.upsampleNearest(x, height: target.height, width: target.width)
                notes.append("note: resized \(w)x\(h) to \(target.width)x\(target.height) (nearest)")
            case .resizeBilinear:
                x = Resample.resizeBilinear(x, height: target.height, width: target.width)
                notes.append("note: resized \(w)x\(h) to \(target.width)x\(target.height) (bilinear)")
            }
        }
        return (x, notes)
    }
}
