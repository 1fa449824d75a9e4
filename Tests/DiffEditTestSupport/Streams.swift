import Foundation
@testable import DiffEditCore

/// Parses a tensor stream given as bytes through a pipe, as the tools read stdin.
public func decodeStream(_ bytes: [UInt8]) throws -> [TensorRecord] {
    signal(SIGPIPE, SIG_IGN)  // the reader may stop early on a hostile stream
    return try TensorStreamReader(pipeReader(bytes)).readAll()
}

/// Parses netpbm images (PBM, PGM, PPM, PAM; several concatenated) given as bytes.
public func readImages(_ bytes: [UInt8]) throws -> [NetpbmImage] {
    try NetpbmImage.readAll(pipeReader(bytes))
}

/// Writes `t` (values in [-1, 1], [N, C, H, W]) as netpbm images of `bits` bits and returns the bytes.
public func encodeImage(_ t: Tensor, bits: Int = 8) throws -> [UInt8] {
    let f = FileManager.default.temporaryDirectory.appendingPathComponent("diffedit-test-\(UUID().uuidString).pnm")
    defer { try? FileManager.default.removeItem(at: f) }
    let fd = open(f.path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
    guard fd >= 0 else { throw ToolError("cannot create \(f.path) — test harness") }
    defer { close(fd) }
    let w = ByteWriter(fd: fd, label: f.path)
    try NetpbmImage.write(t, bits: bits, to: w)
    try w.flush()
    return [UInt8](try Data(contentsOf: f))
}

/// A tensor whose values are exact `maxval` levels mapped to [-1, 1], so writing and reading back is lossless.
public func levelsTensor(_ n: Int, _ c: Int, _ h: Int, _ w: Int, maxval: Float = 255) -> Tensor {
    var g = SystemRandomNumberGenerator()
    let data = (0..<(n * c * h * w)).map { _ in Float(Int.random(in: 0...Int(maxval), using: &g)) / maxval * 2 - 1 }
    return Tensor(shape: [n, c, h, w], data: data)
}

/// Writes a safetensors file of zero-filled f32 tensors.
public func writeSafeTensors(_ url: URL, _ tensors: [(String, [Int])]) throws {
    var header = "{"
    var offset = 0
    for (k, (name, shape)) in tensors.enumerated() {
        let bytes = shape.reduce(4, *)
        header += (k > 0 ? "," : "") + "\"\(name)\":{\"dtype\":\"F32\",\"shape\":\(shape),\"data_offsets\":[\(offset),\(offset + bytes)]}"
        offset += bytes
    }
    header += "}"
    var out = [UInt8]()
    withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { out.append(contentsOf: $0) }
    out += Array(header.utf8)
    out += [UInt8](repeating: 0, count: offset)
    try Data(out).write(to: url)
}
