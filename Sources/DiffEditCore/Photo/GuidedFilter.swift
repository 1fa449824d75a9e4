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
/// Streaming, one row at a time: the box sums are running sums along y (a column sum per
/// statistic, a row added at the bottom and one taken off the top) and along x, so the work per
/// pixel does not depend on r; the only rows kept are the 2r + 1 rows of (a, b) the second mean
/// needs. Memory: (c² + 5c + 4)/2 doubles per column plus (2r + 1)(c + 1) floats per column — not
/// the box's area. Sums are in Double: a running sum loses nothing measurable over a photo's rows.
public enum GuidedFilter {
    /// Filters the input p over a width × height box. `guideRow(y, out)` writes row y of the guide
    /// (width × channels, interleaved), `inputRow(y, out)` row y of p (width values); each is asked
    /// for a row up to three times. `outputRow(y, q)` receives the rows of q in order, y = 0 ..< height.
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
        let ringRows = 2 * r + 1

        let columnStats = UnsafeMutableBufferPointer<Double>.allocate(capacity: w * stats)
        let windowStats = UnsafeMutableBufferPointer<Double>.allocate(capacity: stats)
        let columnAB = UnsafeMutableBufferPointer<Double>.allocate(capacity: w * ab)
        let windowAB = UnsafeMutableBufferPointer<Double>.allocate(capacity: ab)
        let ring = UnsafeMutableBufferPointer<Float>.allocate(capacity: ringRows * w * ab)
        let guide = UnsafeMutableBufferPointer<Float>.allocate(capacity: w * c)
        let input = UnsafeMutableBufferPointer<Float>.allocate(capacity: w)
        let q = UnsafeMutableBufferPointer<Float>.allocate(capacity: w)
        // The c × c system and its right-hand side, solved in place (Cholesky).
        let system = UnsafeMutableBufferPointer<Double>.allocate(capacity: c * c + c)
        defer {
            for p in [columnStats, windowStats, columnAB, windowAB, system] { p.deallocate() }
            for p in [ring, guide, input, q] { p.deallocate() }
        }
        columnStats.initialize(repeating: 0)
        columnAB.initialize(repeating: 0)

        /// Adds (sign 1) or takes off (sign −1) row y's statistics to the column sums.
        func accumulate(row y: Int, sign: Double) {
            guideRow(y, guide)
            inputRow(y, input)
            for x in 0..<w {
                let s = x * stats, g = x * c, p = Double(input[x])
                var t = 0
                for i in 0..<c {
                    let gi = Double(guide[g + i])
                    columnStats[s + i] += sign * gi
                    columnStats[s + iIp + i] += sign * gi * p
                    for j in i..<c {
                        columnStats[s + iII + t] += sign * gi * Double(guide[g + j])
                        t += 1
                    }
                }
                columnStats[s + iP] += sign * p
            }
        }

        /// Row k of (a, b) into the ring, from the column sums over rows max(0, k−r) ... min(h−1, k+r).
        func solveRow(_ k: Int) {
            let rows = Double(min(h - 1, k + r) - max(0, k - r) + 1)
            for v in 0..<stats { windowStats[v] = 0 }
            for x in 0..<min(r, w) { for v in 0..<stats { windowStats[v] += columnStats[x * stats + v] } }
            let out = (k % ringRows) * w * ab
            for x in 0..<w {
                if x + r < w { let s = (x + r) * stats; for v in 0..<stats { windowStats[v] += columnStats[s + v] } }
                if x - r - 1 >= 0 { let s = (x - r - 1) * stats; for v in 0..<stats { windowStats[v] -= columnStats[s + v] } }
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
                    ring[out + x * ab + i] = Float(a)
                    b -= a * windowStats[i] / n
                }
                ring[out + x * ab + c] = Float(b)
            }
        }

        /// Adds (sign 1) or takes off (−1) ring row k of (a, b) to their column sums.
        func accumulateAB(row k: Int, sign: Double) {
            let base = (k % ringRows) * w * ab
            for i in 0..<(w * ab) { columnAB[i] += sign * Double(ring[base + i]) }
        }

        // Rows 0 ..< r of the guide's statistics are in before (a, b) row 0 is solved.
        for y in 0..<min(r, h) { accumulate(row: y, sign: 1) }
        var solved = 0  // (a, b) rows solved so far
        func solveNext() {
            let k = solved
            if k + r < h { accumulate(row: k + r, sign: 1) }
            if k - r - 1 >= 0 { accumulate(row: k - r - 1, sign: -1) }
            solveRow(k)
            accumulateAB(row: k, sign: 1)
            solved += 1
        }
        for _ in 0..<min(r, h) { solveNext() }
        for y in 0..<h {
            // Row y − r − 1 leaves the (a, b) window before row y + r takes its ring slot.
            if y - r - 1 >= 0 { accumulateAB(row: y - r - 1, sign: -1) }
            if y + r < h { solveNext() }
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
