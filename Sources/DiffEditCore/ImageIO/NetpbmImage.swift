#if canImport(Glibc)
import Glibc
#endif
import CNetpbm

/// One image as libnetpbm reads it: interleaved HWC samples scaled to [0, 1].
public struct NetpbmImage {
    public var width: Int
    public var height: Int
    /// Samples per pixel: 1 grey, 2 grey+alpha, 3 RGB, 4 RGB+alpha.
    public var depth: Int
    public var maxval: Int
    public var tupleType: String
    /// height × width × depth samples in [0, 1].
    public var samples: [Float]

    public var hasAlpha: Bool { depth == 2 || depth == 4 }

    /// The image as diffusers' VaeImageProcessor gives it to the VAE: [1, 3, H, W] in [-1, 1]
    /// (x/maxval in f32, then 2x − 1). Grey is replicated to RGB; alpha is dropped.
    public func rgbTensor() -> Tensor {
        let hw = width * height
        var out = [Float](repeating: 0, count: 3 * hw)
        let colorChannels = depth >= 3 ? 3 : 1
        samples.withUnsafeBufferPointer { s in
            out.withUnsafeMutableBufferPointer { o in
                for c in 0..<3 {
                    let src = colorChannels == 3 ? c : 0
                    for i in 0..<hw { o[c * hw + i] = 2 * s[i * depth + src] - 1 }
                }
            }
        }
        return Tensor(shape: [1, 3, height, width], data: out)
    }

    /// Largest image the readers accept before allocating: 2^28 samples (a 16k × 16k RGB image).
    public static var maxSamples = 1 << 28

    /// Reads every image of a netpbm stream (PBM, PGM, PPM, PAM; plain or raw; any maxval).
    /// The whole input is read first so that a truncated or foreign file is reported by us, not
    /// by libnetpbm exiting the process. `check(width, height, depth)` sees each image's header
    /// before its raster is allocated — the first one before the input is even read, so that an
    /// image too large for what follows is refused before anything big is allocated.
    public static func readAll(_ input: ByteReader, limitBytes: Int = 1 << 32,
                               check: ((Int, Int, Int) throws -> Void)? = nil) throws -> [NetpbmImage] {
        try readEach(input, limitBytes: limitBytes, check: check) { file, info, err in
            var samples = [Float](repeating: 0, count: Int(info.width) * Int(info.height) * Int(info.depth))
            let ok = samples.withUnsafeMutableBufferPointer { s in
                diffedit_image_read_raster(file, &info, s.baseAddress!, &err, err.count)
            }
            let tupleType = withUnsafeBytes(of: info.tuple_type) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            return ok != 0 ? nil : NetpbmImage(width: Int(info.width), height: Int(info.height), depth: Int(info.depth),
                                               maxval: Int(info.maxval), tupleType: tupleType, samples: samples)
        }
    }

    /// The reading loop of every netpbm reader: headers checked, each raster read by `raster`
    /// (nil when libnetpbm failed, its message in `err`).
    static func readEach<Image>(_ input: ByteReader, limitBytes: Int, check: ((Int, Int, Int) throws -> Void)?,
                                raster: (UnsafeMutablePointer<FILE>, inout diffedit_image_info, inout [CChar]) -> Image?) throws -> [Image] {
        if input.fd == 0 && input.isTerminal {
            throw ToolError("expected a netpbm image on stdin, which is a terminal — pipe one in (e.g. pngtopnm photo.png | ...)")
        }
        // The first header from the first few kilobytes, where it always is.
        var prefix = try input.peekBytes(upTo: 4096)
        if prefix.count >= 2, prefix[0] == UInt8(ascii: "P") {
            try prefix.withUnsafeMutableBytes { raw in
                guard let file = fmemopen(raw.baseAddress, raw.count, "rb") else { return }
                defer { fclose(file) }
                var info = diffedit_image_info()
                var err = [CChar](repeating: 0, count: 512)
                if diffedit_image_read_header(file, 1, &info, &err, err.count) == 0 {
                    try checkHeader(Int(info.width), Int(info.height), Int(info.depth), index: 0, label: input.label, check)
                }
            }
        }
        var bytes = try input.readToEnd(limit: limitBytes)
        guard !bytes.isEmpty else {
            throw ToolError("\(input.label): empty input, expected a netpbm image (PBM/PGM/PPM/PAM) — convert with e.g. pngtopnm or jpegtopnm")
        }
        guard bytes.count >= 2, bytes[0] == UInt8(ascii: "P"), (UInt8(ascii: "1")...UInt8(ascii: "7")).contains(bytes[1]) else {
            throw ToolError("\(input.label): not a netpbm image (no P1..P7 magic) — convert it first, e.g. pngtopnm photo.png or jpegtopnm photo.jpg")
        }
        return try bytes.withUnsafeMutableBytes { raw -> [Image] in
            guard let file = fmemopen(raw.baseAddress, raw.count, "rb") else {
                throw ToolError("cannot open the image buffer: \(String(cString: strerror(errno)))")
            }
            defer { fclose(file) }
            var images: [Image] = []
            var err = [CChar](repeating: 0, count: 512)
            while true {
                var info = diffedit_image_info()
                let status = diffedit_image_read_header(file, images.isEmpty ? 1 : 0, &info, &err, err.count)
                if status == 1 { break }
                if status != 0 {
                    throw ToolError("\(input.label): bad netpbm image \(images.count): \(String(cString: err))")
                }
                try checkHeader(Int(info.width), Int(info.height), Int(info.depth), index: images.count, label: input.label, check)
                guard let image = raster(file, &info, &err) else {
                    throw ToolError("\(input.label): bad netpbm image \(images.count): \(String(cString: err)) — the file may be truncated")
                }
                images.append(image)
                // Only whitespace may follow the last image.
                if try onlyWhitespaceLeft(file) { break }
            }
            return images
        }
    }

