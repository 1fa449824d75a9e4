import DiffEditCore
import Foundation
import XCTest
import DiffEditTestSupport

/// Hostile images for vae-encode (and tensor from-image) and hostile text for tokenize.
final class ReliabilityImageTextTests: XCTestCase {
    var m: String { Hostile.sd1 }

    func encode(_ image: [UInt8], _ extra: [String] = [], env: [String: String]? = nil) throws -> (status: Int32, out: [UInt8], err: String) {
        try runTool("vae-encode", ["--model", m] + extra, stdin: image, environment: env)
    }

    func testBadImagesAreRefused() throws {
        let cases: [([UInt8], [String])] = [
            (Array("GIF89a....".utf8), ["not a netpbm image", "pngtopnm"]),
            ([], ["empty input"]),
            (Array("P6\n0 16\n255\n".utf8), ["Width is zero"]),
            (Array("P6\n16 16\n255\n".utf8) + [UInt8](repeating: 0, count: 100), ["truncated"]),
            (Hostile.ppm(width: 12, height: 20), ["divisible by 8", "--crop"]),
            (Hostile.ppm(width: 16, height: 16) + Hostile.ppm(width: 8, height: 8), ["share a size"]),
            (Hostile.ppm(width: 16, height: 16) + Array("trailing junk".utf8), ["bad netpbm image 1"]),
        ]
        for (bytes, fragments) in cases {
            assertRefused(try encode(bytes), tool: "vae-encode", contains: fragments)
        }
    }

    func testImageKindsThatAreAccepted() throws {
        // 16-bit, grey, grey+alpha, RGB+alpha and a multi-image stream all encode.
        var grey16 = Array("P5\n16 16\n65535\n".utf8)
        for i in 0..<256 { grey16 += [UInt8(i), 0] }
        var pamAlpha = Array("P7\nWIDTH 16\nHEIGHT 16\nDEPTH 4\nMAXVAL 255\nTUPLTYPE RGB_ALPHA\nENDHDR\n".utf8)
        pamAlpha += (0..<(16 * 16 * 4)).map { UInt8(truncatingIfNeeded: $0) }
        var greyAlpha = Array("P7\nWIDTH 16\nHEIGHT 16\nDEPTH 2\nMAXVAL 255\nTUPLTYPE GRAYSCALE_ALPHA\nENDHDR\n".utf8)
        greyAlpha += (0..<(16 * 16 * 2)).map { UInt8(truncatingIfNeeded: $0) }
        let two = Hostile.ppm(width: 16, height: 16) + Hostile.ppm(width: 16, height: 16)
        for (what, bytes, batch) in [("16-bit grey", grey16, 1), ("RGBA", pamAlpha, 1), ("grey+alpha", greyAlpha, 1), ("two images", two, 2)] {
            let r = try encode(bytes)
            XCTAssertEqual(r.status, 0, "\(what): \(r.err)")
            let recs = try TensorStreamReader(pipeReader(r.out)).readAll()
            XCTAssertEqual(recs.first?.shape, [batch, 4, 2, 2], what)
            if what.contains("alpha") || what == "RGBA" { XCTAssertTrue(r.err.contains("alpha"), "\(what): \(r.err)") }
        }
    }

    /// A 20000×20000 header is refused before the raster is read or allocated, with the memory
    /// it would need and pamscale as the way round.
    func testHugeImageIsRefusedWithAnEstimate() throws {
        let header = Array("P6\n20000 20000\n255\n".utf8)
        let r = try encode(header + [UInt8](repeating: 0, count: 4096))
        assertRefused(r, tool: "vae-encode", contains: ["20000x20000", "GB", "pamscale"])
        XCTAssertFalse(r.err.contains("truncated"), "refused only after reading: \(r.err)")
        // Under a small memory limit, a modest image is refused by the model's estimate.
        let small = try encode(Hostile.ppm(width: 64, height: 64), env: ProcessInfo.processInfo.environment.merging(["DIFFEDIT_MEMORY_LIMIT": "100000"]) { $1 })
        assertRefused(small, tool: "vae-encode", contains: ["encoding a 64x64 image needs about", "pamscale"])
        // vae-decode estimates before decoding, too.
        let lat = Hostile.stream([Hostile.f32("latents", [1, 4, 8, 8])])
        let dec = try runTool("vae-decode", ["--model", m], stdin: lat, environment: ProcessInfo.processInfo.environment.merging(["DIFFEDIT_MEMORY_LIMIT": "100000"]) { $1 })
        assertRefused(dec, tool: "vae-decode", contains: ["needs about"])
    }

    func testHostileText() throws {
        // Invalid UTF-8 and NUL bytes are refused.
        assertRefused(try runTool("tokenize", ["--model", m], stdin: [0x61, 0xFF, 0xFE, 0x0A]), tool: "tokenize", contains: ["UTF-8"])
        assertRefused(try runTool("tokenize", ["--model", m], stdin: Array("a cat\nA\u{0}B\n".utf8)), tool: "tokenize", contains: ["line 2", "NUL"])
        // A 1 MB prompt is truncated to 77 tokens with a note, and its metadata stays within
        // the stream format's header limit (the next stage must be able to read it).
        let long = [UInt8](repeating: UInt8(ascii: "a"), count: 1 << 20) + [0x20] + Array(String(repeating: "cat ", count: 1000).utf8) + [0x0A]
        let r = try runTool("tokenize", ["--model", m], stdin: long)
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("truncated to 77"), r.err)
        let recs = try TensorStreamReader(pipeReader(r.out)).readAll()
        XCTAssertEqual(recs.first?.shape, [1, 77])
        // Thousands of prompts in one call: one [N, 77] record the next stage reads.
        let many = (0..<5000).map { "prompt number \($0) of a long list" }.joined(separator: "\n") + "\n"
        // (No timing assertion: runProcess's hang guard stops a stuck tool; speed is not tested here.)
        let r2 = try runTool("tokenize", ["--model", m], stdin: Array(many.utf8))
        XCTAssertEqual(r2.status, 0, r2.err)
        let recs2 = try TensorStreamReader(pipeReader(r2.out)).readAll()
        XCTAssertEqual(recs2.first?.shape, [5000, 77])
    }
}
