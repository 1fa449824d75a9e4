import XCTest
import DiffEditTestSupport
@testable import DiffEditCore

/// The photo room's pieces against values computed another way: torch's bilinear resize, a
/// brute-force distance, noise-diff-mask's own threshold.
final class PhotoCoreTests: XCTestCase {
    /// torch.nn.functional.interpolate(x, size=…, mode="bilinear", align_corners=False), printed
    /// by torch 2 in /opt/venv-ref (not needed to run the test): a 2×2 map to 4×4, and a 2×3 map
    /// to 3×7.
    func testBilinearMatchesTorchInterpolate() {
        let a = FloatMap(width: 2, height: 2, values: [1, 2, 3, 4]).resampled(toWidth: 4, height: 4)
        XCTAssertEqual(a.values, [1.0, 1.25, 1.75, 2.0, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3.0, 3.25, 3.75, 4.0])
        let b = FloatMap(width: 3, height: 2, values: [0, 1, 0.25, 0.5, 0.75, 1]).resampled(toWidth: 7, height: 3)
        let torch: [Float] = [0.0, 0.1428571492433548, 0.5714285969734192, 1.0, 0.6785714030265808, 0.3571428060531616, 0.25,
                              0.25, 0.3392857313156128, 0.6071428656578064, 0.875, 0.7678571343421936, 0.6607142686843872, 0.625,
                              0.5, 0.5357142686843872, 0.6428571939468384, 0.75, 0.8571428656578064, 0.9642857313156128, 1.0]
        for (x, y) in zip(b.values, torch) { XCTAssertEqual(x, y, accuracy: 1e-6) }
    }

    /// A box of the map: the right half of a 4-wide map resampled to 4 columns is the whole
    /// map's resample to 8 columns, right half (the sample centres are the same points).
    func testBilinearBoxIsPartOfTheWholeResample() {
        let map = FloatMap(width: 4, height: 3, values: (0..<12).map { Float(($0 * 7) % 5) / 4 })
        let whole = map.resampled(toWidth: 8, height: 6)
        let right = map.resampled(box: (2, 0, 2, 3), toWidth: 4, height: 6)
        for y in 0..<6 {
            for x in 0..<4 { XCTAssertEqual(right.values[y * 4 + x], whole.values[y * 8 + 4 + x], accuracy: 1e-6, "(\(x), \(y))") }
        }
        // The whole map as its own box, at its own size: the identity.
        XCTAssertEqual(map.resampled(toWidth: 4, height: 3), map)
    }

    /// Shrinking averages areas: 4 → 2 takes pairs, 3 → 2 takes one and a half samples each.
    func testAreaAveragingWhenShrinking() {
        let src: [Float] = [0, 4, 8, 12]
        let r = src.withUnsafeBufferPointer { SeparableResample($0, channels: 1, x: .image(source: 4, to: 2), y: .image(source: 1, to: 1)) }
        XCTAssertEqual(r.all(), [2, 10])
        let three: [Float] = [0, 3, 6]
        let t = three.withUnsafeBufferPointer { SeparableResample($0, channels: 1, x: .image(source: 3, to: 2), y: .image(source: 1, to: 1)) }
        let v = t.all()
        XCTAssertEqual(v[0], (0 * 1 + 3 * 0.5) / 1.5, accuracy: 1e-6)
        XCTAssertEqual(v[1], (3 * 0.5 + 6 * 1) / 1.5, accuracy: 1e-6)
    }

    /// Squared distances against brute force on random masks (sparse, dense, empty, one pixel).
    func testDistanceTransformIsExact() {
        var g = SystemRandomNumberGenerator()
        for (w, h, density) in [(17, 11, 0.05), (31, 23, 0.4), (9, 13, 0.0), (1, 7, 0.3), (40, 1, 0.1), (25, 25, 0.003)] {
            var inside = (0..<(w * h)).map { _ in Double.random(in: 0..<1, using: &g) < density ? UInt8(1) : 0 }
            if density == 0.003 { inside = [UInt8](repeating: 0, count: w * h); inside[7 * w + 3] = 1 }
            var d = [Int32](repeating: -1, count: w * h)
            inside.withUnsafeBufferPointer { m in d.withUnsafeMutableBufferPointer { DistanceTransform.squared(inside: m, width: w, height: h, into: $0) } }
            for y in 0..<h {
                for x in 0..<w {
                    var best = Int.max
                    for yy in 0..<h { for xx in 0..<w where inside[yy * w + xx] != 0 { best = min(best, (x - xx) * (x - xx) + (y - yy) * (y - yy)) } }
                    XCTAssertEqual(d[y * w + x], best == Int.max ? DistanceTransform.infinity : Int32(best), "\(w)x\(h) (\(x), \(y))")
                }
            }
        }
    }

