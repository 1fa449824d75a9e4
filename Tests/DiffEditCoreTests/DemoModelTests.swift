import Foundation
import XCTest
@testable import DiffEditCore

/// The bundled demo model (demo/model, trained by demo/train.py) through our own tools: the mask
/// that noise-diff-mask finds must sit on the object the captions disagree about.
final class DemoModelTests: XCTestCase {
    func testNoiseDiffMaskFindsTheCircleInTheDemoScene() throws {
        let repo = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
        let scene = repo.appendingPathComponent("demo/scenes/red-circle.ppm").path
        let truth = repo.appendingPathComponent("demo/scenes/red-circle.mask.pgm").path
        let model = repo.appendingPathComponent("demo/model").path
        let dir = try temporaryDirectory(self)
        let r = try sh("""
            cd '\(dir.path)'
            export DIFFEDIT_MODEL='\(model)'
            tokenize 'a red circle on a striped white background' | encode-text > src.tensor
            tokenize 'a blue circle on a striped white background' | encode-text > dst.tensor
            vae-encode '\(scene)' | noise-diff-mask --source src.tensor --target dst.tensor --seed 0 > mask.tensor
            """)
        XCTAssertEqual(r.status, 0, r.err)
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
}
