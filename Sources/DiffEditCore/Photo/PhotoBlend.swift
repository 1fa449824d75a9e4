/// The edit put back into the photo: the edited picture (the model's size) resampled to the
/// region it depicts and mixed into the original's samples by a PixelMask's weights.
///
/// Where the weight is 0 the original's sample is left as it is — never recomputed, so it comes
/// out bit for bit. Elsewhere out = round(orig + w·(edit − orig)), clamped to 0...maxval, with the
/// edit first brought to the original's maxval (an 8-bit edit into a 16-bit photo and the other
/// way round) and colours (a grey original takes the edit's Rec. 601 luma, an RGB original a grey
/// edit replicated). An alpha channel of the original is kept; the edit's own alpha is ignored.
public enum PhotoBlend {
    /// The edit's colour samples as the original's: `channels` (1 or 3) per pixel, on the
    /// original's scale 0...originalMaxval (not rounded: the blend rounds once).
    public static func editSamples(_ edit: NetpbmLevels, channels: Int, originalMaxval: Int) -> [Float] {
        let n = edit.width * edit.height, depth = edit.depth, colors = edit.colorChannels
        let scale = Float(originalMaxval) / Float(edit.maxval)
        var out = [Float](repeating: 0, count: n * channels)
        edit.levels.withUnsafeBufferPointer { e in
            out.withUnsafeMutableBufferPointer { o in
                for i in 0..<n {
                    let p = i * depth
                    if channels == colors {
                        for c in 0..<channels { o[i * channels + c] = Float(e[p + c]) * scale }
                    } else if channels == 1 {
                        // Rec. 601 luma, as ppmtopgm computes it.
                        o[i] = (0.299 * Float(e[p]) + 0.587 * Float(e[p + 1]) + 0.114 * Float(e[p + 2])) * scale
                    } else {
                        for c in 0..<3 { o[i * 3 + c] = Float(e[p]) * scale }
                    }
                }
            }
        }
        return out
    }

    /// Blends `edit` into `original` over the region (x, y, mask.width × mask.height) of it,
    /// weighted by `mask`. Pixels outside the region and pixels of weight 0 are not touched.
    public static func blend(_ edit: NetpbmLevels, into original: inout NetpbmLevels, at origin: (x: Int, y: Int),
                             mask: PixelMask) {
        let (rw, rh) = (mask.width, mask.height)
        precondition(origin.x >= 0 && origin.y >= 0 && origin.x + rw <= original.width && origin.y + rh <= original.height)
        let reach = mask.reach
        guard reach.width > 0 && reach.height > 0 else { return }
        let colors = original.colorChannels, depth = original.depth
        let samples = editSamples(edit, channels: colors, originalMaxval: original.maxval)
        let resample = samples.withUnsafeBufferPointer { s in
            SeparableResample(s, channels: colors, x: .image(source: edit.width, to: rw), y: .image(source: edit.height, to: rh))
        }
        let maxval = Float(original.maxval), width = original.width
        var editRow = [Float](repeating: 0, count: rw * colors)
        var weightRow = [Float](repeating: 0, count: rw)
        original.levels.withUnsafeMutableBufferPointer { o in
            editRow.withUnsafeMutableBufferPointer { e in
                weightRow.withUnsafeMutableBufferPointer { w in
                    for y in reach.y..<(reach.y + reach.height) {
                        mask.weights(row: y, into: w)
                        resample.row(y, into: e)
                        let rowBase = (origin.y + y) * width + origin.x
                        for x in reach.x..<(reach.x + reach.width) {
                            let a = w[x]
                            if a == 0 { continue }  // the original's sample, untouched
                            let p = (rowBase + x) * depth
                            for c in 0..<colors {
                                let orig = Float(o[p + c])
                                var v = (orig + a * (e[x * colors + c] - orig)).rounded(.toNearestOrAwayFromZero)
                                if !(v >= 0) { v = 0 }
                                if v > maxval { v = maxval }
                                o[p + c] = UInt16(v)
                            }
                        }
                    }
                }
            }
        }
    }
}
