import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// Weights read in place (`WeightMatrix`, `KernelPolicy.readsWeightsInPlace`): every kernel that
/// multiplies by a weight gives the numbers of the same values held as f32, also when a 16-bit
/// weight is widened in many blocks or a matrix is the rows of several stored tensors, and the
/// loader points large matrices of f32, f16 and bf16 checkpoints into the file's mapping.
final class SixteenBitWeightTests: XCTestCase {
    typealias Lcg = KernelTests.Lcg

    /// `count` values exactly representable in `bits`, as f32 and as their 16-bit patterns.
    static func values(_ count: Int, _ bits: WeightMatrix.Bits, seed: UInt64) -> (f32: [Float], raw: [UInt16]) {
        var rng = Lcg(state: seed)
        let f = rng.array(count)
        switch bits {
        case .f16:
            let h = f.map { Float16($0) }
            return (h.map { Float($0) }, h.map { $0.bitPattern })
        case .bf16:
            let r = f.map { UInt16($0.bitPattern >> 16) }
            return (r.map { Float(bitPattern: UInt32($0) << 16) }, r)
        case .f32:
            return (f, [])
        }
    }

    /// Runs `kernel` with the weight as f32 and as 16 bits widened in blocks of `blockFloats`
    /// floats; returns both outputs.
    func both(_ count: Int, _ bits: WeightMatrix.Bits, blockFloats: Int, seed: UInt64,
              _ kernel: (ComputeContext, WeightMatrix) -> [Float]) -> (f32: [Float], sixteen: [Float]) {
        let (f, raw) = Self.values(count, bits, seed: seed)
        let ctx = ComputeContext()
        let want = f.withUnsafeBufferPointer { kernel(ctx, WeightMatrix(f32: $0.baseAddress!)) }
        ctx.policy.weightBlockFloats = blockFloats
        let got = raw.withUnsafeBufferPointer { kernel(ctx, WeightMatrix(raw: UnsafeRawPointer($0.baseAddress!), bits: bits)) }
        return (want, got)
    }

    func testLinearWithSixteenBitWeights() {
        let (rows, i, o) = (5, 37, 11)
        var rng = Lcg(state: 9)
        let x = rng.array(rows * i), bias = rng.array(o)
        for bits in [WeightMatrix.Bits.f16, .bf16] {
            for block in [1 << 21, 64, 5] {  // one block; several K slices; one column per slice
                for withBias in [true, false] {
                    let r = both(o * i, bits, blockFloats: block, seed: 4) { ctx, w in
                        var out = [Float](repeating: 0, count: rows * o)
                        x.withUnsafeBufferPointer { xp in
                            bias.withUnsafeBufferPointer { bp in
                                Linear.forward(ctx, x: xp.baseAddress!, rows: rows, inFeatures: i, weight: w,
                                               bias: withBias ? bp.baseAddress! : nil, outFeatures: o, out: &out)
                            }
                        }
                        return out
                    }
                    assertClose(r.sixteen, r.f32, atol: 1e-5, "linear \(bits) block \(block) bias \(withBias)")
                }
            }
        }
    }

