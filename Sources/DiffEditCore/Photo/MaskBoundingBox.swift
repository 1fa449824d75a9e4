/// `tensor bbox`: the rectangle of a photo to edit at the model's size — the mask's bounding
/// box in the photo's pixels, grown by a margin of context, then to the model's aspect, kept
/// inside the photo.
public enum MaskBoundingBox {
    /// The cells of `map` above `threshold` (noise-diff-mask's rule) as a box of cells, nil when none is.
    public static func cells(_ map: FloatMap, threshold: Float) -> PixelBox? {
        var x0 = map.width, y0 = map.height, x1 = -1, y1 = -1
        for y in 0..<map.height {
            for x in 0..<map.width where map.values[y * map.width + x] > threshold {
                x0 = min(x0, x); x1 = max(x1, x); y0 = min(y0, y); y1 = max(y1, y)
            }
        }
        return x1 < 0 ? nil : PixelBox(x: x0, y: y0, width: x1 - x0 + 1, height: y1 - y0 + 1)
    }

    /// The default margin: a quarter of the box's larger side, at least two mask cells — room
    /// for the half cell the bilinear mask reaches past its cells and composite's default
    /// feather of one cell, so that the blend fades out inside the region.
    public static func defaultMargin(box: PixelBox, cellWidth: Double, cellHeight: Double) -> Int {
        max(Int((Double(max(box.width, box.height)) / 4).rounded(.up)), Int((2 * max(cellWidth, cellHeight)).rounded(.up)))
    }

    /// The box for a mask covering a picture of width × height pixels; nil for an empty mask.
    /// `margin` nil: defaultMargin. `aspect` (w, h): the box's width:height.
    public static func box(_ map: FloatMap, threshold: Float, width: Int, height: Int, margin: Int?,
                           aspect: (Int, Int)) -> PixelBox? {
        guard let c = cells(map, threshold: threshold) else { return nil }
        let cw = Double(width) / Double(map.width), ch = Double(height) / Double(map.height)
        // The cells' pixels: cell x covers [x·cw, (x + 1)·cw).
        let px0 = Int((Double(c.x) * cw).rounded(.down)), py0 = Int((Double(c.y) * ch).rounded(.down))
        let px1 = min(width, Int((Double(c.x + c.width) * cw).rounded(.up)))
        let py1 = min(height, Int((Double(c.y + c.height) * ch).rounded(.up)))
        let tight = PixelBox(x: px0, y: py0, width: px1 - px0, height: py1 - py0)
        let m = margin ?? defaultMargin(box: tight, cellWidth: cw, cellHeight: ch)
        // Grown by the margin, within the picture.
        let gx0 = max(0, px0 - m), gy0 = max(0, py0 - m), gx1 = min(width, px1 + m), gy1 = min(height, py1 + m)
        var bw = gx1 - gx0, bh = gy1 - gy0
        let (aw, ah) = aspect
        // Grown to the aspect around its centre.
        if bw * ah < bh * aw { bw = Int((Double(bh) * Double(aw) / Double(ah)).rounded(.up)) }
        else if bw * ah > bh * aw { bh = Int((Double(bw) * Double(ah) / Double(aw)).rounded(.up)) }
        // Shrunk (keeping the aspect) only when the picture is too small for it.
        if bw > width || bh > height {
            if width * ah <= height * aw {
                bw = width
                bh = min(height, max(1, Int((Double(width) * Double(ah) / Double(aw)).rounded())))
            } else {
                bh = height
                bw = min(width, max(1, Int((Double(height) * Double(aw) / Double(ah)).rounded())))
            }
        }
        // Centred on the grown box, shifted inside the picture.
        let cx = Double(gx0 + gx1) / 2, cy = Double(gy0 + gy1) / 2
        let x = min(max(0, Int((cx - Double(bw) / 2).rounded())), width - bw)
        let y = min(max(0, Int((cy - Double(bh) / 2).rounded())), height - bh)
        return PixelBox(x: x, y: y, width: bw, height: bh)
    }
}
