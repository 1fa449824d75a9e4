#if canImport(Glibc)
import Glibc
#endif
import CNetpbm

/// One image as its integer levels (0...maxval, interleaved HWC), with what it takes to write it
/// back as it came: the format (PBM/PGM/PPM/PAM) and the PAM tuple type. composite reads the
/// original photo this way so that a sample it leaves alone is written back bit for bit, and
/// holds two bytes per sample rather than a float's four.
public struct NetpbmLevels {
    public var width: Int
    public var height: Int
    /// Samples per pixel: 1 grey, 2 grey+alpha, 3 RGB, 4 RGB+alpha.
    public var depth: Int
    public var maxval: Int
    /// libnetpbm's format code (plain or raw PBM/PGM/PPM, or PAM).
    public var format: Int32
    /// The PAM tuple type ("RGB_ALPHA"…); "" for PBM/PGM/PPM.
    public var tupleType: String
    public var levels: [UInt16]

    public init(width: Int, height: Int, depth: Int, maxval: Int, format: Int32, tupleType: String, levels: [UInt16]) {
        precondition(levels.count == width * height * depth)
        (self.width, self.height, self.depth, self.maxval) = (width, height, depth, maxval)
        (self.format, self.tupleType, self.levels) = (format, tupleType, levels)
    }

    /// libnetpbm's code of raw PGM (P5).
    public static let rawPGM = Int32(UInt8(ascii: "P")) << 8 | Int32(UInt8(ascii: "5"))

    public var hasAlpha: Bool { depth == 2 || depth == 4 }
    /// Colour samples per pixel (alpha excluded): 1 or 3.
    public var colorChannels: Int { depth >= 3 ? 3 : 1 }

    /// The format's name for messages: "PPM", "PAM RGB_ALPHA"…
    public var formatName: String {
        switch UInt8(truncatingIfNeeded: format) {
        case UInt8(ascii: "1"), UInt8(ascii: "4"): return "PBM"
        case UInt8(ascii: "2"), UInt8(ascii: "5"): return "PGM"
        case UInt8(ascii: "3"), UInt8(ascii: "6"): return "PPM"
        default: return tupleType.isEmpty ? "PAM" : "PAM \(tupleType)"
        }
    }

    /// Every image of a netpbm stream as levels (the checks of NetpbmImage.readAll).
    public static func readAll(_ input: ByteReader, limitBytes: Int = 1 << 32,
                               check: ((Int, Int, Int) throws -> Void)? = nil) throws -> [NetpbmLevels] {
        try NetpbmImage.readEach(input, limitBytes: limitBytes, check: check) { file, info, err in
            var levels = [UInt16](repeating: 0, count: Int(info.width) * Int(info.height) * Int(info.depth))
            let ok = levels.withUnsafeMutableBufferPointer { l in
                diffedit_image_read_levels(file, &info, l.baseAddress!, &err, err.count)
            }
            let tupleType = withUnsafeBytes(of: info.tuple_type) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            return ok != 0 ? nil : NetpbmLevels(width: Int(info.width), height: Int(info.height), depth: Int(info.depth),
                                                maxval: Int(info.maxval), format: info.format, tupleType: tupleType, levels: levels)
        }
    }

    /// The one image of `input`; a stream of several is refused (`what` names the input).
    public static func readOne(_ input: ByteReader, what: String,
                               check: ((Int, Int, Int) throws -> Void)? = nil) throws -> NetpbmLevels {
        let images = try readAll(input, check: check)
        guard images.count == 1 else {
            throw ToolError("\(input.label) holds \(images.count) images, \(what) is one — split the stream first, e.g. pamsplit")
        }
        return images[0]
    }

    /// Writes the image in its own format (the raw variant of a plain one), maxval and tuple type.
    public func write(to out: ByteWriter) throws {
        try NetpbmImage.writeThroughLibnetpbm(to: out) { file, err, errCount in
            levels.withUnsafeBufferPointer { l in
                diffedit_image_write_format(file, Int32(width), Int32(height), Int32(depth), UInt(maxval), format,
                                            tupleType, l.baseAddress!, err, errCount)
            }
        }
    }
}