    /// The weights of a PixelMask against a brute-force definition: bilinear map (checked above)
    /// thresholded, dilated by a disc, feathered; weight 0 exactly where no dilated pixel is
    /// nearer than F, 1 on the dilated mask, in (0, 1) between.
    func testPixelMaskWeightsAgainstBruteForce() {
        let map = FloatMap(width: 5, height: 4, values: [0, 0, 0, 0, 0, 0, 0.9, 0.2, 0, 0, 0, 0.6, 0.8, 0, 0, 0, 0, 0, 0, 0.7])
        for (dilate, feather) in [(0, 0), (0, 4), (2, 3), (3, 0), (1, 7)] {
            let (w, h) = (37, 29)
            let pm = PixelMask(map: map, width: w, height: h, threshold: 0.5, dilate: dilate, feather: feather)
            let up = map.resampled(toWidth: w, height: h).values
            let base = up.map { $0 > 0.5 }
            var dilated = base
            for y in 0..<h { for x in 0..<w where !base[y * w + x] {
                for yy in 0..<h { for xx in 0..<w where base[yy * w + xx] && (x - xx) * (x - xx) + (y - yy) * (y - yy) <= dilate * dilate { dilated[y * w + x] = true } }
            } }
            XCTAssertEqual(pm.inside.map { $0 != 0 }, dilated, "dilate \(dilate)")
            let weights = pm.allWeights()
            for y in 0..<h {
                for x in 0..<w {
                    var best = Int.max
                    for yy in 0..<h { for xx in 0..<w where dilated[yy * w + xx] { best = min(best, (x - xx) * (x - xx) + (y - yy) * (y - yy)) } }
                    let wgt = weights[y * w + x]
                    if best == 0 { XCTAssertEqual(wgt, 1) }
                    else if best >= feather * feather { XCTAssertEqual(wgt, 0, "(\(x), \(y)) at d²=\(best), feather \(feather)") }
                    else {
                        XCTAssertGreaterThan(wgt, 0); XCTAssertLessThan(wgt, 1)
                        let t = 1 - Float(Double(best).squareRoot() / Double(feather))
                        XCTAssertEqual(wgt, t * t * (3 - 2 * t), accuracy: 1e-6)
                    }
                }
            }
        }
    }

    /// The soft map at the latent size, thresholded by the pixel mask's rule, is noise-diff-mask's
    /// own mask — including values exactly at 0.5, which both leave out.
    func testSoftMapAtLatentSizeGivesNoiseDiffMasksMask() {
        var g = SystemRandomNumberGenerator()
        var map = (0..<(16 * 16)).map { _ in Float.random(in: 0..<3, using: &g) }
        let (_, soft, mask) = NoiseDiffMask.threshold(map, ratio: 3)
        var softMap = soft
        softMap[5] = 0.5; softMap[6] = 0.5000001  // the edge itself
        let expected = softMap.map { $0 <= 0.5 ? Float(0) : 1 }  // NoiseDiffMask.threshold's own test
        map = softMap
        let pm = PixelMask(map: FloatMap(width: 16, height: 16, values: map), width: 16, height: 16, threshold: 0.5, dilate: 0, feather: 0)
        XCTAssertEqual(pm.inside.map { Float($0) }, expected)
        let plain = PixelMask(map: FloatMap(width: 16, height: 16, values: soft), width: 16, height: 16, threshold: 0.5, dilate: 0, feather: 0)
        XCTAssertEqual(plain.inside.map { Float($0) }, mask)
    }

