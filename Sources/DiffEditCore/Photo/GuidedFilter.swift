/// The guided filter with a colour (multi-channel) guide: He, Sun, Tang, "Guided Image
/// Filtering" (ECCV 2010; TPAMI 2013), Algorithm 1 with eq. (19)–(21). In every window ω_k of
/// radius r (a (2r+1)² square) the output is a linear function of the guide I,
///
///     a_k = (Σ_k + εU)⁻¹ (mean_k(I·p) − μ_k·p̄_k),    b_k = p̄_k − a_kᵀ μ_k,
///
/// (μ_k, Σ_k: the guide's mean and covariance in ω_k, p̄_k the input's mean) and each pixel takes
/// the mean of the models of the windows that hold it: q_i = ā_iᵀ I_i + b̄_i. So q follows the
/// input's values but the guide's edges. Windows are clipped at the box's border and every mean
/// is over the pixels a clipped window holds (He's boxfilter(·)/N).
///
/// Streaming, one row at a time: every box mean is a running sum along y (a column sum per
/// statistic, a row added at the bottom and one taken off the top) and along x, so the work per
/// pixel does not depend on r. The (a, b) row that leaves the second mean's window is solved
/// again by a second, trailing window of the statistics rather than kept: memory is O(width) —
/// 2·(c² + 5c + 4)/2 + (c + 1) doubles per column — whatever r and the height are. Sums are in
/// Double: a running sum loses nothing measurable over a photo's rows.
public enum GuidedFilter {
    /// Filters the input p over a width × height box. `guideRow(y, out)` writes row y of the guide
    /// (width × channels, interleaved), `inputRow(y, out)` row y of p (width values); each is asked
    /// for a row up to five times. `outputRow(y, q)` receives the rows of q in order, y = 0 ..< height.
    public static func filter(width: Int, height: Int, channels c: Int, radius r: Int, epsilon: Float,
                              guideRow: (Int, UnsafeMutableBufferPointer<Float>) -> Void,
                              inputRow: (Int, UnsafeMutableBufferPointer<Float>) -> Void,
                              outputRow: (Int, UnsafeBufferPointer<Float>) -> Void) {
        precondition(width > 0 && height > 0 && c >= 1 && c <= 8 && r >= 0 && epsilon >= 0)
        let w = width, h = height
        // Statistics per pixel: I (c), p, I·Iᵀ's upper triangle (c(c+1)/2), I·p (c).
        let pairs = c * (c + 1) / 2, stats = c + 1 + pairs + c
        let iP = c, iII = c + 1, iIp = c + 1 + pairs
        let ab = c + 1  // a (c) and b per pixel

        // The column sums of the statistics of a leading window (rows around the (a, b) row that
        // enters the second mean) and of a trailing one (around the row that leaves it).
        let leading = UnsafeMutableBufferPointer<Double>.allocate(capacity: w * stats)
        let trailing = UnsafeMutableBufferPointer<Double>.allocate(capacity: w * stats)
        let windowStats = UnsafeMutableBufferPointer<Double>.allocate(capacity: stats)
        let columnAB = UnsafeMutableBufferPointer<Double>.allocate(capacity: w * ab)
        let windowAB = UnsafeMutableBufferPointer<Double>.allocate(capacity: ab)
        let abRow = UnsafeMutableBufferPointer<Double>.allocate(capacity: w * ab)
        let guide = UnsafeMutableBufferPointer<Float>.allocate(capacity: w * c)
        let input = UnsafeMutableBufferPointer<Float>.allocate(capacity: w)
        let q = UnsafeMutableBufferPointer<Float>.allocate(capacity: w)
        // The c × c system and its right-hand side, solved in place (Cholesky).
        let system = UnsafeMutableBufferPointer<Double>.allocate(capacity: c * c + c)
        defer {
            for p in [leading, trailing, windowStats, columnAB, windowAB, abRow, system] { p.deallocate() }
            for p in [guide, input, q] { p.deallocate() }
        }
        leading.initialize(repeating: 0)
        trailing.initialize(repeating: 0)
        columnAB.initialize(repeating: 0)

        /// Adds (sign 1) or takes off (sign −1) row y's statistics to the column sums `sums`.
        func accumulate(_ sums: UnsafeMutableBufferPointer<Double>, row y: Int, sign: Double) {
            guideRow(y, guide)
            inputRow(y, input)
            for x in 0..<w {
                let s = x * stats, g = x * c, p = Double(input[x])
                var t = 0
                for i in 0..<c {
                    let gi = Double(guide[g + i])
                    sums[s + i] += sign * gi
                    sums[s + iIp + i] += sign * gi * p
                    for j in i..<c {
                        sums[s + iII + t] += sign * gi * Double(guide[g + j])
                        t += 1
                    }
                }
                sums[s + iP] += sign * p
            }
        }

        /// Moves a window holding the statistics of rows around `from` (its rows max(0, k−r) ...
        /// min(h−1, k+r) for k = from) to those around `from + 1`.
        func advance(_ sums: UnsafeMutableBufferPointer<Double>, from k: Int) {
            if k + 1 + r < h { accumulate(sums, row: k + 1 + r, sign: 1) }
            if k - r >= 0 { accumulate(sums, row: k - r, sign: -1) }
        }

        /// (a, b) of row k into `abRow`, from column sums over rows max(0, k−r) ... min(h−1, k+r).
        func solveRow(_ k: Int, _ sums: UnsafeMutableBufferPointer<Double>) {
            let rows = Double(min(h - 1, k + r) - max(0, k - r) + 1)
            for v in 0..<stats { windowStats[v] = 0 }
            for x in 0..<min(r, w) { for v in 0..<stats { windowStats[v] += sums[x * stats + v] } }
            for x in 0..<w {
                if x + r < w { let s = (x + r) * stats; for v in 0..<stats { windowStats[v] += sums[s + v] } }
                if x - r - 1 >= 0 { let s = (x - r - 1) * stats; for v in 0..<stats { windowStats[v] -= sums[s + v] } }
                let n = rows * Double(min(w - 1, x + r) - max(0, x - r) + 1)
                let pMean = windowStats[iP] / n
                // (Σ + εU) in `system` (lower triangle used), cov(I, p) after it.
                var t = 0
                for i in 0..<c {
                    let mi = windowStats[i] / n
                    for j in i..<c {
                        let v = windowStats[iII + t] / n - mi * windowStats[j] / n
                        system[j * c + i] = v + (i == j ? Double(epsilon) : 0)
                        t += 1
                    }
                    system[c * c + i] = windowStats[iIp + i] / n - mi * pMean
                }
                choleskySolve(system, c)
                var b = pMean
                for i in 0..<c {
                    let a = system[c * c + i]
                    abRow[x * ab + i] = a
                    b -= a * windowStats[i] / n
                }
                abRow[x * ab + c] = b
            }
        }

        /// Solves (a, b) row k from `sums` and adds (sign 1) or takes it off (−1) their column sums.
        func accumulateAB(row k: Int, _ sums: UnsafeMutableBufferPointer<Double>, sign: Double) {
            solveRow(k, sums)
            for i in 0..<(w * ab) { columnAB[i] += sign * abRow[i] }
        }

        // Both windows start around row 0; the leading one is at (a, b) row `lead`, the trailing
        // one at row `trail`.
        for y in 0..<min(r + 1, h) {
            accumulate(leading, row: y, sign: 1)
            accumulate(trailing, row: y, sign: 1)
        }
        var lead = 0, trail = 0
        for k in 0..<min(r, h) {  // (a, b) rows 0 ..< r: the second mean's window of row 0 but one
            if k > lead { advance(leading, from: lead); lead = k }
            accumulateAB(row: k, leading, sign: 1)
        }
        for y in 0..<h {
            // Row y − r − 1 leaves the second mean's window, row y + r enters it.
            if y - r - 1 >= 0 {
                let k = y - r - 1
                if k > trail { advance(trailing, from: trail); trail = k }
                accumulateAB(row: k, trailing, sign: -1)
            }
            if y + r < h {
                let k = y + r
                if k > lead { advance(leading, from: lead); lead = k }
                accumulateAB(row: k, leading, sign: 1)
            }
            let rows = Double(min(h - 1, y + r) - max(0, y - r) + 1)
            guideRow(y, guide)
            for v in 0..<ab { windowAB[v] = 0 }
            for x in 0..<min(r, w) { for v in 0..<ab { windowAB[v] += columnAB[x * ab + v] } }
            for x in 0..<w {
                if x + r < w { let s = (x + r) * ab; for v in 0..<ab { windowAB[v] += columnAB[s + v] } }
                if x - r - 1 >= 0 { let s = (x - r - 1) * ab; for v in 0..<ab { windowAB[v] -= columnAB[s + v] } }
                let n = rows * Double(min(w - 1, x + r) - max(0, x - r) + 1)
                var v = windowAB[c]
                for i in 0..<c { v += windowAB[i] * Double(guide[x * c + i]) }
                q[x] = Float(v / n)
            }
            outputRow(y, UnsafeBufferPointer(q))
        }
    }

