import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// vae-encode --tile / vae-decode --tile (diffusers' enable_tiling): the tiled decode against
/// vae-tiling.tensor through the tool, the untiled path for inputs within one tile, and the
/// option's refusals.
final class VAETilingToolTests: XCTestCase {
    /// diffusers' tiled decode of the sd1 VAE with 32 px tiles, postprocessed, within one 8-bit level.
    func testDecodeToolTiledMatchesDiffusers() throws {
        let (vae, _) = try Fixtures.vae("sd1")
        let refs = try Fixtures.records("vae-tiling.tensor")
        let z = try Fixtures.ref(refs, "tile32.decode.in"), want = try Fixtures.ref(refs, "tile32.decode.out")
        // The tool divides by scaling_factor: hand it latents in the UNet's space.
        let latents = TensorRecord(name: "latents", shape: z.shape, floats: z.floats().map { $0 * vae.config.scalingFactor })
        let run = try runTool("vae-decode", ["--model", Fixtures.path("sd1"), "--tile-size", "32"], stdin: TensorStream.encode(latents))
        XCTAssertEqual(run.status, 0, run.err)
        let images = try readImages(run.out)
        XCTAssertEqual(images.count, 2)
        let (h, w) = (want.shape[2], want.shape[3]), plane = h * w
        let ref = want.floats()
        for (b, im) in images.enumerated() {
            XCTAssertEqual([im.height, im.width], [h, w])
            var levels = [Float](repeating: 0, count: plane * 3)
            for c in 0..<3 { for i in 0..<plane {
                levels[i * 3 + c] = Float(NetpbmImage.quantize(ref[(b * 3 + c) * plane + i], maxval: 255))
            } }
            assertClose(im.samples.map { ($0 * 255).rounded() }, levels, atol: 1, "tiled vae-decode image \(b), u8")
        }
    }

    /// An image (latents) within one tile is not tiled (diffusers' use_tiling check): --tile gives
    /// the untiled output byte for byte.
    func testTileOnInputWithinOneTileEqualsUntiled() throws {
        let model = Fixtures.path("sd1"), cat = Fixtures.path("sd1/cat.ppm")  // 64×64, the config's sample_size
        let plain = try sh("vae-encode --model '\(model)' < '\(cat)'")
        XCTAssertEqual(plain.status, 0, plain.err)
        for option in ["--tile", "--tile-size 64", "--tile-size 96"] {
            let tiled = try sh("vae-encode --model '\(model)' \(option) < '\(cat)'")
            XCTAssertEqual(tiled.status, 0, tiled.err)
            XCTAssertEqual(tiled.out, plain.out, "vae-encode \(option)")
            let d0 = try sh("vae-encode --model '\(model)' < '\(cat)' | vae-decode --model '\(model)'")
            let d1 = try sh("vae-encode --model '\(model)' < '\(cat)' | vae-decode --model '\(model)' \(option)")
            XCTAssertEqual(d1.status, 0, d1.err)
            XCTAssertEqual(d1.out, d0.out, "vae-decode \(option)")
        }
        // Larger than the tile: tiled, and different.
        let small = try sh("vae-encode --model '\(model)' --tile-size 32 < '\(cat)'")
        XCTAssertEqual(small.status, 0, small.err)
        XCTAssertNotEqual(small.out, plain.out)
    }

    func testTileSizeRefusals() throws {
        let model = Fixtures.path("sd1")
        for tool in ["vae-encode", "vae-decode"] {
            for (value, message) in [
                ("40", "\(tool): --tile-size 40 is not a multiple of 32 (4 × this VAE's factor 8) — use 32 or 64\n"),
                ("16", "\(tool): --tile-size 16 is out of range: --tile-size takes an integer from 32 to 8192 — give a value in that range, or leave the option out for its default\n"),
                ("8193", "\(tool): --tile-size 8193 is out of range: --tile-size takes an integer from 32 to 8192 — give a value in that range, or leave the option out for its default\n"),
            ] {
                let r = try runTool(tool, ["--model", model, "--tile-size", value])
                XCTAssertEqual(r.status, 1, "\(tool) --tile-size \(value)")
                XCTAssertEqual(r.err, message)
            }
        }
    }
}
