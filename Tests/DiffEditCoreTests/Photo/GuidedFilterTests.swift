import XCTest
@testable import DiffEditCore

/// The guided filter (GuidedFilter, PixelMask's refinement) against the formula computed the
/// slow way, window by window, and on a picture whose answer is known by construction.
final class GuidedFilterTests: XCTestCase {
    /// Deterministic values in [0, 1] (an LCG), so a failure reproduces.
    static func uniform(_ n: Int, seed: UInt64) -> [Float] {
        var s = seed
        return (0..<n).map { _ in
            s = s &* 6364136223846793005 &+ 1442695040888963407
            return Float((s >> 40) % 10001) / 10000
        }
    }

    /// He et al.'s Algorithm 1 (colour guide, eq. 19–21) written out per pixel, O(r²) each:
    /// every window's mean, covariance and (Σ + εU)⁻¹ solved by Gaussian elimination with
    /// partial pivoting, then each pixel's q the mean over the windows that hold it of aᵀI + b.
    /// Windows clipped at the border, means over the pixels they hold.
    static func naive(guide: [Float], input: [Float], width w: Int, height h: Int, channels c: Int,
                      radius r: Int, epsilon: Double) -> [Double] {
        var a = [[Double]](repeating: [], count: w * h), b = [Double](repeating: 0, count: w * h)
        for y in 0..<h { for x in 0..<w {
            var n = 0.0, mu = [Double](repeating: 0, count: c), pm = 0.0
            var ii = [[Double]](repeating: [Double](repeating: 0, count: c), count: c), ip = [Double](repeating: 0, count: c)
            for yy in max(0, y - r)...min(h - 1, y + r) { for xx in max(0, x - r)...min(w - 1, x + r) {
                let k = yy * w + xx, p = Double(input[k])
                n += 1; pm += p
                for i in 0..<c {
                    let gi = Double(guide[k * c + i])
                    mu[i] += gi; ip[i] += gi * p
                    for j in 0..<c { ii[i][j] += gi * Double(guide[k * c + j]) }
                }
            } }
            pm /= n
            for i in 0..<c { mu[i] /= n; ip[i] /= n }
            // [Σ + εU | cov(I, p)]
            var m = (0..<c).map { i in (0..<c).map { j in ii[i][j] / n - mu[i] * mu[j] + (i == j ? epsilon : 0) } + [ip[i] - mu[i] * pm] }
            for col in 0..<c {
                let pivot = (col..<c).max { abs(m[$0][col]) < abs(m[$1][col]) }!
                m.swapAt(col, pivot)
                for row in 0..<c where row != col {
                    let f = m[row][col] / m[col][col]
                    for j in col...c { m[row][j] -= f * m[col][j] }
                }
            }
            let ak = (0..<c).map { m[$0][c] / m[$0][$0] }
            a[y * w + x] = ak
            b[y * w + x] = pm - zip(ak, mu).map { $0 * $1 }.reduce(0, +)
        } }
        var q = [Double](repeating: 0, count: w * h)
        for y in 0..<h { for x in 0..<w {
            var n = 0.0, v = 0.0
            for yy in max(0, y - r)...min(h - 1, y + r) { for xx in max(0, x - r)...min(w - 1, x + r) {
                let k = yy * w + xx
                n += 1
                v += b[k]
                for i in 0..<c { v += a[k][i] * Double(guide[(y * w + x) * c + i]) }
            } }
            q[y * w + x] = v / n
        } }
        return q
    }

    static func filtered(guide: [Float], input: [Float], width w: Int, height h: Int, channels c: Int,
                         radius r: Int, epsilon: Float) -> [Float] {
        var out = [Float](repeating: .nan, count: w * h)
        var rowsSeen: [Int] = []
        GuidedFilter.filter(width: w, height: h, channels: c, radius: r, epsilon: epsilon,
                            guideRow: { y, o in for i in 0..<(w * c) { o[i] = guide[y * w * c + i] } },
                            inputRow: { y, o in for i in 0..<w { o[i] = input[y * w + i] } },
                            outputRow: { y, q in rowsSeen.append(y); for x in 0..<w { out[y * w + x] = q[x] } })
        XCTAssertEqual(rowsSeen, Array(0..<h), "rows in order, each once")
        return out
    }

