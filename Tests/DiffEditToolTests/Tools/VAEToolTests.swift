import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// vae-encode(1) and vae-decode(1) end to end: the built tools against diffusers' fixtures, image formats and sizes, and their refusals.
final class VAEToolTests: XCTestCase {
    func testEncodeToolGivesFixturePosterior() throws {
        for key in ["sd1", "sd2"] {
            let (vae, refs) = try Fixtures.vae(key)
            let cat = try [UInt8](Data(contentsOf: URL(fileURLWithPath: Fixtures.path("\(key)/cat.ppm"))))
            let run = try runTool("vae-encode", ["--model", Fixtures.path(key)], stdin: cat)
            XCTAssertEqual(run.status, 0, run.err)
            let records = try decodeStream(run.out)
            XCTAssertEqual(records.map(\.name), ["posterior.mean", "posterior.std"], key)
            guard records.count == 2 else { continue }
            let sf = vae.config.scalingFactor
            XCTAssertEqual(records[0].metadata["scaling_factor"].flatMap(Float.init), sf)
            assertClose(records[0].floats(), try Fixtures.ref(refs, "vae.posterior.mean").floats().map { $0 * sf }, atol: 1e-4, "\(key) tool mean")
            assertClose(records[1].floats(), try Fixtures.ref(refs, "vae.posterior.std").floats().map { $0 * sf }, atol: 1e-4, "\(key) tool std")
        }
    }

    func testEncodeToolSampleMatchesDiffusers() throws {
        for key in ["sd1", "sd2"] {
            let (_, refs) = try Fixtures.vae(key)
            let cat = Fixtures.path("\(key)/cat.ppm"), model = Fixtures.path(key)
            let one = try sh("vae-encode --model '\(model)' --sample --seed 0 < '\(cat)'")
            XCTAssertEqual(one.status, 0, one.err)
            let records = try decodeStream(one.out)
            XCTAssertEqual(records.map(\.name), ["latents"])
            XCTAssertEqual(records.first?.metadata["seed"], "0")
            assertClose(records.first?.floats() ?? [], try Fixtures.ref(refs, "vae.sample.seed0").floats(), atol: 1e-4, "\(key) vae-encode --sample --seed 0")
            // generate_mask encodes the image repeated num_maps_per_mask = 10 times and draws one
            // randn([10, 4, h, w]) from a fresh generator: the same as ten images in one stream.
            let diffedit = try Fixtures.records("\(key)/ref/diffedit.tensor")
            guard let maskLatents = diffedit["diffedit.mask.image_latents"] else { XCTFail("no diffedit.mask.image_latents"); continue }
            let ten = try sh("for i in 0 1 2 3 4 5 6 7 8 9; do cat '\(cat)'; done | vae-encode --model '\(model)' --sample --seed 0")
            XCTAssertEqual(ten.status, 0, ten.err)
            let batch = try decodeStream(ten.out)
            XCTAssertEqual(batch.first?.shape, maskLatents.shape)
            assertClose(batch.first?.floats() ?? [], maskLatents.floats(), atol: 1e-4, "\(key) batch of 10 sampled like generate_mask")
        }
        let bad = try sh("vae-encode --model '\(Fixtures.path("sd1"))' --sample < '\(Fixtures.path("sd1/cat.ppm"))'")
        XCTAssertEqual(bad.status, 1)
        XCTAssertEqual(bad.err, "vae-encode: --sample needs a seed — add --seed N (the seed of torch.Generator('cpu').manual_seed(N))\n")
    }

    /// The edited latents of the reference DiffEdit run decode to the pipeline's output image.
    func testDecodeToolOnDiffEditOutput() throws {
        for key in ["sd1", "sd2"] {
            _ = try Fixtures.vae(key)
            let diffedit = try Fixtures.records("\(key)/ref/diffedit.tensor")
            guard let latents = diffedit["diffedit.edited.latents"], let u8 = diffedit["diffedit.edited.u8"] else {
                XCTFail("\(key): no diffedit.edited.latents / diffedit.edited.u8"); continue
            }
            let run = try runTool("vae-decode", ["--model", Fixtures.path(key)], stdin: TensorStream.encode(latents))
            XCTAssertEqual(run.status, 0, run.err)
            let images = try readImages(run.out)
            XCTAssertEqual(images.count, 1)
            assertClose(images.first.map { $0.samples.map { ($0 * 255).rounded() } } ?? [], u8.floats(), atol: 1, "\(key) decoded DiffEdit result, u8")
        }
    }