    /// Solves S·a = rhs in place for a symmetric positive-definite c × c S (its lower triangle at
    /// s[j·c + i], j ≥ i; the right-hand side at s[c·c ..< c·c + c], overwritten by a).
    @inline(__always) static func choleskySolve(_ s: UnsafeMutableBufferPointer<Double>, _ c: Int) {
        // S = L·Lᵀ, L over S's lower triangle.
        for j in 0..<c {
            var d = s[j * c + j]
            for k in 0..<j { d -= s[j * c + k] * s[j * c + k] }
            let l = d > 0 ? d.squareRoot() : 1e-12  // ε > 0 keeps d > 0; a flat window with ε = 0 gets a = 0
            s[j * c + j] = l
            for i in (j + 1)..<max(j + 1, c) {
                var v = s[i * c + j]
                for k in 0..<j { v -= s[i * c + k] * s[j * c + k] }
                s[i * c + j] = v / l
            }
        }
        let rhs = c * c
        for i in 0..<c {  // L·z = rhs
            var v = s[rhs + i]
            for k in 0..<i { v -= s[i * c + k] * s[rhs + k] }
            s[rhs + i] = v / s[i * c + i]
        }
        for i in stride(from: c - 1, through: 0, by: -1) {  // Lᵀ·a = z
            var v = s[rhs + i]
            for k in (i + 1)..<max(i + 1, c) { v -= s[k * c + i] * s[rhs + k] }
            s[rhs + i] = v / s[i * c + i]
        }
    }
}
