/// A mask at the pixels of a picture: a mask or soft map (a FloatMap at the latent grid, or a
/// mask image) resampled bilinear to the picture's size, thresholded, dilated by a Euclidean
/// disc, and feathered outward. The blending weight of a pixel is 1 inside the dilated mask and
/// falls with the distance d to the nearest pixel of it as a smoothstep of 1 − d/F, reaching
/// exactly 0 at d = F and staying 0 beyond: a pixel at distance F or more keeps its original.
///
/// With a `Refinement`, the resampled map is first passed through a guided filter (GuidedFilter)
/// guided by the picture itself, so the threshold follows the picture's edges rather than the
/// blur of the latent grid.
///
/// Memory: one byte per pixel for the mask, and four for the distances, over the mask's box
/// grown by the dilation and the feather only (the rest of the picture has weight 0); the
/// refinement adds a few rows of its box's width (GuidedFilter), not its area.
public struct PixelMask {
    /// An edge-aware refinement of the resampled map before the threshold: the guided filter of
    /// radius `radius` and regularisation `epsilon` (on a guide in [0, 1]) over the coarse mask's
    /// bounding box grown by 2·radius (where the refined mask can be), computed from pixels up to
    /// 4·radius from that box, so that within it it is the filter over the whole picture.
    public struct Refinement {
        public var radius: Int
        public var epsilon: Float
        /// Guide channels per pixel.
        public var channels: Int
        /// Writes row y of the guide from column x on (out.count / channels pixels, channels
        /// interleaved, in [0, 1]).
        public var guideRow: (_ y: Int, _ x: Int, _ out: UnsafeMutableBufferPointer<Float>) -> Void

        public init(radius: Int, epsilon: Float, channels: Int,
                    guideRow: @escaping (_ y: Int, _ x: Int, _ out: UnsafeMutableBufferPointer<Float>) -> Void) {
            precondition(radius >= 1 && epsilon > 0 && channels >= 1)
            (self.radius, self.epsilon, self.channels, self.guideRow) = (radius, epsilon, channels, guideRow)
        }
    }

    public let width: Int
    public let height: Int
    public let dilate: Int
    public let feather: Int
    /// 1 inside the dilated mask, else 0 (width × height).
    public private(set) var inside: [UInt8]
    /// The box where the weight can be non-zero: the dilated mask's bounding box grown by the
    /// feather, within the picture. Empty (width 0) for an empty mask.
    public private(set) var reach: (x: Int, y: Int, width: Int, height: Int) = (0, 0, 0, 0)
    /// Squared distances to the dilated mask over `reach` (feather > 0 only).
    private var distance: [Int32] = []

    /// `map` resampled to width × height (its whole area, or `box` of it in cells), a pixel in
    /// the mask where the resampled value is above `threshold` (noise-diff-mask's own rule: its
    /// mask is where the soft map is above 0.5) — with `refine`, where the guided filter of the
    /// resampled map is above it —, then dilated by `dilate` pixels (every pixel within that
    /// Euclidean distance of the mask) and feathered over `feather` pixels.
    public init(map: FloatMap, box: (x: Double, y: Double, width: Double, height: Double)? = nil,
                width: Int, height: Int, threshold: Float, dilate: Int, feather: Int, refine: Refinement? = nil) {
        precondition(width > 0 && height > 0 && dilate >= 0 && feather >= 0)
        (self.width, self.height, self.dilate, self.feather) = (width, height, dilate, feather)
        let b = box ?? (x: 0, y: 0, width: Double(map.width), height: Double(map.height))
        let resample = map.values.withUnsafeBufferPointer { v in
            SeparableResample(v, channels: 1, x: .bilinear(source: map.width, origin: b.x, length: b.width, to: width),
                              y: .bilinear(source: map.height, origin: b.y, length: b.height, to: height))
        }
        var inside = [UInt8](repeating: 0, count: width * height)
        var row = [Float](repeating: 0, count: width)
        inside.withUnsafeMutableBufferPointer { m in
            row.withUnsafeMutableBufferPointer { r in
                for y in 0..<height {
                    resample.row(y, into: r)
                    for x in 0..<width where r[x] > threshold { m[y * width + x] = 1 }
                }
            }
        }
        self.inside = inside
        if let refine, let coarse = bounds() { self.refineInside(refine, around: coarse, map: resample, threshold: threshold) }
        guard let box = bounds() else { return }
        // The dilated mask lies within `dilate` of the mask's box, the feather within `feather` of that.
        let grow = dilate + feather
        let x0 = max(0, box.x - grow), y0 = max(0, box.y - grow)
        let x1 = min(width, box.x + box.width + grow), y1 = min(height, box.y + box.height + grow)
        reach = (x0, y0, x1 - x0, y1 - y0)
        if dilate > 0 {
            let d = squaredDistances(), limit = Int32(dilate * dilate)
            let (rx, ry, rw, rh) = reach, w = width
            self.inside.withUnsafeMutableBufferPointer { m in
                for y in 0..<rh {
                    for x in 0..<rw { m[(ry + y) * w + rx + x] = d[y * rw + x] <= limit ? 1 : 0 }
                }
            }
        }
        if feather > 0 { distance = squaredDistances() } else if dilate > 0, let b = bounds() {
            reach = (b.x, b.y, b.width, b.height)
        }
    }