    func testDecodeToolGivesFixtureImage() throws {
        for key in ["sd1", "sd2"] {
            let (_, refs) = try Fixtures.vae(key)
            let latents = try Fixtures.ref(refs, "vae.decode.in")
            for depth in [8, 16] {
                let run = try runTool("vae-decode", ["--model", Fixtures.path(key), "--depth", "\(depth)"],
                                      stdin: TensorStream.encode(TensorRecord(name: "latents", shape: latents.shape, floats: latents.floats())))
                XCTAssertEqual(run.status, 0, run.err)
                let images = try readImages(run.out)
                XCTAssertEqual(images.count, 1)
                guard let im = images.first else { continue }
                let out = try Fixtures.ref(refs, "vae.decode.out")
                XCTAssertEqual([im.height, im.width, im.depth], [out.shape[2], out.shape[3], 3], key)
                XCTAssertEqual(im.maxval, depth == 8 ? 255 : 65535)
                let maxval = Float(im.maxval)
                // Levels as diffusers' postprocess of the reference decode, ±1.
                let (h, w) = (out.shape[2], out.shape[3])
                let ref = out.floats()
                var want = [Float](repeating: 0, count: h * w * 3)
                for c in 0..<3 { for i in 0..<(h * w) { want[i * 3 + c] = (min(max(ref[c * h * w + i] / 2 + 0.5, 0), 1) * maxval).rounded() } }
                assertClose(im.samples.map { ($0 * maxval).rounded() }, want, atol: 1, "\(key) vae-decode depth \(depth)")
                if depth == 8 {
                    assertClose(im.samples.map { ($0 * 255).rounded() }, try Fixtures.ref(refs, "vae.postprocess.u8").floats(),
                                atol: 1, "\(key) vae-decode vs fixture u8")
                }
            }
        }
    }

    func testPNGRoundTripPipeline() throws {
        let (_, _) = try Fixtures.vae("sd1")
        try requireCommands(["pngtopnm", "pnmtopng", "pamfile"])
        let dir = try temporaryDirectory(self)
        let model = Fixtures.path("sd1"), cat = Fixtures.path("sd1/cat.ppm")
        let r = try sh("""
            pnmtopng '\(cat)' > '\(dir.path)/cat.png' && \
            pngtopnm '\(dir.path)/cat.png' | vae-encode --model '\(model)' | vae-decode --model '\(model)' | pnmtopng > '\(dir.path)/back.png' && \
            pngtopnm '\(dir.path)/back.png' | { pamfile; cat > /dev/null; }
            """)
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(String(decoding: r.out, as: UTF8.self).contains("64 by 64"), String(decoding: r.out, as: UTF8.self))
    }

    func testBatchOfImagesDecodesPerEntry() throws {
        let (_, _) = try Fixtures.vae("sd1")
        let model = Fixtures.path("sd1"), cat = Fixtures.path("sd1/cat.ppm")
        // Two copies of the image: a batch of two posteriors, decoded to two images equal within one
        // level (sgemm may round the two batch entries differently at the 1e-6 level, which can tip
        // a pixel that sits on a rounding boundary).
        let r = try sh("cat '\(cat)' '\(cat)' | vae-encode --model '\(model)' | vae-decode --model '\(model)'")
        XCTAssertEqual(r.status, 0, r.err)
        let images = try readImages(r.out)
        XCTAssertEqual(images.count, 2)
        if images.count == 2 {
            assertClose(images[0].samples, images[1].samples, atol: 1.0 / 255 + 1e-6, "batch entries differ by more than one level")
        }
    }

