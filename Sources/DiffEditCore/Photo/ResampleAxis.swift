/// How one axis of a resampling reads its source: for each output index, the first source index
/// and the weights of the consecutive source samples it mixes. Resampling a plane is this along
/// x, then along y (SeparableResample).
///
/// An axis samples an interval [origin, origin + length) of a source of `sourceCount` samples,
/// sample i covering [i, i + 1) (its centre at i + 0.5): the whole source, or a box of it.
public struct ResampleAxis {
    public let sourceCount: Int
    public let outputCount: Int
    /// Output i mixes source samples first[i] ..< first[i] + taps[i] with weights[offset[i]...].
    let first: [Int]
    let taps: [Int]
    let offset: [Int]
    let weights: [Float]

    init(sourceCount: Int, outputCount: Int, rows: [(first: Int, weights: [Float])]) {
        self.sourceCount = sourceCount
        self.outputCount = outputCount
        first = rows.map { $0.first }
        taps = rows.map { $0.weights.count }
        var offsets: [Int] = []
        var all: [Float] = []
        for r in rows { offsets.append(all.count); all += r.weights }
        offset = offsets
        weights = all
    }

    /// Bilinear interpolation with half-pixel centres, as torch's
    /// `F.interpolate(mode="bilinear", align_corners=False)`: output i's centre lies at
    /// origin + (i + 0.5)·length/outputCount; in source indices that is c − 0.5, clamped below
    /// at 0 (torch clamps the coordinate) and, past the last sample, reading the last sample.
    /// With the whole source as the interval this is exactly torch's resize to `outputCount`.
    public static func bilinear(source: Int, origin: Double = 0, length: Double? = nil, to output: Int) -> ResampleAxis {
        build(source: source, origin: origin, length: length, to: output) { i, step in
            // torch computes the coordinate in float32: scale · (i + 0.5) − 0.5 with scale = in/out.
            var x = Float(origin) + Float(step) * (Float(i) + 0.5) - 0.5
            if x < 0 { x = 0 }
            var i0 = Int(x)
            var lambda = x - Float(i0)
            if i0 >= source - 1 { i0 = source - 1; lambda = 0 }
            return (first: i0, weights: lambda == 0 ? [1] : [1 - lambda, lambda])
        }
    }

    /// Area averaging: output i is the mean of the source over the interval it covers, a source
    /// sample counted by the part of it inside (as pamscale and PIL's box filter do). For
    /// shrinking, where bilinear would skip samples and alias.
    public static func area(source: Int, origin: Double = 0, length: Double? = nil, to output: Int) -> ResampleAxis {
        build(source: source, origin: origin, length: length, to: output) { i, step in
            let lo = max(0, origin + Double(i) * step), hi = min(Double(source), origin + Double(i + 1) * step)
            let a = min(Int(lo.rounded(.down)), source - 1)
            let b = max(a + 1, min(source, Int(hi.rounded(.up))))
            var w = [Float]()
            var total = 0.0
            for j in a..<b {
                let part = max(0, min(hi, Double(j + 1)) - max(lo, Double(j)))
                w.append(Float(part))
                total += part
            }
            if total > 0 { w = w.map { $0 / Float(total) } } else { w = [Float](repeating: 0, count: w.count); w[0] = 1 }
            return (first: a, weights: w)
        }
    }

    /// The axis whose output i reads `row(i, step)`, step = the interval's length per output sample
    /// (the interval: `length` source samples from `origin`, default the whole source).
    private static func build(source: Int, origin: Double, length: Double?, to output: Int,
                              _ row: (Int, Double) -> (first: Int, weights: [Float])) -> ResampleAxis {
        precondition(source > 0 && output > 0)
        let step = (length ?? Double(source)) / Double(output)
        return ResampleAxis(sourceCount: source, outputCount: output, rows: (0..<output).map { row($0, step) })
    }

    /// For images: bilinear when enlarging, area averaging when shrinking (no aliasing).
    public static func image(source: Int, origin: Double = 0, length: Double? = nil, to output: Int) -> ResampleAxis {
        let length = length ?? Double(source)
        return Double(output) >= length ? bilinear(source: source, origin: origin, length: length, to: output)
            : area(source: source, origin: origin, length: length, to: output)
    }
}