    func testFilterMatchesTheFormulaWindowByWindow() {
        // Grey, colour and a six-channel guide (colour + edit); radius 0, small, larger than the box.
        let cases: [(w: Int, h: Int, c: Int, r: Int, eps: Float)] = [
            (13, 9, 3, 2, 1e-2), (13, 9, 3, 1, 1e-4), (7, 11, 1, 3, 1e-3), (10, 6, 6, 2, 1e-2),
            (5, 4, 3, 7, 1e-2), (9, 8, 3, 0, 1e-2), (1, 12, 3, 2, 1e-2), (17, 1, 1, 3, 1e-3),
        ]
        for (k, t) in cases.enumerated() {
            let guide = Self.uniform(t.w * t.h * t.c, seed: UInt64(2 * k + 1))
            let input = Self.uniform(t.w * t.h, seed: UInt64(2 * k + 2))
            let want = Self.naive(guide: guide, input: input, width: t.w, height: t.h, channels: t.c, radius: t.r, epsilon: Double(t.eps))
            let got = Self.filtered(guide: guide, input: input, width: t.w, height: t.h, channels: t.c, radius: t.r, epsilon: t.eps)
            var worst = 0.0
            for (g, w) in zip(got, want) { worst = max(worst, abs(Double(g) - w)) }
            XCTAssertLessThan(worst, 2e-5, "case \(k) \(t): max |q − naive| = \(worst)")
        }
    }

    /// A constant guide: no edge to follow, so a = 0, b is the box mean of p, and q the box mean
    /// of that (two box means, each over the clipped window).
    func testFlatGuideGivesTheBoxMeanOfTheBoxMean() {
        let (w, h, r) = (11, 7, 2)
        let input = Self.uniform(w * h, seed: 9)
        let q = Self.filtered(guide: [Float](repeating: 0.4, count: w * h * 3), input: input, width: w, height: h, channels: 3,
                              radius: r, epsilon: 1e-2)
        func boxMean(_ v: [Double]) -> [Double] {
            (0..<(w * h)).map { i in
                let (x, y) = (i % w, i / w)
                var s = 0.0, n = 0.0
                for yy in max(0, y - r)...min(h - 1, y + r) { for xx in max(0, x - r)...min(w - 1, x + r) { s += v[yy * w + xx]; n += 1 } }
                return s / n
            }
        }
        let want = boxMean(boxMean(input.map(Double.init)))
        for i in 0..<(w * h) { XCTAssertEqual(Double(q[i]), want[i], accuracy: 1e-5, "pixel \(i)") }
    }

    /// A red rectangle on a light background; the soft map (16×16 cells of 4 px) is 1 on the
    /// rectangle's cells, 0.8 on the ring around them and 0.3 on the next, so the bilinear map
    /// above 0.5 runs several pixels past every side of the rectangle. Refined, the mask is the
    /// rectangle, pixel for pixel (its right edge, at x = 30, cuts through a cell).
    func testRefinedMaskSnapsToTheEdgeTheCoarseMapStraddles() {
        let (w, h) = (64, 64)
        func isObject(_ x: Int, _ y: Int) -> Bool { x >= 8 && x < 30 && y >= 12 && y < 44 }
        var picture = [Float](repeating: 0, count: w * h * 3)
        for y in 0..<h { for x in 0..<w {
            let rgb: [Float] = isObject(x, y) ? [0.8, 0.2, 0.2] : [0.9, 0.9, 0.9]
            for c in 0..<3 { picture[(y * w + x) * 3 + c] = rgb[c] }
        } }
        var soft = [Float](repeating: 0, count: 256)
        for y in 0..<16 { for x in 0..<16 {
            if y >= 3 && y < 11 && x >= 2 && x < 8 { soft[y * 16 + x] = 1 }
            else if y >= 2 && y < 12 && x >= 1 && x < 9 { soft[y * 16 + x] = 0.8 }
            else if y >= 1 && y < 13 && x < 10 { soft[y * 16 + x] = 0.3 }
        } }
        let map = FloatMap(width: 16, height: 16, values: soft)
        let coarse = PixelMask(map: map, width: w, height: h, threshold: 0.5, dilate: 0, feather: 0)
        var extra = 0
        for y in 0..<h { for x in 0..<w where coarse.inside[y * w + x] != 0 && !isObject(x, y) { extra += 1 } }
        XCTAssertGreaterThan(extra, 400, "the coarse mask should straddle the rectangle's edges")
        let refine = PixelMask.Refinement(radius: 24, epsilon: 0.01, channels: 3) { y, x0, out in
            for i in 0..<out.count { out[i] = picture[(y * w + x0) * 3 + i] }
        }
        let refined = PixelMask(map: map, width: w, height: h, threshold: 0.5, dilate: 0, feather: 3, refine: refine)
        for y in 0..<h { for x in 0..<w {
            XCTAssertEqual(refined.inside[y * w + x] != 0, isObject(x, y), "(\(x), \(y))")
        } }
        // The feather still reaches 0 at 3 px from the refined mask, and is 1 on it.
        let weights = refined.allWeights()
        XCTAssertEqual(weights[20 * w + 29], 1)
        XCTAssertGreaterThan(weights[20 * w + 30], 0)
        XCTAssertEqual(weights[20 * w + 33], 0)
    }

