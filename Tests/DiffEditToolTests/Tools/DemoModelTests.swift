import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// The bundled demo model (demo/model, trained by demo/train.py) through our own tools: the mask
/// that noise-diff-mask finds must sit on the object the captions disagree about.
final class DemoModelTests: XCTestCase {
    static let repo = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
    static let scene = repo.appendingPathComponent("demo/scenes/red-circle.ppm").path
    static let truth = repo.appendingPathComponent("demo/scenes/red-circle.mask.pgm").path

    /// Runs `steps` (shell lines) in a fresh folder holding the demo scene's posterior and the
    /// showcase captions' embeddings (src.tensor, dst.tensor), with the demo model selected.
    func showcase(_ steps: String) throws -> URL {
        let dir = try temporaryDirectory(self)
        let r = try sh("""
            cd '\(dir.path)'
            export DIFFEDIT_MODEL='\(Self.repo.appendingPathComponent("demo/model").path)'
            tokenize 'a red circle on a striped white background' | encode-text > src.tensor
            tokenize 'a blue circle on a striped white background' | encode-text > dst.tensor
            vae-encode '\(Self.scene)' > posterior.tensor
            \(steps)
            """)
        XCTAssertEqual(r.status, 0, r.err)
        return dir
    }

    func testNoiseDiffMaskFindsTheCircleInTheDemoScene() throws {
        let truth = Self.truth
        let dir = try showcase("noise-diff-mask --source src.tensor --target dst.tensor --seed 0 < posterior.tensor > mask.tensor")
        let mask = try TensorStream.readAll(path: dir.appendingPathComponent("mask.tensor").path)[0]
        XCTAssertEqual(mask.shape, [1, 1, 16, 16])
        let m = mask.floats()
        // Ground truth at latent resolution: a cell is the object when most of its 4x4 pixels are.
        let image = try NetpbmImage.readAll(try ByteReader(path: truth))[0]
        var intersection = 0, union = 0
        for y in 0..<16 {
            for x in 0..<16 {
                var on = 0
                for dy in 0..<4 { for dx in 0..<4 { if image.samples[(y * 4 + dy) * 64 + x * 4 + dx] > 0.5 { on += 1 } } }
                let gt = on >= 8, pred = m[y * 16 + x] > 0.5
                if gt && pred { intersection += 1 }
                if gt || pred { union += 1 }
            }
        }
        let iou = Double(intersection) / Double(max(union, 1))
        XCTAssertGreaterThanOrEqual(iou, 0.6, "mask IoU with the circle is \(iou)")
    }

    /// The main job's claim, through every tool: the bundled scene's red circle comes out blue and
    /// the background outside the circle stays as it was (demo/BENCHMARK.md measures this on
    /// 200 scenes; this is the one examples.sh shows, with its demo settings: guidance 3, empty
    /// negative prompt).
    func testShowcaseEditTurnsTheCircleBlueAndKeepsTheBackground() throws {
        let dir = try showcase("""
            noise-diff-mask --source src.tensor --target dst.tensor --seed 0 --guidance 3 < posterior.tensor > mask.tensor
            invert --prompt src.tensor --seed 0 --guidance 3 < posterior.tensor > inverted.tensor
            denoise --mask mask.tensor --prompt dst.tensor --guidance 3 < inverted.tensor | vae-decode > edited.ppm
            """)
        try Self.checkShowcaseEdit(dir.appendingPathComponent("edited.ppm").path)
    }

    /// The showcase edit's claim on an edited picture of the demo scene: inside the circle the mean
    /// colour is nearer the world's blue than its red; outside it (2 px margin, where the VAE and
    /// the mask's cells blur edges) the mean |edit − input| is at most 14/255.
    static func checkShowcaseEdit(_ editedPath: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let (scene, truth) = (Self.scene, Self.truth)
        let input = try NetpbmImage.readAll(try ByteReader(path: scene))[0]
        let edited = try NetpbmImage.readAll(try ByteReader(path: editedPath))[0]
        let mask = try NetpbmImage.readAll(try ByteReader(path: truth))[0]
        XCTAssertEqual([edited.width, edited.height, edited.depth], [64, 64, 3], file: file, line: line)
        // Inside the circle: mean colour (0..255) nearer the world's blue than its red.
        // Outside it (2 px margin, where the VAE and the mask's cells blur edges): mean |edit - input|.
        var inside = [Double](repeating: 0, count: 3), nIn = 0, outsideError = 0.0, nOut = 0
        for y in 0..<64 {
            for x in 0..<64 {
                var near = false
                for dy in -2...2 { for dx in -2...2 {
                    let yy = y + dy, xx = x + dx
                    if yy >= 0, yy < 64, xx >= 0, xx < 64, mask.samples[yy * 64 + xx] > 0.5 { near = true }
                } }
                let p = (y * 64 + x) * 3
                if mask.samples[y * 64 + x] > 0.5 {
                    for c in 0..<3 { inside[c] += Double(edited.samples[p + c]) * 255 }
                    nIn += 1
                } else if !near {
                    for c in 0..<3 { outsideError += abs(Double(edited.samples[p + c] - input.samples[p + c])) * 255 }
                    nOut += 3
                }
            }
        }
        let mean = inside.map { $0 / Double(max(nIn, 1)) }
        func distance(_ rgb: [Double]) -> Double { sqrt(zip(mean, rgb).map { ($0 - $1) * ($0 - $1) }.reduce(0, +)) }
        let blue = distance([30, 60, 225]), red = distance([220, 30, 30])
        XCTAssertLessThan(blue, red, "the circle's mean colour \(mean) is not nearer blue than red", file: file, line: line)
        let mae = outsideError / Double(max(nOut, 1))
        XCTAssertLessThanOrEqual(mae, 14, "background changed by \(mae)/255 on average", file: file, line: line)
    }
}