    func testConvolutionsWithSixteenBitWeights() {
        let (n, c, h, w, o) = (2, 6, 9, 7, 5)
        var rng = Lcg(state: 21)
        let x = rng.array(n * c * h * w), bias = rng.array(o)
        let asym = Conv2D.Padding(top: 0, bottom: 1, left: 0, right: 1)
        typealias Method = (ComputeContext, UnsafePointer<Float>, WeightMatrix, UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> Void
        // (label, weight count, output count, kernel)
        let cases: [(String, Int, Int, Method)] = [
            ("1x1", o * c, n * o * h * w, { ctx, xp, wm, bp, out in
                Conv2D.forwardIm2col(ctx, x: xp, n: n, c: c, h: h, w: w, weight: wm, bias: bp, outChannels: o,
                                     kernel: (1, 1), stride: 1, padding: .same(0), out: out) }),
            ("3x3 stride 2", o * c * 9, n * o * 4 * 3, { ctx, xp, wm, bp, out in
                Conv2D.forwardIm2col(ctx, x: xp, n: n, c: c, h: h, w: w, weight: wm, bias: bp, outChannels: o,
                                     kernel: (3, 3), stride: 2, padding: asym, out: out) }),
            ("small", o * c * 9, n * o * h * w, { ctx, xp, wm, bp, out in
                Conv2D.forwardSmall(ctx, x: xp, n: n, c: c, h: h, w: w, weight: wm, bias: bp, outChannels: o,
                                    kernel: (3, 3), padding: .same(1), out: out) }),
            ("bands", o * c * 9, n * o * h * w, { ctx, xp, wm, bp, out in
                Conv2D.forwardIm2col(ctx, x: xp, n: n, c: c, h: h, w: w, weight: wm, bias: bp, outChannels: o,
                                     kernel: (3, 3), stride: 1, padding: .same(1), out: out) }),
            ("winograd", o * c * 9, n * o * h * w, { ctx, xp, wm, bp, out in
                Conv2D.forwardWinograd(ctx, x: xp, n: n, c: c, h: h, w: w, weight: wm, bias: bp, outChannels: o,
                                       padding: .same(1), out: out) }),
        ]
        for (label, count, outCount, method) in cases {
            for bits in [WeightMatrix.Bits.f16, .bf16] {
                // One block; K slices that cut through taps; row blocks (Winograd).
                for block in [1 << 21, 4 * 9 * c + 7, 13] {
                    let r = both(count, bits, blockFloats: block, seed: 7) { ctx, wm in
                        var out = [Float](repeating: .nan, count: outCount)
                        x.withUnsafeBufferPointer { xp in
                            bias.withUnsafeBufferPointer { bp in method(ctx, xp.baseAddress!, wm, bp.baseAddress!, &out) }
                        }
                        return out
                    }
                    assertClose(r.sixteen, r.f32, atol: 1e-5, "\(label) \(bits) block \(block)")
                }
            }
        }
    }

    /// A matrix made of row segments stored apart (fused q/k/v read in place) multiplies as
    /// the same rows in one piece, in f32 and 16 bits, in one block and in many.
    func testSegmentedMatrixMatchesContiguous() {
        let (rows, i) = (4, 29), outs = [7, 5, 9], o = outs.reduce(0, +)
        var rng = Lcg(state: 12)
        let x = rng.array(rows * i)
        for bits in [WeightMatrix.Bits.f32, .f16, .bf16] {
            let (f, raw) = Self.values(o * i, bits, seed: 13)
            let want = f.withUnsafeBufferPointer { wp in
                Linear.forward(Tensor(shape: [rows, i], data: x), weight: Array(wp), bias: nil, outFeatures: o).data
            }
            for block in [1 << 21, 40, 3] {
                // Each segment in its own buffer, as separate tensors of a file are.
                let size = bits == .f32 ? 4 : 2
                var buffers: [UnsafeMutableRawPointer] = []
                defer { buffers.forEach { $0.deallocate() } }
                var first = 0
                for r in outs {
                    let b = UnsafeMutableRawPointer.allocate(byteCount: r * i * size, alignment: 64)
                    if bits == .f32 {
                        f.withUnsafeBytes { b.copyMemory(from: $0.baseAddress! + first * i * 4, byteCount: r * i * 4) }
                    } else {
                        raw.withUnsafeBytes { b.copyMemory(from: $0.baseAddress! + first * i * 2, byteCount: r * i * 2) }
                    }
                    buffers.append(b)
                    first += r
                }
                let wm = WeightMatrix(raw: buffers[0], bits: bits,
                                      segments: .init(bases: buffers.map { UnsafeRawPointer($0) }, rows: outs))
                XCTAssertFalse(wm.isPlainF32, "segments are read through blocks")
                var got = [Float](repeating: .nan, count: rows * o)
                x.withUnsafeBufferPointer { xp in
                    let ctx = ComputeContext()
                    ctx.policy.weightBlockFloats = block
                    Linear.forward(ctx, x: xp.baseAddress!, rows: rows, inFeatures: i, weight: wm,
                                   bias: nil, outFeatures: o, out: &got)
                }
                assertClose(got, want, atol: 1e-5, "segments \(bits) block \(block)")
            }
        }
    }

    /// The rows of a matrix stored as segments apart (fused q/k/v read in place), element by
    /// element against the values they were copied from, at every segment boundary: `row(r)` for
    /// every row; `rowBlocks` for every block height 1…rows (blocks split mid-segment, blocks
    /// spanning two and three segments, a ragged last block); `columnBlocks` for every width; and
    /// a Winograd convolution (the kernel that reads row blocks) and a linear layer with such a
    /// weight against direct sums in Double — never against another path of the same kernels.
    func testSegmentBoundariesAgainstDirectValues() {
        let outs = [7, 5, 9], rows = outs.reduce(0, +), firstRows = [0, 7, 12, 21]
        for bits in [WeightMatrix.Bits.f32, .f16, .bf16] {
            for rowLength in [29, 27] {  // 27 = 3 channels × 3×3 taps: the Winograd weight below
                let (f, raw) = Self.values(rows * rowLength, bits, seed: 31)
                let size = bits == .f32 ? 4 : 2
                var buffers: [UnsafeMutableRawPointer] = []
                defer { buffers.forEach { $0.deallocate() } }
                for (s, r) in outs.enumerated() {
                    let b = UnsafeMutableRawPointer.allocate(byteCount: r * rowLength * size, alignment: 64)
                    let offset = firstRows[s] * rowLength * size
                    if bits == .f32 {
                        f.withUnsafeBytes { b.copyMemory(from: $0.baseAddress! + offset, byteCount: r * rowLength * size) }
                    } else {
                        raw.withUnsafeBytes { b.copyMemory(from: $0.baseAddress! + offset, byteCount: r * rowLength * size) }
                    }
                    buffers.append(b)
                }
                let wm = WeightMatrix(raw: buffers[0], bits: bits, segments: .init(bases: buffers.map { UnsafeRawPointer($0) }, rows: outs))
                let label = "\(bits) rows \(outs) × \(rowLength)"
                // row(r): the segment holding r, at r's offset in it.
                for r in 0..<rows {
                    let s = firstRows.lastIndex { $0 <= r }!
                    XCTAssertEqual(wm.row(r, ld: rowLength), UnsafeRawPointer(buffers[s]) + (r - firstRows[s]) * rowLength * size, "\(label): row \(r)")
                }
                let ctx = ComputeContext()
                for height in 1...rows {
                    ctx.policy.weightBlockFloats = height * rowLength
                    var covered = 0
                    wm.rowBlocks(ctx, rows: rows, rowLength: rowLength) { range, block in
                        XCTAssertEqual(range.lowerBound, covered, "\(label) height \(height): blocks in order, no gap")
                        XCTAssertEqual(range.count, min(height, rows - covered), "\(label) height \(height)")
                        let got = Array(UnsafeBufferPointer(start: block, count: range.count * rowLength))
                        XCTAssertEqual(got, Array(f[(range.lowerBound * rowLength)..<(range.upperBound * rowLength)]),
                                       "\(label): row block \(range) of height \(height)")
                        covered = range.upperBound
                    }
                    XCTAssertEqual(covered, rows, "\(label) height \(height): every row")
                }
                for width in 1...rowLength {
                    ctx.policy.weightBlockFloats = rows * width
                    var covered = 0
                    wm.columnBlocks(ctx, rows: rows, ld: rowLength, columns: 0..<rowLength) { k, block, ldBlock in
                        XCTAssertEqual(k.lowerBound, covered, "\(label) width \(width)")
                        for r in 0..<rows {
                            let got = Array(UnsafeBufferPointer(start: block + r * ldBlock, count: k.count))
                            XCTAssertEqual(got, Array(f[(r * rowLength + k.lowerBound)..<(r * rowLength + k.upperBound)]),
                                           "\(label): row \(r), columns \(k)")
                        }
                        covered = k.upperBound
                    }
                    XCTAssertEqual(covered, rowLength, "\(label) width \(width): every column")
                }
                var rng = Lcg(state: 77)
                if rowLength == 27 {
                    // Winograd reads the weight in row blocks: blocks of 1, 4 (split inside the first
                    // segment, across the first boundary), 6 and all rows.
                    let (n, c, h, w) = (2, 3, 5, 6)
                    let x = rng.array(n * c * h * w), bias = rng.array(rows)
                    let want = KernelTests.naiveConv(Tensor(shape: [n, c, h, w], data: x), weight: f, bias: bias, outC: rows,
                                                     k: (3, 3), stride: 1, pad: .same(1))
                    for height in [1, 4, 6, rows] {
                        ctx.policy.weightBlockFloats = height * rowLength
                        var out = [Float](repeating: .nan, count: n * rows * h * w)
                        x.withUnsafeBufferPointer { xp in
                            bias.withUnsafeBufferPointer { bp in
                                Conv2D.forwardWinograd(ctx, x: xp.baseAddress!, n: n, c: c, h: h, w: w, weight: wm, bias: bp.baseAddress!,
                                                       outChannels: rows, padding: .same(1), out: &out)
                            }
                        }
                        assertClose(out, want.data, atol: 1e-5, "\(label): Winograd with segmented weight, row blocks of \(height)")
                    }
                } else {
                    let batch = 3
                    let x = rng.array(batch * rowLength)
                    var want = [Double](repeating: 0, count: batch * rows)
                    for b in 0..<batch { for o in 0..<rows { for i in 0..<rowLength {
                        want[b * rows + o] += Double(x[b * rowLength + i]) * Double(f[o * rowLength + i])
                    } } }
                    for width in [1, 5, rowLength] {
                        ctx.policy.weightBlockFloats = rows * width
                        var out = [Float](repeating: .nan, count: batch * rows)
                        x.withUnsafeBufferPointer { xp in
                            Linear.forward(ctx, x: xp.baseAddress!, rows: batch, inFeatures: rowLength, weight: wm, bias: nil,
                                           outFeatures: rows, out: &out)
                        }
                        assertClose(out, want, atol: 1e-5, "\(label): linear with segmented weight, K slices of \(width)")
                    }
                }
            }
        }
    }

    /// A safetensors file of `entries` (name, dtype, shape, little-endian bytes), `pad` bytes of
    /// an unused entry first (to misalign what follows).
    static func write(_ path: String, _ entries: [(String, String, [Int], [UInt8])], pad: Int = 0) throws {
        var fields: [String] = [], data = [UInt8](repeating: 0, count: pad), offset = pad
        if pad > 0 { fields.append("\"pad\":{\"dtype\":\"U8\",\"shape\":[\(pad)],\"data_offsets\":[0,\(pad)]}") }
        for (name, dtype, shape, bytes) in entries {
            fields.append("\"\(name)\":{\"dtype\":\"\(dtype)\",\"shape\":\(shape),\"data_offsets\":[\(offset),\(offset + bytes.count)]}")
            data += bytes
            offset += bytes.count
        }
        var header = Array(("{" + fields.joined(separator: ",") + "}").utf8)
        while header.count % 8 != 0 { header.append(0x20) }
        var n = UInt64(header.count).littleEndian
        var out = [UInt8]()
        withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
        try Data(out + header + data).write(to: URL(fileURLWithPath: path))
    }

    static func bytes(_ f: [Float], _ raw: [UInt16], _ bits: WeightMatrix.Bits) -> [UInt8] {
        bits == .f32 ? f.flatMap { v in withUnsafeBytes(of: v.bitPattern.littleEndian) { Array($0) } }
                     : raw.flatMap { [UInt8($0 & 0xff), UInt8($0 >> 8)] }
    }

    /// Checkpoints in f32, f16 and bf16: large matrices — linear, conv [O, C, 3, 3] and stacked
    /// q/k/v — are read in place (their storage is the file's mapping, in the stored bits),
    /// small vectors become f32, and every value is the stored one; with the loader's
    /// `readsInPlace` off, or an entry the file does not align, the values are the same in a
    /// private f32 copy.
    func testLoaderReadsMatricesInPlace() throws {
        let (o, c) = (48, 400)  // 19 200 elements: above Parameter.inPlaceMinimum
        for bits in [WeightMatrix.Bits.f32, .f16, .bf16] {
            let dtype = ["F32", "F16", "BF16"][bits == .f32 ? 0 : bits == .f16 ? 1 : 2]
            let conv = Self.values(o * c * 9, bits, seed: 1), lin = Self.values(o * c, bits, seed: 2)
            let lin2 = Self.values(o * c, bits, seed: 3), bias = Self.values(o, bits, seed: 4)
            for pad in [0, 1] {
                let path = NSTemporaryDirectory() + "in-place-\(getpid()).safetensors"
                defer { try? FileManager.default.removeItem(atPath: path) }
                try Self.write(path, [("conv.weight", dtype, [o, c, 3, 3], Self.bytes(conv.f32, conv.raw, bits)),
                                      ("lin.weight", dtype, [o, c], Self.bytes(lin.f32, lin.raw, bits)),
                                      ("lin2.weight", dtype, [o, c], Self.bytes(lin2.f32, lin2.raw, bits)),
                                      ("lin.bias", dtype, [o], Self.bytes(bias.f32, bias.raw, bits))], pad: pad)
                for inPlace in [true, false] {
                    let label = "\(dtype) pad \(pad) in place \(inPlace)"
                    // An odd pad misaligns every entry after it for f32 and 16 bits alike.
                    let mapped = inPlace && pad == 0
                    let file = try SafeTensorsFile(path: path)
                    let l = ParameterLoader(source: WeightStore(component: "test", file: file), readsInPlace: inPlace)
                    for (p, want) in [(try l.matrix("lin.weight", [o, c]), lin.f32),
                                      (try l.matrix("conv.weight", [o, c, 3, 3]), conv.f32),
                                      (try l.stacked(["lin.weight", "lin2.weight"], rows: [o, o], columns: c), lin.f32 + lin2.f32)] {
                        XCTAssertEqual(p.bits, mapped ? bits : .f32, label)
                        XCTAssertEqual(p.storage.owner === file, mapped, "\(label): the file's own bytes")
                        XCTAssertEqual(p.values, want, label)
                    }
                    let b = try l.matrix("lin.bias", [o])
                    XCTAssertEqual(b.bits, .f32, "vectors are converted")
                    XCTAssertNil(b.storage.owner, "vectors are converted")
                    XCTAssertEqual(b.values, bias.f32)
                }
            }
        }
    }
}
