/// The exact squared Euclidean distance from every pixel to the nearest pixel of a binary mask
/// (Felzenszwalb & Huttenlocher, "Distance Transforms of Sampled Functions", 2012): along each
/// column the distance to the nearest mask pixel of that column, then along each row the lower
/// envelope of the parabolas (x − q)² + column(q). Linear in the pixels, integers throughout,
/// so a pixel is at distance ≥ F exactly when its squared distance is ≥ F².
public enum DistanceTransform {
    /// No mask pixel at all (a row or plane without one).
    public static let infinity = Int32.max

    /// Squared distances of a `width` × `height` plane (row-major) to the pixels where `inside`
    /// is non-zero, written to `distance` (infinity where the plane has no mask pixel).
    /// Squared distances of planes up to 32768 pixels a side fit in an Int32.
    public static func squared(inside: UnsafeBufferPointer<UInt8>, width: Int, height: Int,
                               into distance: UnsafeMutableBufferPointer<Int32>) {
        precondition(inside.count >= width * height && distance.count >= width * height)
        precondition(width <= 32768 && height <= 32768)
        guard width > 0 && height > 0 else { return }
        // Columns: the 1-D distance to the nearest mask pixel above or below, squared.
        var last = [Int](repeating: -1, count: width)  // row of the last mask pixel seen, per column
        for y in 0..<height {
            let r = y * width
            for x in 0..<width {
                if inside[r + x] != 0 { last[x] = y }
                let d = last[x] < 0 ? Int.max : y - last[x]
                distance[r + x] = d == Int.max ? infinity : Int32(d * d)
            }
        }
        for x in 0..<width { last[x] = -1 }
        for y in stride(from: height - 1, through: 0, by: -1) {
            let r = y * width
            for x in 0..<width {
                if inside[r + x] != 0 { last[x] = y }
                if last[x] >= 0 {
                    let d = last[x] - y
                    distance[r + x] = min(distance[r + x], Int32(d * d))
                }
            }
        }
        // Rows: the lower envelope of the parabolas rooted at each finite column distance.
        var f = [Int](repeating: 0, count: width)
        var roots = [Int](repeating: 0, count: width)          // v: the parabolas of the envelope
        var bounds = [Double](repeating: 0, count: width + 1)  // z: where each takes over
        f.withUnsafeMutableBufferPointer { f in
            roots.withUnsafeMutableBufferPointer { v in
                bounds.withUnsafeMutableBufferPointer { z in
                    for y in 0..<height {
                        let r = y * width
                        var k = -1
                        for q in 0..<width {
                            let dq = distance[r + q]
                            if dq == infinity { continue }
                            f[q] = Int(dq)
                            if k < 0 {
                                k = 0; v[0] = q; z[0] = -.infinity; z[1] = .infinity
                                continue
                            }
                            var s = 0.0
                            while true {
                                let p = v[k]
                                s = Double((f[q] + q * q) - (f[p] + p * p)) / Double(2 * (q - p))
                                if s <= z[k] { k -= 1 } else { break }  // z[0] = −∞ stops it
                            }
                            k += 1
                            v[k] = q; z[k] = s; z[k + 1] = .infinity
                        }
                        guard k >= 0 else { continue }  // no mask pixel in any column: stays infinite
                        var j = 0
                        for q in 0..<width {
                            while z[j + 1] < Double(q) { j += 1 }
                            let p = v[j], dx = q - p
                            distance[r + q] = Int32(dx * dx + f[p])
                        }
                    }
                }
            }
        }
    }
}
