import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// Images through the built tools and netpbm's: PNG round trips, 16-bit samples, grey, plain bitmaps and alpha.
final class ImageToolTests: XCTestCase {
    func testRoundTripThroughPNGWithNetpbmTools() throws {
        let t = levelsTensor(1, 3, 13, 21)
        let ppm = try encodeImage(t)
        let info = try sh("pamfile", stdin: ppm)
        XCTAssertEqual(info.status, 0, info.err)
        XCTAssertTrue(String(decoding: info.out, as: UTF8.self).contains("PPM raw, 21 by 13  maxval 255"), String(decoding: info.out, as: UTF8.self))
        let back = try sh("pnmtopng | pngtopnm", stdin: ppm)
        XCTAssertEqual(back.status, 0, back.err)
        let images = try readImages(back.out)
        XCTAssertEqual(images.count, 1)
        assertClose(images[0].rgbTensor().data, t.data, atol: 1e-6, "ppm -> png -> ppm")
    }

    func testSixteenBitRoundTrip() throws {
        let t = levelsTensor(1, 3, 5, 7, maxval: 65535)
        let ppm = try encodeImage(t, bits: 16)
        let info = try sh("pamfile", stdin: ppm)
        XCTAssertTrue(String(decoding: info.out, as: UTF8.self).contains("maxval 65535"))
        let back = try sh("pnmtopng | pngtopnm", stdin: ppm)
        XCTAssertEqual(back.status, 0, back.err)
        let images = try readImages(back.out)
        XCTAssertEqual(images[0].maxval, 65535)
        assertClose(images[0].rgbTensor().data, t.data, atol: 1e-6, "16-bit round trip")
    }

    func testGreyPlainBitmapAndAlphaInputs() throws {
        // Plain PGM with maxval 10: values scale by maxval and grey replicates to RGB.
        let pgm = try readImages(Array("P2\n3 1\n10\n0 5 10\n".utf8))
        XCTAssertEqual(pgm[0].depth, 1)
        XCTAssertEqual(pgm[0].rgbTensor().data, [-1, 0, 1, -1, 0, 1, -1, 0, 1])
        // PBM: 1 is black.
        let pbm = try readImages(Array("P1\n2 1\n1 0\n".utf8))
        XCTAssertEqual(pbm[0].rgbTensor().data, [-1, 1, -1, 1, -1, 1])
        // PAM RGB_ALPHA: alpha dropped.
        var pam = Array("P7\nWIDTH 1\nHEIGHT 1\nDEPTH 4\nMAXVAL 255\nTUPLTYPE RGB_ALPHA\nENDHDR\n".utf8)
        pam += [255, 0, 51, 7]
        let im = try readImages(pam)[0]
        XCTAssertTrue(im.hasAlpha)
        assertClose(im.rgbTensor().data, [1, -1, 51 / 255 * 2 - 1] as [Float], atol: 1e-6, "rgba")
        // Same pixels from the real tools: ppmmake makes a plain colour image.
        let made = try sh("ppmmake rgb:ff/00/80 4 2")
        XCTAssertEqual(made.status, 0, made.err)
        let r = try readImages(made.out)[0]
        XCTAssertEqual(r.width, 4)
        XCTAssertEqual(r.height, 2)
        XCTAssertEqual(Array(r.rgbTensor().data[0..<8]), Array(repeating: 1, count: 8))
    }
}
