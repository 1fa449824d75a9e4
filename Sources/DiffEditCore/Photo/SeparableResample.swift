/// A plane of interleaved samples [height, width, channels] resampled along x, then along y,
/// one output row at a time: the x pass over every source row is done once (source height ×
/// output width — small, the source being the model's picture or mask), each output row mixes a
/// few of those rows. So a 12-megapixel output never exists whole as floats.
public final class SeparableResample {
    public let x: ResampleAxis
    public let y: ResampleAxis
    public let channels: Int
    /// The x pass: [y.sourceCount, x.outputCount, channels].
    private var across: [Float]

    /// `source` holds y.sourceCount × x.sourceCount × channels samples.
    public init(_ source: UnsafeBufferPointer<Float>, channels: Int, x: ResampleAxis, y: ResampleAxis) {
        precondition(source.count == y.sourceCount * x.sourceCount * channels)
        self.x = x
        self.y = y
        self.channels = channels
        let (sw, ow) = (x.sourceCount, x.outputCount)
        var across = [Float](repeating: 0, count: y.sourceCount * ow * channels)
        x.first.withUnsafeBufferPointer { first in
            x.taps.withUnsafeBufferPointer { taps in
                x.offset.withUnsafeBufferPointer { offset in
                    x.weights.withUnsafeBufferPointer { w in
                        across.withUnsafeMutableBufferPointer { out in
                            for row in 0..<y.sourceCount {
                                let src = row * sw * channels, dst = row * ow * channels
                                for i in 0..<ow {
                                    for c in 0..<channels {
                                        var s: Float = 0
                                        for t in 0..<taps[i] { s += w[offset[i] + t] * source[src + (first[i] + t) * channels + c] }
                                        out[dst + i * channels + c] = s
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        self.across = across
    }

    public var outputWidth: Int { x.outputCount }
    public var outputHeight: Int { y.outputCount }

    /// Output row `row` (x.outputCount × channels samples) into `out`.
    public func row(_ row: Int, into out: UnsafeMutableBufferPointer<Float>) {
        let n = x.outputCount * channels
        precondition(out.count >= n && row >= 0 && row < y.outputCount)
        let first = y.first[row], taps = y.taps[row], offset = y.offset[row]
        across.withUnsafeBufferPointer { a in
            y.weights.withUnsafeBufferPointer { w in
                let w0 = w[offset], base0 = first * n
                for i in 0..<n { out[i] = w0 * a[base0 + i] }
                var t = 1
                while t < taps {
                    let wt = w[offset + t], base = (first + t) * n
                    for i in 0..<n { out[i] += wt * a[base + i] }
                    t += 1
                }
            }
        }
    }

    /// The whole output, [y.outputCount, x.outputCount, channels] (for small outputs: masks).
    public func all() -> [Float] {
        let n = x.outputCount * channels
        var out = [Float](repeating: 0, count: y.outputCount * n)
        out.withUnsafeMutableBufferPointer { o in
            for r in 0..<y.outputCount { row(r, into: UnsafeMutableBufferPointer(rebasing: o[(r * n)..<((r + 1) * n)])) }
        }
        return out
    }
}