    /// `inside` from the guided filter of the resampled map: over the coarse mask's box grown by
    /// 2r (the filter's output there depends on the map within 2r, so the refined mask stays
    /// near the coarse one), the filter run over that box grown by 2r more (its windows and
    /// their windows), so that there it equals the filter over the whole picture. A refinement
    /// that leaves no pixel keeps the coarse mask.
    private mutating func refineInside(_ refine: Refinement, around coarse: (x: Int, y: Int, width: Int, height: Int),
                                 map resample: SeparableResample, threshold: Float) {
        let r = refine.radius
        func grown(_ b: (x: Int, y: Int, width: Int, height: Int), _ g: Int) -> (x: Int, y: Int, width: Int, height: Int) {
            let x0 = max(0, b.x - g), y0 = max(0, b.y - g)
            return (x0, y0, min(width, b.x + b.width + g) - x0, min(height, b.y + b.height + g) - y0)
        }
        let inner = grown(coarse, 2 * r), box = grown(inner, 2 * r), w = width
        let row = UnsafeMutableBufferPointer<Float>.allocate(capacity: width)
        defer { row.deallocate() }
        var kept = 0
        inside.withUnsafeMutableBufferPointer { m in
            GuidedFilter.filter(
                width: box.width, height: box.height, channels: refine.channels, radius: r, epsilon: refine.epsilon,
                guideRow: { y, out in refine.guideRow(box.y + y, box.x, out) },
                inputRow: { y, out in
                    resample.row(box.y + y, into: row)
                    for x in 0..<box.width { out[x] = row[box.x + x] }
                },
                outputRow: { y, q in
                    let py = box.y + y
                    guard py >= inner.y && py < inner.y + inner.height else { return }
                    for x in inner.x..<(inner.x + inner.width) {
                        let v: UInt8 = q[x - box.x] > threshold ? 1 : 0
                        m[py * w + x] = v
                        kept += Int(v)
                    }
                })
            // Where no edge sets the object apart the filter only smooths the map, and a small
            // mask can fall below the threshold altogether: then the coarse mask is kept rather
            // than losing the edit.
            guard kept == 0 else { return }
            for y in inner.y..<(inner.y + inner.height) {
                resample.row(y, into: row)
                for x in inner.x..<(inner.x + inner.width) where row[x] > threshold { m[y * w + x] = 1 }
            }
        }
    }

    /// The bounding box of the mask (after dilation once it is done), nil when it is empty.
    public func bounds() -> (x: Int, y: Int, width: Int, height: Int)? {
        var x0 = width, y0 = height, x1 = -1, y1 = -1
        inside.withUnsafeBufferPointer { m in
            for y in 0..<height {
                let r = y * width
                var first = -1, last = -1
                for x in 0..<width where m[r + x] != 0 {
                    if first < 0 { first = x }
                    last = x
                }
                if first >= 0 { x0 = min(x0, first); x1 = max(x1, last); y0 = min(y0, y); y1 = y }
            }
        }
        return x1 < 0 ? nil : (x0, y0, x1 - x0 + 1, y1 - y0 + 1)
    }

    /// Squared distances to `inside` over `reach`.
    private func squaredDistances() -> [Int32] {
        let (rx, ry, rw, rh) = reach
        var crop = [UInt8](repeating: 0, count: rw * rh)
        var d = [Int32](repeating: 0, count: rw * rh)
        inside.withUnsafeBufferPointer { m in
            crop.withUnsafeMutableBufferPointer { c in
                for y in 0..<rh {
                    for x in 0..<rw { c[y * rw + x] = m[(ry + y) * width + rx + x] }
                }
            }
        }
        crop.withUnsafeBufferPointer { c in
            d.withUnsafeMutableBufferPointer { DistanceTransform.squared(inside: c, width: rw, height: rh, into: $0) }
        }
        return d
    }

    /// The feather's weight at squared distance `d2` from the mask: smoothstep(1 − d/F), so 1 at
    /// the mask, 0 from d = F on (exactly: the test is on integers), with no kink at either end.
    @inline(__always) static func weight(squaredDistance d2: Int32, feather: Int) -> Float {
        if d2 == 0 { return 1 }
        if Int(d2) >= feather * feather { return 0 }
        let t = 1 - Float(Double(d2).squareRoot() / Double(feather))
        return t * t * (3 - 2 * t)
    }

    /// The blending weights of row `y` (width values) into `out`: 0 outside `reach`.
    public func weights(row y: Int, into out: UnsafeMutableBufferPointer<Float>) {
        precondition(out.count >= width && y >= 0 && y < height)
        for x in 0..<width { out[x] = 0 }
        let (rx, ry, rw, rh) = reach
        guard y >= ry && y < ry + rh else { return }
        if feather == 0 {
            inside.withUnsafeBufferPointer { m in
                for x in rx..<(rx + rw) where m[y * width + x] != 0 { out[x] = 1 }
            }
            return
        }
        distance.withUnsafeBufferPointer { d in
            let base = (y - ry) * rw
            for x in 0..<rw { out[rx + x] = Self.weight(squaredDistance: d[base + x], feather: feather) }
        }
    }

    /// Every weight, row-major (tests and small pictures).
    public func allWeights() -> [Float] {
        var all = [Float](repeating: 0, count: width * height)
        all.withUnsafeMutableBufferPointer { a in
            for y in 0..<height { weights(row: y, into: UnsafeMutableBufferPointer(rebasing: a[(y * width)..<((y + 1) * width)])) }
        }
        return all
    }
}