    /// Refuses empty images and rasters past `maxSamples` (with the memory they would take),
    /// then runs the caller's check.
    static func checkHeader(_ w: Int, _ h: Int, _ d: Int, index: Int, label: String,
                            _ check: ((Int, Int, Int) throws -> Void)?) throws {
        guard w > 0, h > 0, d > 0 else {
            throw ToolError("\(label): image \(index) is \(w)x\(h) with depth \(d) — nothing to process; check the image file")
        }
        try check?(w, h, d)  // the caller's estimate (the model's memory) names the larger need
        let samples = Double(w) * Double(h) * Double(d)
        guard samples <= Double(maxSamples) else {
            throw ToolError("\(label): image \(index) is \(w)x\(h)x\(d), past the limit of \(maxSamples) samples (its raster alone needs \(MemoryBudget.describe(samples * 5)) of memory) — scale it down first, e.g. pamscale -xyfit 1024 1024")
        }
    }

    private static func onlyWhitespaceLeft(_ file: UnsafeMutablePointer<FILE>) throws -> Bool {
        let here = ftell(file)
        while true {
            let c = fgetc(file)
            if c == EOF { return true }
            if c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 { continue }
            fseek(file, here, SEEK_SET)
            return false
        }
    }

    /// diffusers' postprocess of one sample in [-1, 1] to an integer level:
    /// (x·0.5 + 0.5).clamp(0, 1), × maxval, round half to even (numpy's round).
    @inline(__always) public static func quantize(_ x: Float, maxval: Float) -> UInt16 {
        var v = x * 0.5 + 0.5
        if !(v >= 0) { v = 0 }  // NaN becomes black rather than undefined
        if v > 1 { v = 1 }
        return UInt16((v * maxval).rounded(.toNearestOrEven))
    }

    /// Writes each batch entry of an NCHW tensor in [-1, 1] as one raw image (C = 3 → PPM,
    /// C = 1 → PGM) of a multi-image stream, 8 or 16 bits per sample.
    public static func write(_ t: Tensor, bits: Int = 8, to out: ByteWriter) throws {
        guard t.rank == 4, t.shape[1] == 3 || t.shape[1] == 1 else {
            throw ToolError("cannot write a \(t.shape.map(String.init).joined(separator: "x")) tensor as an image — need [N, 3, H, W] or [N, 1, H, W]")
        }
        guard bits == 8 || bits == 16 else { throw ToolError("image depth must be 8 or 16 bits, not \(bits)") }
        let (n, c, h, w) = (t.shape[0], t.shape[1], t.shape[2], t.shape[3])
        let maxval: Float = bits == 8 ? 255 : 65535
        var levels = [UInt16](repeating: 0, count: h * w * c)
        for b in 0..<n {
            t.data.withUnsafeBufferPointer { p in
                let base = b * c * h * w
                for ch in 0..<c {
                    for i in 0..<(h * w) { levels[i * c + ch] = quantize(p[base + ch * h * w + i], maxval: maxval) }
                }
            }
            try writeLevels(width: w, height: h, depth: c, maxval: Int(maxval), levels: levels, to: out)
        }
    }

    /// Writes one image from interleaved integer levels (0...maxval) through libnetpbm.
    public static func writeLevels(width: Int, height: Int, depth: Int, maxval: Int, levels: [UInt16],
                                   to out: ByteWriter) throws {
        precondition(levels.count == width * height * depth)
        try writeThroughLibnetpbm(to: out) { file, err, errCount in
            levels.withUnsafeBufferPointer { l in
                diffedit_image_write(file, Int32(width), Int32(height), Int32(depth), UInt(maxval), l.baseAddress!, err, errCount)
            }
        }
    }

    /// Runs a libnetpbm writer into a memory stream, then writes the bytes to `out` (libnetpbm
    /// writes to a FILE; our output goes through ByteWriter). `encode` returns the shim's status.
    static func writeThroughLibnetpbm(to out: ByteWriter,
                                      _ encode: (UnsafeMutablePointer<FILE>, UnsafeMutablePointer<CChar>, Int) -> Int32) throws {
        var buffer: UnsafeMutablePointer<CChar>? = nil
        var size = 0
        guard let file = open_memstream(&buffer, &size) else {
            throw ToolError("cannot allocate an image buffer: \(String(cString: strerror(errno)))")
        }
        var err = [CChar](repeating: 0, count: 512)
        let status = err.withUnsafeMutableBufferPointer { e in encode(file, e.baseAddress!, e.count) }
        fclose(file)
        defer { free(buffer) }
        if status != 0 { throw ToolError("cannot encode the image: \(String(cString: err))") }
        try out.write(UnsafeRawBufferPointer(start: buffer, count: size))
    }
}
