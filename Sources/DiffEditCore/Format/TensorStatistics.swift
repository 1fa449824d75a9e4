/// Summary statistics of a record, as `tensor stats` prints them. Accumulated in Double over
/// finite elements; NaN and ±Inf are counted, not summed.
public struct TensorStatistics: Equatable {
    public var count = 0
    public var finite = 0
    public var nan = 0
    public var inf = 0
    public var min = Double.infinity
    public var max = -Double.infinity
    public var mean = 0.0
    public var std = 0.0

    public init(_ r: TensorRecord) {
        let values = r.doubles()
        count = values.count
        var sum = 0.0
        for v in values {
            if v.isNaN { nan += 1; continue }
            if v.isInfinite { inf += 1; continue }
            finite += 1
            sum += v
            min = Swift.min(min, v)
            max = Swift.max(max, v)
        }
        guard finite > 0 else { min = .nan; max = .nan; mean = .nan; std = .nan; return }
        mean = sum / Double(finite)
        var sq = 0.0
        for v in values where v.isFinite { sq += (v - mean) * (v - mean) }
        std = (sq / Double(finite)).squareRoot()
    }
}

/// Elementwise comparison of two records, as `tensor compare` reports it.
public struct TensorComparison {
    public var maxAbs: Double = 0
    public var maxRel: Double = 0
    /// Elements with |a − b| > atol + rtol·|b| (numpy.allclose's rule); NaN ≠ anything.
    public var outside = 0
    public var worstIndex = 0

    public init(_ a: TensorRecord, _ b: TensorRecord, atol: Double, rtol: Double) {
        let x = a.doubles(), y = b.doubles()
        for i in 0..<min(x.count, y.count) {
            let d = abs(x[i] - y[i])
            if x[i] == y[i] { continue }  // also equal infinities
            // Written so that a NaN difference or tolerance counts as outside, never as close.
            if !(d <= atol + rtol * abs(y[i])) { outside += 1 }
            if d.isNaN || d > maxAbs { if !maxAbs.isNaN { maxAbs = d; worstIndex = i } }
            let rel = d / Swift.max(abs(y[i]), 1e-12)
            if rel.isNaN || rel > maxRel { maxRel = rel }
        }
    }
}
