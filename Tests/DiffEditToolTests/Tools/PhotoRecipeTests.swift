import Foundation
import XCTest
import DiffEditTestSupport
@testable import DiffEditCore

/// The photo recipe of composite(1) on the demo model: noise-diff-mask's soft map, at the latent
/// size, thresholded by composite is noise-diff-mask's own mask; a region of a larger photo found
/// by tensor bbox, cut with pamcut/pamscale and tensor cut, edited and put back by composite,
/// leaves everything outside the region byte for byte.
final class PhotoRecipeTests: XCTestCase {
    func testSoftMapThresholdedIsTheMaskAndTheRegionRecipe() throws {
        try requireCommands(["pamscale", "pamcut", "pamfile"])
        let dir = try temporaryDirectory(self)
        try DemoScene.prepare(dir)
        let d = dir.path, m = DemoScene.model
        let mask = try sh("""
            cd '\(d)' && noise-diff-mask --model '\(m)' --source src.tensor --target dst.tensor --soft-output soft.tensor \
              posterior.tensor > mask.tensor
            """)
        XCTAssertEqual(mask.status, 0, mask.err)
        let maskRecord = try DemoScene.record("\(d)/mask.tensor", "mask")
        let (h, w) = (maskRecord.shape[2], maskRecord.shape[3])
        // An original at the latent size: the pixel mask (feather 0, unrefined) is the soft map above 0.5.
        let small = try sh("""
            cd '\(d)' && pamscale -width \(w) -height \(h) '\(DemoScene.scene)' > small.ppm && \
            composite --original small.ppm --mask soft.tensor --feather 0 --refine 0 --mask-output px.pgm '\(DemoScene.scene)' > /dev/null
            """)
        XCTAssertEqual(small.status, 0, small.err)
        let px = try RawNetpbm.parse(Array(try Data(contentsOf: dir.appendingPathComponent("px.pgm"))))
        XCTAssertEqual(px.samples.map { $0 == 255 ? Float(1) : 0 }, maskRecord.floats())
        XCTAssertTrue(maskRecord.floats().contains(1))

        // The region recipe on the scene enlarged to a 333×335 "photo" (whole-photo mask: the
        // 64-pixel scene's soft map and mask).
        let recipe = try sh("""
            set -e; cd '\(d)'
            pamscale -width 333 -height 335 '\(DemoScene.scene)' > photo.ppm
            read X Y W H < <(tensor bbox --size 333x335 soft.tensor)
            echo "$X,$Y,$W,$H" > box.txt
            pamcut -left $X -top $Y -width $W -height $H photo.ppm | pamscale -width 64 -height 64 > region.ppm
            tensor cut --box $X,$Y,$W,$H --size 333x335 --to \(w)x\(h) mask.tensor > region-mask.tensor
            tensor cut --box $X,$Y,$W,$H --size 333x335 --to \(w)x\(h) soft.tensor > region-soft.tensor
            vae-encode --model '\(m)' region.ppm > region.posterior
            invert --model '\(m)' --prompt src.tensor region.posterior > region.inverted
            denoise --model '\(m)' --mask region-mask.tensor --prompt dst.tensor region.inverted | vae-decode --model '\(m)' > region-edited.ppm
            composite --original photo.ppm --mask region-soft.tensor --region $X,$Y,$W,$H region-edited.ppm > out.ppm
            """)
        XCTAssertEqual(recipe.status, 0, recipe.err)
        let box = try PixelBox.parse(try String(contentsOf: dir.appendingPathComponent("box.txt"), encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines), option: "box")
        XCTAssertEqual(box.width, box.height, "1:1 by default")
        let photo = try RawNetpbm.parse(Array(try Data(contentsOf: dir.appendingPathComponent("photo.ppm"))))
        let out = try RawNetpbm.parse(Array(try Data(contentsOf: dir.appendingPathComponent("out.ppm"))))
        XCTAssertEqual([out.width, out.height, out.depth, out.maxval], [333, 335, 3, 255])
        var changedInside = 0
        for y in 0..<335 {
            for x in 0..<333 {
                let p = (y * 333 + x) * 3
                let inBox = box.contains(PixelBox(x: x, y: y, width: 1, height: 1))
                let same = out.samples[p..<(p + 3)] == photo.samples[p..<(p + 3)]
                if !inBox && !same { XCTFail("(\(x), \(y)) outside the region \(box) changed"); return }
                if inBox && !same { changedInside += 1 }
            }
        }
        XCTAssertGreaterThan(changedInside, 100, "the edit landed in the region")
    }
}