    func testSizeErrorsAndFitting() throws {
        let (_, _) = try Fixtures.vae("sd1")
        let model = Fixtures.path("sd1"), cat = Fixtures.path("sd1/cat.ppm")
        let bad = try sh("pamcut -width 61 -height 59 '\(cat)' | vae-encode --model '\(model)'")
        XCTAssertEqual(bad.status, 1)
        XCTAssertEqual(bad.err, "vae-encode: image is 61x59 but this VAE needs width and height divisible by 8 — nearest valid width 56 or 64, height 56 or 64; use --crop or --resize to fit it, or pamcut/pamscale\n")
        // --crop equals cropping by hand with pamcut (centre window, offsets rounded down).
        let cropped = try sh("pamcut -width 61 -height 59 '\(cat)' | vae-encode -q --model '\(model)' --crop")
        let byHand = try sh("pamcut -width 61 -height 59 '\(cat)' | pamcut -left 2 -top 1 -width 56 -height 56 | vae-encode --model '\(model)'")
        XCTAssertEqual(cropped.status, 0, cropped.err)
        XCTAssertEqual(cropped.out, byHand.out)
        let resized = try sh("pamcut -width 61 -height 59 '\(cat)' | vae-encode --model '\(model)' --resize bilinear")
        XCTAssertEqual(resized.status, 0, resized.err)
        XCTAssertEqual(resized.err, "vae-encode: note: resized 61x59 to 56x56 (bilinear)\n")
        XCTAssertEqual(try decodeStream(resized.out).first?.shape, [1, 4, 7, 7])
        let both = try sh("vae-encode --model '\(model)' --crop --resize nearest < '\(cat)'")
        XCTAssertEqual(both.status, 1)
        XCTAssertEqual(both.err, "vae-encode: --crop and --resize exclude each other — give only one of them\n")
    }

    func testGreyAndAlphaInputs() throws {
        let (_, _) = try Fixtures.vae("sd1")
        let model = Fixtures.path("sd1"), cat = Fixtures.path("sd1/cat.ppm")
        // Grey is replicated: the same as encoding an RGB image with three equal channels.
        let grey = try sh("ppmtopgm '\(cat)' | vae-encode --model '\(model)'")
        let greyRGB = try sh("ppmtopgm '\(cat)' | pgmtoppm white | vae-encode --model '\(model)'")
        XCTAssertEqual(grey.status, 0, grey.err)
        XCTAssertEqual(grey.out, greyRGB.out)
        // Alpha is dropped with a note.
        let dir = try temporaryDirectory(self).path
        let alpha = try sh("cd '\(dir)' && pgmmake 0.5 64 64 > alpha.pgm && pamstack '\(cat)' alpha.pgm 2>/dev/null | vae-encode --model '\(model)'")
        let plain = try sh("vae-encode --model '\(model)' < '\(cat)'")
        XCTAssertEqual(alpha.status, 0, alpha.err)
        XCTAssertEqual(alpha.err, "vae-encode: note: alpha channel dropped\n")
        XCTAssertEqual(alpha.out, plain.out)
    }

    func testDecodeToolRefusesWrongInput() throws {
        let (_, _) = try Fixtures.vae("sd1")
        let model = Fixtures.path("sd1")
        let wrong = try runTool("vae-decode", ["--model", model],
                                stdin: TensorStream.encode(TensorRecord(name: "latents", shape: [1, 3, 8, 8], floats: [Float](repeating: 0, count: 192))))
        XCTAssertEqual(wrong.status, 1)
        XCTAssertEqual(wrong.err, "vae-decode: record 'latents' is 1x3x8x8 f32; vae-decode needs float latents [N, 4, h, w] — pipe in denoise's output or vae-encode's posterior, or choose a record with --record\n")
        let two = TensorStream.encode(TensorRecord(name: "a", shape: [1, 4, 1, 1], floats: [0, 0, 0, 0]))
            + TensorStream.encode(TensorRecord(name: "b", shape: [1, 4, 1, 1], floats: [0, 0, 0, 0]))
        let ambiguous = try runTool("vae-decode", ["--model", model], stdin: two)
        XCTAssertEqual(ambiguous.status, 1)
        XCTAssertTrue(ambiguous.err.hasPrefix("vae-decode: stdin holds 2 records (a, b) and none is named latents"), ambiguous.err)
        let chosen = try runTool("vae-decode", ["--model", model, "--record", "b"], stdin: two)
        XCTAssertEqual(chosen.status, 0, chosen.err)
        XCTAssertEqual(try readImages(chosen.out).map { [$0.width, $0.height] }, [[8, 8]])
    }
}