    func testBoundingBoxMarginAspectAndEdges() {
        // A 16×16 mask over a 320×160 picture (20 × 10 pixels a cell); cells x 4...5, y 6...7.
        var v = [Float](repeating: 0, count: 16 * 16)
        for y in 6...7 { for x in 4...5 { v[y * 16 + x] = 1 } }
        let map = FloatMap(width: 16, height: 16, values: v)
        // Tight: pixels x 80..<120, y 60..<80; margin 0, aspect 2:1 (40×20 already): itself.
        XCTAssertEqual(MaskBoundingBox.box(map, threshold: 0.5, width: 320, height: 160, margin: 0, aspect: (2, 1)),
                       PixelBox(x: 80, y: 60, width: 40, height: 20))
        // Margin 10: 60×40 at (70, 50); aspect 1:1 grows the width to... no, the height to 60 → 60×60 centred at y 70.
        XCTAssertEqual(MaskBoundingBox.box(map, threshold: 0.5, width: 320, height: 160, margin: 10, aspect: (1, 1)),
                       PixelBox(x: 70, y: 40, width: 60, height: 60))
        // Default margin: max(⌈40/4⌉, 2 cells = 40) = 40: 120×100 → 1:1 120×120 centred at (100, 70): y shifted to 10.
        XCTAssertEqual(MaskBoundingBox.box(map, threshold: 0.5, width: 320, height: 160, margin: nil, aspect: (1, 1)),
                       PixelBox(x: 40, y: 10, width: 120, height: 120))
        // At the corner: shifted inside.
        var corner = [Float](repeating: 0, count: 16 * 16)
        corner[0] = 1
        XCTAssertEqual(MaskBoundingBox.box(FloatMap(width: 16, height: 16, values: corner), threshold: 0.5, width: 320, height: 160,
                                           margin: 5, aspect: (1, 1)), PixelBox(x: 0, y: 0, width: 25, height: 25))
        // Too large for the picture: the margin cut to the picture (320×160), then shrunk to its
        // height at 1:1, centred on the picture.
        XCTAssertEqual(MaskBoundingBox.box(map, threshold: 0.5, width: 320, height: 160, margin: 1000, aspect: (1, 1)),
                       PixelBox(x: 80, y: 0, width: 160, height: 160))
        // Empty: nil.
        XCTAssertNil(MaskBoundingBox.box(FloatMap(width: 16, height: 16, values: [Float](repeating: 0.5, count: 256)), threshold: 0.5,
                                         width: 320, height: 160, margin: 0, aspect: (1, 1)))
    }

    func testCutWholeBoxIsIdentityOnASoftMap() throws {
        let values = (0..<(8 * 6)).map { Float(($0 * 37) % 11) / 10 }
        let source = MaskSource(map: FloatMap(width: 8, height: 6, values: values), isSoft: true,
                                record: TensorRecord(name: "mask.soft", shape: [1, 1, 6, 8], floats: values, metadata: ["model.fingerprint": "x", "scale": "4"]))
        let r = try MaskCut.cut(source, box: PixelBox(x: 0, y: 0, width: 32, height: 24), pictureWidth: 32, pictureHeight: 24, toWidth: 8, height: 6)
        XCTAssertEqual(r.name, "mask.soft")
        XCTAssertEqual(r.floats(), values)
        XCTAssertEqual(r.metadata["model.fingerprint"], "x")
        XCTAssertNil(r.metadata["scale"])
        XCTAssertEqual(r.metadata["region"], "0,0,32,24")
        // A known box: the right half (x 16..<32) of the 32-pixel picture, i.e. cells 4..<8, at 4 wide: the cells themselves.
        let half = try MaskCut.cut(source, box: PixelBox(x: 16, y: 0, width: 16, height: 24), pictureWidth: 32, pictureHeight: 24, toWidth: 4, height: 6)
        for y in 0..<6 { for x in 0..<4 { XCTAssertEqual(half.floats()[y * 4 + x], values[y * 8 + 4 + x], accuracy: 1e-6) } }
        // A binary mask stays binary.
        let binary = MaskSource(map: FloatMap(width: 2, height: 1, values: [0, 1]), isSoft: false)
        let b = try MaskCut.cut(binary, box: PixelBox(x: 0, y: 0, width: 8, height: 4), pictureWidth: 8, pictureHeight: 4, toWidth: 8, height: 1)
        XCTAssertEqual(b.name, "mask")
        XCTAssertEqual(b.floats(), [0, 0, 0, 0, 1, 1, 1, 1])  // bilinear 0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1 thresholded
    }
}
