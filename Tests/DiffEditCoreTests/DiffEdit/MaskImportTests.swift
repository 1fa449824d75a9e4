import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// Masks from outside (denoise --mask IMAGE), --dilate, and noise-diff-mask --soft-output.
final class MaskImportTests: XCTestCase {
    // MARK: area average

    /// The area average against a brute-force one: each pixel split into 64 × 64 sub-samples, each
    /// counted in the cell its centre falls in.
    func testAreaAverageMatchesSupersampling() {
        for (w, h, cw, ch) in [(6, 6, 4, 4), (7, 5, 3, 2), (64, 48, 16, 12), (5, 3, 16, 12), (1, 1, 3, 3), (50, 50, 16, 16)] {
            var plane = [Float](repeating: 0, count: w * h)
            var state: UInt32 = 12345
            for i in plane.indices { state = state &* 1_664_525 &+ 1_013_904_223; plane[i] = Float(state >> 8) / Float(1 << 24) }
            let got = MaskImport.reduce(plane, width: w, height: h, toWidth: cw, height: ch)
            let sub = 64
            var sum = [Double](repeating: 0, count: cw * ch), count = [Double](repeating: 0, count: cw * ch)
            for y in 0..<(h * sub) {
                for x in 0..<(w * sub) {
                    // Centre of the sub-sample in pixel units → the cell it lies in.
                    let px = (Double(x) + 0.5) / Double(sub), py = (Double(y) + 0.5) / Double(sub)
                    let cx = Int(px * Double(cw) / Double(w)), cy = Int(py * Double(ch) / Double(h))
                    sum[cy * cw + cx] += Double(plane[(y / sub) * w + x / sub])
                    count[cy * cw + cx] += 1
                }
            }
            let want = zip(sum, count).map { $0 / $1 }
            _ = assertClose(got, want, atol: 2e-3, "area average \(w)x\(h) → \(cw)x\(ch)")
        }
        // Whole blocks: the block mean exactly; the weights of every cell sum to 1.
        XCTAssertEqual(MaskImport.reduce([0, 1, 1, 1, 0, 0, 0, 1], width: 4, height: 2, toWidth: 2, height: 1), [0.25, 0.75])
        for (n, m) in [(6, 4), (7, 3), (3, 16), (64, 16)] {
            for cell in MaskImport.areaWeights(from: n, to: m) {
                XCTAssertEqual(cell.map(\.1).reduce(0, +), 1, accuracy: 1e-12)
            }
        }
    }

    // MARK: threshold at 0.5, at its edge

    /// Writes a binary-maxval PGM (maxval 255) and loads it as denoise --mask does.
    func loadMask(_ pixels: [UInt8], width: Int, height: Int, cells: (w: Int, h: Int)) throws -> [Float] {
        let dir = try temporaryDirectory(self)
        let file = dir.appendingPathComponent("m.pgm")
        try Data(Array("P5\n\(width) \(height)\n255\n".utf8) + pixels).write(to: file)
        return try MaskImport.load(file.path, folder: ModelFolder(root: Fixtures.path("sd1")), latentHeight: cells.h,
                                   latentWidth: cells.w, pictureSize: nil, allowNonfinite: false).data
    }

    /// Cells of 8 × 8 pixels with n of 64 white: edited exactly when n ≥ 32 (half or more), so
    /// 0.39, 0.41, 0.45, 0.48 keep and 0.5 edits. The expectation is counted, not computed by
    /// MaskImport: a threshold of 0.4, or > for ≥, fails here.
    func testBinaryCellsAreEditedFromHalfWhiteOn() throws {
        let counts = [0, 1, 25, 26, 27, 29, 30, 31, 32, 33, 40, 63, 64, 31, 32, 16]
        var pixels = [UInt8](repeating: 0, count: 32 * 32)
        for (cell, n) in counts.enumerated() {
            let cx = cell % 4, cy = cell / 4
            for k in 0..<n { pixels[(cy * 8 + k / 8) * 32 + cx * 8 + k % 8] = 255 }
        }
        let mask = try loadMask(pixels, width: 32, height: 32, cells: (4, 4))
        XCTAssertEqual(mask, counts.map { $0 >= 32 ? 1 : 0 })
    }

