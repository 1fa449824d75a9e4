import Foundation
import XCTest
@testable import DiffEditCore

/// Image I/O through libnetpbm, checked against the real netpbm tools.
final class ImageIOTests: XCTestCase {
    func read(_ bytes: [UInt8]) throws -> [NetpbmImage] {
        let dir = try temporaryDirectory(self)
        let f = dir.appendingPathComponent("in.pnm")
        try Data(bytes).write(to: f)
        return try NetpbmImage.readAll(try ByteReader(path: f.path))
    }

    func encode(_ t: Tensor, bits: Int = 8) throws -> [UInt8] {
        let dir = try temporaryDirectory(self)
        let f = dir.appendingPathComponent("out.pnm")
        let fd = open(f.path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let w = ByteWriter(fd: fd, label: f.path)
        try NetpbmImage.write(t, bits: bits, to: w)
        try w.flush()
        close(fd)
        return [UInt8](try Data(contentsOf: f))
    }

    /// A tensor whose values are exact 8-bit levels, so writing and reading back is lossless.
    func levelsTensor(_ n: Int, _ c: Int, _ h: Int, _ w: Int, maxval: Float = 255) -> Tensor {
        var g = SystemRandomNumberGenerator()
        let data = (0..<(n * c * h * w)).map { _ in Float(Int.random(in: 0...Int(maxval), using: &g)) / maxval * 2 - 1 }
        return Tensor(shape: [n, c, h, w], data: data)
    }

    func testRoundTripThroughPNGWithNetpbmTools() throws {
        let t = levelsTensor(1, 3, 13, 21)
        let ppm = try encode(t)
        let info = try sh("pamfile", stdin: ppm)
        XCTAssertEqual(info.status, 0, info.err)
        XCTAssertTrue(String(decoding: info.out, as: UTF8.self).contains("PPM raw, 21 by 13  maxval 255"), String(decoding: info.out, as: UTF8.self))
        let back = try sh("pnmtopng | pngtopnm", stdin: ppm)
        XCTAssertEqual(back.status, 0, back.err)
        let images = try read(back.out)
        XCTAssertEqual(images.count, 1)
        assertClose(images[0].rgbTensor().data, t.data, atol: 1e-6, "ppm -> png -> ppm")
    }

    func testSixteenBitRoundTrip() throws {
        let t = levelsTensor(1, 3, 5, 7, maxval: 65535)
        let ppm = try encode(t, bits: 16)
        let info = try sh("pamfile", stdin: ppm)
        XCTAssertTrue(String(decoding: info.out, as: UTF8.self).contains("maxval 65535"))
        let back = try sh("pnmtopng | pngtopnm", stdin: ppm)
        XCTAssertEqual(back.status, 0, back.err)
        let images = try read(back.out)
        XCTAssertEqual(images[0].maxval, 65535)
        assertClose(images[0].rgbTensor().data, t.data, atol: 1e-6, "16-bit round trip")
    }

    func testGreyPlainBitmapAndAlphaInputs() throws {
        // Plain PGM with maxval 10: values scale by maxval and grey replicates to RGB.
        let pgm = try read(Array("P2\n3 1\n10\n0 5 10\n".utf8))
        XCTAssertEqual(pgm[0].depth, 1)
        XCTAssertEqual(pgm[0].rgbTensor().data, [-1, 0, 1, -1, 0, 1, -1, 0, 1])
        // PBM: 1 is black.
        let pbm = try read(Array("P1\n2 1\n1 0\n".utf8))
        XCTAssertEqual(pbm[0].rgbTensor().data, [-1, 1, -1, 1, -1, 1])
        // PAM RGB_ALPHA: alpha dropped.
        var pam = Array("P7\nWIDTH 1\nHEIGHT 1\nDEPTH 4\nMAXVAL 255\nTUPLTYPE RGB_ALPHA\nENDHDR\n".utf8)
        pam += [255, 0, 51, 7]
        let im = try read(pam)[0]
        XCTAssertTrue(im.hasAlpha)
        assertClose(im.rgbTensor().data, [1, -1, 51 / 255 * 2 - 1] as [Float], atol: 1e-6, "rgba")
        // Same pixels from the real tools: ppmmake makes a plain colour image.
        let made = try sh("ppmmake rgb:ff/00/80 4 2")
        XCTAssertEqual(made.status, 0, made.err)
        let r = try read(made.out)[0]
        XCTAssertEqual(r.width, 4)
        XCTAssertEqual(r.height, 2)
        XCTAssertEqual(Array(r.rgbTensor().data[0..<8]), Array(repeating: 1, count: 8))
    }

    func testMultiImageStream() throws {
        let a = levelsTensor(1, 3, 4, 6), b = levelsTensor(1, 3, 4, 6)
        let images = try read(try encode(Tensor.concat(batch: [a, b])))
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
            XCTAssertThrowsError(try read(bytes)) { e in
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
        XCTAssertThrowsError(try read(crash)) { e in
            XCTAssertTrue(((e as? ToolError)?.message ?? "").contains("malformed PAM header"), "\(e)")
        }
        // Comments and every keyword still pass.
        var ok = Array("P7\n# made by hand\nWIDTH 1\nHEIGHT 1\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n".utf8)
        ok += [255, 0, 0]
        XCTAssertEqual(try read(ok)[0].samples, [1, 0, 0])
    }
}
