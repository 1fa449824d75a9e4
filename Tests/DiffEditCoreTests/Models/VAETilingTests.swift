import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// diffusers' tiled AutoencoderKL (enable_tiling: _tiled_encode, tiled_decode, blend_v, blend_h)
/// against Tests/Fixtures/vae-tiling.tensor: the sd1 VAE on a 96×80 image / 12×10 latents with
/// 32 px tiles (4×4 tiles) and the config's 64 px (2×2 tiles), at VAETests' tolerances.
final class VAETilingTests: XCTestCase {
    static let cases = ["tile32", "tile64"]

    func tiling(_ refs: [String: TensorRecord], _ name: String, _ vae: AutoencoderKL) throws -> VAETiling {
        let r = try Fixtures.ref(refs, name)
        let size = try XCTUnwrap(r.metadata["tile_sample_min_size"].flatMap { Int($0) })
        let t = try VAETiling(sampleSize: size, config: vae.config)
        XCTAssertEqual("\(t.latentSize)", r.metadata["tile_latent_min_size"])
        return t
    }

    func testTiledEncodeMatchesDiffusers() throws {
        let (vae, _) = try Fixtures.vae("sd1")
        let refs = try Fixtures.records("vae-tiling.tensor")
        let encoder = try vae.makeEncoder()
        for c in Self.cases {
            let t = try tiling(refs, c + ".image", vae)
            let image = try Fixtures.ref(refs, c + ".image").tensor()
            XCTAssertTrue(t.tilesImage(width: image.shape[3], height: image.shape[2]), c)
            let posterior = DiagonalGaussian(moments: t.moments(image, encoder: encoder))
            let mean = try Fixtures.ref(refs, c + ".posterior.mean"), std = try Fixtures.ref(refs, c + ".posterior.std")
            XCTAssertEqual(posterior.mean.shape, mean.shape, c)
            let cm = assertClose(posterior.mean.data, mean.floats(), atol: 1e-4, "\(c) tiled posterior mean")
            let cs = assertClose(posterior.std.data, std.floats(), atol: 1e-4, "\(c) tiled posterior std")
            print("\(c) tiled encode: mean abs error \(cm.maxAbsError), std \(cs.maxAbsError)")
            // Tiling changes the result (each tile's GroupNorm sees only that tile), as in diffusers.
            let untiled = DiagonalGaussian(moments: encoder.moments(image))
            XCTAssertGreaterThan(zip(untiled.mean.data, mean.floats()).map { abs($0 - $1) }.max() ?? 0, 1e-3, c)
        }
    }

    func testTiledDecodeMatchesDiffusers() throws {
        let (vae, _) = try Fixtures.vae("sd1")
        let refs = try Fixtures.records("vae-tiling.tensor")
        let decoder = try vae.makeDecoder()
        for c in Self.cases {
            let t = try tiling(refs, c + ".decode.in", vae)
            let z = try Fixtures.ref(refs, c + ".decode.in").tensor()
            XCTAssertTrue(t.tilesLatents(width: z.shape[3], height: z.shape[2]), c)
            let out = t.decode(z, decoder: decoder)
            let want = try Fixtures.ref(refs, c + ".decode.out")
            XCTAssertEqual(out.shape, want.shape, c)
            let e = assertClose(out.data, want.floats(), atol: VAETests.decoderTolerance, "\(c) tiled decode")
            print("\(c) tiled decode: abs error \(e.maxAbsError)")
        }
    }

    /// diffusers' use_tiling check: an image (latents) no larger than a tile takes the untiled path.
    func testInputWithinOneTileIsUntiled() throws {
        let (vae, refs) = try Fixtures.vae("sd1")
        let t = try VAETiling(sampleSize: 64, config: vae.config)
        let image = try Fixtures.ref(refs, "vae.image").tensor()
        XCTAssertFalse(t.tilesImage(width: image.shape[3], height: image.shape[2]))
        let encoder = try vae.makeEncoder()
        XCTAssertEqual(t.moments(image, encoder: encoder), encoder.moments(image))
        let z = try Fixtures.ref(refs, "vae.decode.in").tensor()
        let decoder = try vae.makeDecoder()
        XCTAssertEqual(t.decode(z, decoder: decoder), decoder.decode(z))
    }

    func testTileSizes() throws {
        let (vae, _) = try Fixtures.vae("sd1")
        XCTAssertEqual(try VAETiling.option(tile: true, size: nil, vae: vae)?.sampleSize, 64)
        XCTAssertNil(try VAETiling.option(tile: false, size: nil, vae: vae))
        XCTAssertEqual(try VAETiling.option(tile: false, size: 96, vae: vae)?.latentSize, 12)
        XCTAssertThrowsError(try VAETiling(sampleSize: 40, config: vae.config)) {
            XCTAssertEqual(($0 as? ToolError)?.message, "--tile-size 40 is not a multiple of 32 (4 × this VAE's factor 8) — use 32 or 64")
        }
        let odd = AutoencoderKL(config: vae.config, weights: vae.store, sampleSize: 100)
        XCTAssertThrowsError(try VAETiling.option(tile: true, size: nil, vae: odd)) {
            XCTAssertEqual(($0 as? ToolError)?.message, "--tile: this VAE's sample_size 100 is not a multiple of 32 — give the tile with --tile-size PX")
        }
    }

    /// The default tile is the VAE config's sample_size; a single file (no sample_size in its
    /// sidecar) takes diffusers' from_single_file image size: 512 for v1, 768 for v2.
    func testDefaultTileFromTheModel() throws {
        XCTAssertEqual(try AutoencoderKL(folder: Fixtures.model("sd1")).sampleSize, 64)
        XCTAssertEqual(try AutoencoderKL(folder: Fixtures.model("sd1", singleFile: true)).sampleSize, 512)
        XCTAssertEqual(try AutoencoderKL(folder: Fixtures.model("sd2", singleFile: true)).sampleSize, 768)
    }
}
