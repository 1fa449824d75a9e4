import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// vae-encode / vae-decode --tile-norm tile|shared: `tile` is diffusers' tiling byte for byte,
/// `shared` changes the tiled result, and --tile-norm without tiling is refused (it qualifies
/// tiling; an untiled run has no tiles to share statistics between).
final class VAETileNormToolTests: XCTestCase {
    func testTileNormThroughTheTools() throws {
        let model = Fixtures.path("sd1"), cat = Fixtures.path("sd1/cat.ppm")  // 64×64: 3×3 tiles of 32 px
        let tiled = try sh("vae-encode --model '\(model)' --tile-size 32 < '\(cat)'")
        XCTAssertEqual(tiled.status, 0, tiled.err)
        let explicit = try sh("vae-encode --model '\(model)' --tile-size 32 --tile-norm tile < '\(cat)'")
        XCTAssertEqual(explicit.out, tiled.out, "--tile-norm tile is the default")
        let shared = try sh("vae-encode --model '\(model)' --tile-size 32 --tile-norm shared < '\(cat)'")
        XCTAssertEqual(shared.status, 0, shared.err)
        XCTAssertNotEqual(shared.out, tiled.out)

        let d0 = try sh("vae-encode --model '\(model)' < '\(cat)' | vae-decode --model '\(model)' --tile-size 32")
        let d1 = try sh("vae-encode --model '\(model)' < '\(cat)' | vae-decode --model '\(model)' --tile-size 32 --tile-norm tile")
        let d2 = try sh("vae-encode --model '\(model)' < '\(cat)' | vae-decode --model '\(model)' --tile-size 32 --tile-norm shared")
        XCTAssertEqual(d2.status, 0, d2.err)
        XCTAssertEqual(d1.out, d0.out, "--tile-norm tile is the default")
        XCTAssertNotEqual(d2.out, d0.out)
        XCTAssertEqual(try readImages(d2.out).map { [$0.width, $0.height] }, [[64, 64]])
    }

    func testTileNormRefusals() throws {
        let model = Fixtures.path("sd1")
        for tool in ["vae-encode", "vae-decode"] {
            for norm in ["tile", "shared"] {
                let r = try runTool(tool, ["--model", model, "--tile-norm", norm])
                XCTAssertEqual(r.status, 1, "\(tool) --tile-norm \(norm) without tiling")
                XCTAssertEqual(r.err, "\(tool): --tile-norm \(norm) applies to tiled runs only — add --tile (or --tile-size PX), or drop --tile-norm\n")
            }
            let r = try runTool(tool, ["--model", model, "--tile", "--tile-norm", "seamless"])
            XCTAssertEqual(r.status, 64)
            XCTAssertEqual(r.err, "\(tool): the value 'seamless' is invalid for '--tile-norm <tile|shared>'. Please provide one of 'tile' and 'shared'. — see \(tool) --help\n")
        }
    }
}
