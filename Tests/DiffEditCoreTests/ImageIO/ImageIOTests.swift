import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// Image I/O through libnetpbm, checked against the real netpbm tools.
final class ImageIOTests: XCTestCase {
    func testMultiImageStream() throws {
        let a = levelsTensor(1, 3, 4, 6), b = levelsTensor(1, 3, 4, 6)
        let images = try readImages(try encodeImage(Tensor.concat(batch: [a, b])))
        XCTAssertEqual(images.count, 2)
        assertClose(images[1].rgbTensor().data, b.data, atol: 1e-6, "second image")
    }

    func testPostprocessRoundsLikeDiffusers() {
        // (x·0.5 + 0.5)·255, clamped, rounded half to even (numpy's round).
        XCTAssertEqual(NetpbmImage.quantize(-1, maxval: 255), 0)
        XCTAssertEqual(NetpbmImage.quantize(1, maxval: 255), 255)
        XCTAssertEqual(NetpbmImage.quantize(3, maxval: 255), 255)
        XCTAssertEqual(NetpbmImage.quantize(.nan, maxval: 255), 0)
        // 0.5/255·2 − 1 sits exactly at level 0.5: even rounding gives 0.
        XCTAssertEqual(NetpbmImage.quantize(Float(0.5) / 255 * 2 - 1, maxval: 255), 0)
    }

    func testBadImagesGiveOneLineErrors() throws {
        for (bytes, fragment) in [
            ([UInt8](), "empty input"),
            (Array("GIF89a".utf8), "not a netpbm image"),
            (Array("P6\n4 4\n255\nabc".utf8), "truncated"),
            (Array("P5\n0 4\n255\n".utf8), "bad netpbm image"),
            (Array("P6\n99999 99999\n255\n".utf8), "limit"),
        ] {
            XCTAssertThrowsError(try readImages(bytes)) { e in
                let m = (e as? ToolError)?.message ?? "\(e)"
                XCTAssertTrue(m.contains(fragment), "'\(m)' lacks '\(fragment)'")
                XCTAssertFalse(m.contains("\n"))
            }
        }
    }

    /// libFuzzer found that libnetpbm's PAM header parser makes an overlapping strncpy on a P7
    /// header line that is not a keyword (AddressSanitizer strncpy-param-overlap); the shim now
    /// checks P7 headers first. The crashing input, kept as a regression test:
    func testFuzzFoundMalformedPAMHeaderIsRefused() throws {
        let crash = [UInt8](Data(base64Encoded: "UDcKV0lEVEAgJiYmJiYmJi4mJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYm////////////////////////////////////JiYmJib///8mJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmQiYmJiYmJiYm////////////////////////////////////////////////////////////////////////////////////////////////////////////////////////////////JiYmJib/////////ZDI3kAoBAgIE")!)
        XCTAssertThrowsError(try readImages(crash)) { e in
            XCTAssertTrue(((e as? ToolError)?.message ?? "").contains("malformed PAM header"), "\(e)")
        }
        // Comments and every keyword still pass.
        var ok = Array("P7\n# made by hand\nWIDTH 1\nHEIGHT 1\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n".utf8)
        ok += [255, 0, 0]
        XCTAssertEqual(try readImages(ok)[0].samples, [1, 0, 0])
    }
}
