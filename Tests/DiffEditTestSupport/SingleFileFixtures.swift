import Foundation
import XCTest
@testable import DiffEditCore

/// The fixture pipelines as single-file checkpoints in the original LDM layout. The weights are not
/// committed twice: Tests/Fixtures/single-file/<key>.recipe.json (written and checked against
/// diffusers' from_single_file by Tests/Reference/fixtures_single_file.py) lists every tensor of the
/// file — key, the fixture weights it is made of, shape, dtype, sha256 — and `build` assembles the
/// file from the committed fixture folder by byte copies, checking every hash.
public enum SingleFileFixtures {
    /// One tensor of a checkpoint to write.
    public struct Tensor {
        public var key: String
        public var dtype: String
        public var shape: [Int]
        public var bytes: [UInt8]
        public init(key: String, dtype: String, shape: [Int], bytes: [UInt8]) {
            self.key = key; self.dtype = dtype; self.shape = shape; self.bytes = bytes
        }
    }

    /// The recipe's tensors of `key`, assembled and hash-checked.
    public static func tensors(_ key: String) throws -> [Tensor] {
        if let t = cache[key] { return t }
        try Fixtures.require("single-file/\(key).recipe.json")
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("single-file/\(key).recipe.json")))
        let recipe = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let folder = try ModelFolder(root: Fixtures.path(try XCTUnwrap(recipe["from"] as? String)))
        var stores: [String: WeightStore] = [:]
        var out: [Tensor] = []
        for item in try XCTUnwrap(recipe["tensors"] as? [[String: Any]]) {
            let component = try XCTUnwrap(item["component"] as? String)
            if stores[component] == nil { stores[component] = try folder.weights(component) }
            let file = stores[component]!.file
            var bytes: [UInt8] = []
            for name in try XCTUnwrap(item["names"] as? [String]) {
                let e = try XCTUnwrap(file.entries[name], "\(key): the fixture folder has no \(component) weight \(name)")
                bytes += file.rawBytes(e)
            }
            let t = Tensor(key: try XCTUnwrap(item["key"] as? String), dtype: try XCTUnwrap(item["dtype"] as? String),
                           shape: try XCTUnwrap(item["shape"] as? [Int]), bytes: bytes)
            guard sha256Hex(bytes) == item["sha256"] as? String else {
                throw ToolError("\(key): tensor \(t.key) assembled from the fixture folder does not have the recipe's sha256 — regenerate the fixtures")
            }
            out.append(t)
        }
        cache[key] = out
        return out
    }

    nonisolated(unsafe) private static var cache: [String: [Tensor]] = [:]
    nonisolated(unsafe) private static var built: [String: String] = [:]

    /// A safetensors file of `tensors` (header keys sorted, data in list order).
    public static func safetensors(_ tensors: [Tensor]) -> [UInt8] {
        var header: [String: Any] = ["__metadata__": ["format": "pt"]]
        var offset = 0
        for t in tensors {
            header[t.key] = ["dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.bytes.count]]
            offset += t.bytes.count
        }
        var json = [UInt8](try! JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]))
        while json.count % 8 != 0 { json.append(0x20) }
        var out = [UInt8]()
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out += $0 }
        out += json
        for t in tensors { out += t.bytes }
        return out
    }

    /// Writes `<name>.safetensors` (the recipe's tensors after `edit`) into `dir`, with the fixture's
    /// sidecar beside it unless `sidecar` is false; returns the file's path.
    public static func write(_ key: String, in dir: URL, name: String? = nil, sidecar: Bool = true,
                      edit: (inout [Tensor]) -> Void = { _ in }) throws -> String {
        var t = try tensors(key)
        edit(&t)
        let stem = name ?? key
        let path = dir.appendingPathComponent(stem + ".safetensors")
        try Data(safetensors(t)).write(to: path)
        if sidecar {
            try FileManager.default.copyItem(atPath: Fixtures.path("single-file/\(key).diffedit.json"),
                                             toPath: dir.appendingPathComponent(stem + ".diffedit.json").path)
        }
        return path.path
    }

    /// `<key>.safetensors` with its sidecar, built once per test process.
    public static func path(_ key: String) throws -> String {
        if let p = built[key] { return p }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("diffedit-single-file-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let p = try write(key, in: dir)
        if built.isEmpty {
            atexit { try? FileManager.default.removeItem(at: FileManager.default.temporaryDirectory.appendingPathComponent("diffedit-single-file-\(getpid())")) }
        }
        built[key] = p
        return p
    }
}

/// SHA-256 (FIPS 180-4) of `bytes`, lowercase hex.
public func sha256Hex(_ bytes: [UInt8]) -> String {
    let k: [UInt32] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]
    var h: [UInt32] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]
    var message = bytes
    message.append(0x80)
    while message.count % 64 != 56 { message.append(0) }
    withUnsafeBytes(of: (UInt64(bytes.count) * 8).bigEndian) { message += $0 }
    func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }
    var w = [UInt32](repeating: 0, count: 64)
    for chunk in stride(from: 0, to: message.count, by: 64) {
        for i in 0..<16 {
            let j = chunk + 4 * i
            w[i] = UInt32(message[j]) << 24 | UInt32(message[j + 1]) << 16 | UInt32(message[j + 2]) << 8 | UInt32(message[j + 3])
        }
        for i in 16..<64 {
            let s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
            let s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
            w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
        }
        var (a, b, c, d, e, f, g, hh) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])
        for i in 0..<64 {
            let t1 = hh &+ (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) &+ ((e & f) ^ (~e & g)) &+ k[i] &+ w[i]
            let t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) &+ ((a & b) ^ (a & c) ^ (b & c))
            (hh, g, f, e, d, c, b, a) = (g, f, e, d &+ t1, c, b, a, t1 &+ t2)
        }
        for (i, v) in [a, b, c, d, e, f, g, hh].enumerated() { h[i] = h[i] &+ v }
    }
    return h.map { String(format: "%08x", $0) }.joined()
}