    /// The refinement runs over the coarse mask's box grown by 4r only: there it is the filter
    /// over the whole picture, thresholded; beyond it nothing is in the mask.
    func testRefinementOverTheMasksBoxIsTheWholePicturesFilter() {
        let (w, h, r) = (120, 100, 6)
        var soft = [Float](repeating: 0, count: 30 * 25)
        for y in 0..<25 { for x in 0..<30 {
            let d = (Float(x) - 9.2) * (Float(x) - 9.2) + (Float(y) - 14.7) * (Float(y) - 14.7)
            soft[y * 30 + x] = max(0, min(1, 1.1 - d / 10))
        } }
        let map = FloatMap(width: 30, height: 25, values: soft)
        // A smooth picture with an edge through the blob.
        var picture = Self.uniform(w * h * 3, seed: 77).map { $0 * 0.2 }
        for y in 0..<h { for x in 0..<w where Double(x) + 0.6 * Double(y) < 50 { for c in 0..<3 { picture[(y * w + x) * 3 + c] += 0.7 } } }
        let refine = PixelMask.Refinement(radius: r, epsilon: 1e-3, channels: 3) { y, x0, out in
            for i in 0..<out.count { out[i] = picture[(y * w + x0) * 3 + i] }
        }
        let refined = PixelMask(map: map, width: w, height: h, threshold: 0.5, dilate: 0, feather: 0, refine: refine)
        let p = map.resampled(toWidth: w, height: h).values
        let q = Self.filtered(guide: picture, input: p, width: w, height: h, channels: 3, radius: r, epsilon: 1e-3)
        var inside = 0
        for i in 0..<(w * h) {
            XCTAssertEqual(refined.inside[i] != 0, q[i] > 0.5, "pixel (\(i % w), \(i / w)): q = \(q[i])")
            inside += Int(refined.inside[i])
        }
        XCTAssertGreaterThan(inside, 100)
        XCTAssertLessThan(refined.reach.x + refined.reach.width, w - 20, "the blob's box is well inside the picture")
    }

    /// A flat guide has no edge to follow: the filter only smooths the map, and a blob narrower
    /// than the radius falls below the threshold everywhere. Then the coarse mask is kept.
    func testARefinementThatLeavesNothingKeepsTheCoarseMask() {
        var soft = [Float](repeating: 0, count: 256)
        soft[5 * 16 + 7] = 0.9
        let map = FloatMap(width: 16, height: 16, values: soft)
        let coarse = PixelMask(map: map, width: 64, height: 64, threshold: 0.5, dilate: 0, feather: 2)
        XCTAssertTrue(coarse.inside.contains(1))
        let flat = PixelMask.Refinement(radius: 16, epsilon: 0.01, channels: 3) { _, _, out in
            for i in 0..<out.count { out[i] = 0.5 }
        }
        let p = map.resampled(toWidth: 64, height: 64).values
        let q = Self.filtered(guide: [Float](repeating: 0.5, count: 64 * 64 * 3), input: p, width: 64, height: 64, channels: 3,
                              radius: 16, epsilon: 0.01)
        XCTAssertLessThan(q.max()!, 0.5, "the smoothed blob is below the threshold everywhere")
        let refined = PixelMask(map: map, width: 64, height: 64, threshold: 0.5, dilate: 0, feather: 2, refine: flat)
        XCTAssertEqual(refined.inside, coarse.inside)
        XCTAssertEqual(refined.allWeights(), coarse.allWeights())
    }
}
