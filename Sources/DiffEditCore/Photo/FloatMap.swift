/// A map of one float per cell, [height, width] row-major: a mask (0/1), a soft map in [0, 1],
/// or a grey mask image's samples. Cell (x, y) covers [x, x + 1) × [y, y + 1) of the map's area.
public struct FloatMap: Equatable {
    public var width: Int
    public var height: Int
    public var values: [Float]

    public init(width: Int, height: Int, values: [Float]) {
        precondition(values.count == width * height)
        (self.width, self.height, self.values) = (width, height, values)
    }

    /// A box of the map's area, in cells (fractional allowed), bilinear resampled (half-pixel
    /// centres, torch's align_corners=False) to `width` × `height`. The whole map as the box is
    /// torch's `F.interpolate(mode="bilinear", align_corners=False)` to that size.
    public func resampled(box: (x: Double, y: Double, width: Double, height: Double)? = nil,
                          toWidth w: Int, height h: Int) -> FloatMap {
        let b = box ?? (x: 0, y: 0, width: Double(width), height: Double(height))
        let resample = values.withUnsafeBufferPointer { v in
            SeparableResample(v, channels: 1,
                              x: .bilinear(source: width, origin: b.x, length: b.width, to: w),
                              y: .bilinear(source: height, origin: b.y, length: b.height, to: h))
        }
        return FloatMap(width: w, height: h, values: resample.all())
    }

    /// Cells whose value is above `threshold` as 1, the others 0 (noise-diff-mask's rule:
    /// its mask is where the soft map is above 0.5).
    public func thresholded(above threshold: Float) -> FloatMap {
        FloatMap(width: width, height: height, values: values.map { $0 > threshold ? 1 : 0 })
    }
}