    /// Uniform grey cells: 127/255 (0.498) keeps, 128/255 (0.502) edits; 102/255 (0.4) keeps.
    func testGreyCellsAreThresholdedAtHalf() throws {
        let levels: [UInt8] = [0, 102, 115, 127, 128, 140, 200, 255, 127]
        var pixels = [UInt8](repeating: 0, count: 24 * 24)
        for (cell, v) in levels.enumerated() {
            let cx = cell % 3, cy = cell / 3
            for y in 0..<8 { for x in 0..<8 { pixels[(cy * 8 + y) * 24 + cx * 8 + x] = v } }
        }
        XCTAssertEqual(try loadMask(pixels, width: 24, height: 24, cells: (3, 3)), levels.map { 2 * Int($0) >= 255 ? 1 : 0 })
    }

    /// A mask stretched to 1.5 pixels per cell: each cell averages 2/3 and 1/3 of its pixels
    /// per axis. The expectation is the exact rational mean of the 3 × 3 sub-pixels of the
    /// image doubled (each pixel 2 × 2), edited when 2·sum ≥ 9·255 (never a tie: 9·255 is odd).
    func testStretchedMaskCellsAreExactAreaAverages() throws {
        var state: UInt32 = 7
        var seen = Set<Float>()
        for _ in 0..<20 {
            var pixels = [UInt8](repeating: 0, count: 6 * 6)
            for i in pixels.indices { state = state &* 1_664_525 &+ 1_013_904_223; pixels[i] = UInt8(96 + (state >> 24) % 64) }
            var want: [Float] = []
            for cy in 0..<4 {
                for cx in 0..<4 {
                    var sum = 0
                    for y in (cy * 3)..<(cy * 3 + 3) { for x in (cx * 3)..<(cx * 3 + 3) { sum += Int(pixels[(y / 2) * 6 + x / 2]) } }
                    want.append(2 * sum >= 9 * 255 ? 1 : 0)
                }
            }
            XCTAssertEqual(try loadMask(pixels, width: 6, height: 6, cells: (4, 4)), want)
            seen.formUnion(want)
        }
        XCTAssertEqual(seen, [0, 1], "cells on both sides of the threshold, or this test proves nothing")
    }

    // MARK: dilation

    func testDilationIsASquareOfSide2NPlus1ClippedAtTheBorder() {
        var plane = [Float](repeating: 0, count: 49)
        plane[3 * 7 + 3] = 1
        let one = MaskDilation.dilate(Tensor(shape: [1, 1, 7, 7], data: plane), cells: 1).data
        for y in 0..<7 { for x in 0..<7 { XCTAssertEqual(one[y * 7 + x], abs(y - 3) <= 1 && abs(x - 3) <= 1 ? 1 : 0, "(\(x), \(y))") } }
        let two = MaskDilation.dilate(Tensor(shape: [1, 1, 7, 7], data: plane), cells: 2).data
        XCTAssertEqual(two.reduce(0, +), 25)
        XCTAssertEqual(MaskDilation.dilate(Tensor(shape: [1, 1, 7, 7], data: plane), cells: 0).data, plane)
        // A corner cell; two planes of a batch, each on its own.
        var corner = [Float](repeating: 0, count: 2 * 49)
        corner[0] = 1
        let c = MaskDilation.dilate(Tensor(shape: [2, 1, 7, 7], data: corner), cells: 2).data
        XCTAssertEqual(c[0..<49].reduce(0, +), 9)
        XCTAssertEqual(c[49..<98].reduce(0, +), 0)
        XCTAssertEqual(MaskDilation.dilate(Tensor(shape: [1, 1, 7, 7], data: plane), cells: 64).data.reduce(0, +), 49)
    }

    // MARK: through the tools

}
