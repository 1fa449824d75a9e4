/// NumPy `.npy` (format version 1.0) reading and writing, so any stage can be swapped for a
/// Python script: `tensor to-npy` / `tensor from-npy`. The writer produces exactly the bytes
/// numpy.save does for a C-order little-endian array.
public enum NPY {
    static let magic: [UInt8] = [0x93] + Array("NUMPY".utf8)

    static func descr(_ d: DType) -> String? {
        switch d {
        case .f32: return "<f4"
        case .f16: return "<f2"
        case .i32: return "<i4"
        case .i64: return "<i8"
        case .u8: return "|u1"
        case .bf16: return nil
        }
    }

    public static func encode(_ r: TensorRecord) throws -> [UInt8] {
        guard let d = descr(r.dtype) else {
            throw ToolError("NumPy has no \(r.dtype.rawValue) type — convert the record to f32 first")
        }
        let shape: String
        switch r.shape.count {
        case 0: shape = "()"
        case 1: shape = "(\(r.shape[0]),)"
        default: shape = "(" + r.shape.map(String.init).joined(separator: ", ") + ")"
        }
        var header = "{'descr': '\(d)', 'fortran_order': False, 'shape': \(shape), }"
        // numpy pads with spaces and a final newline so the data starts at a multiple of 64.
        let total = magic.count + 2 + 2 + header.utf8.count + 1
        header += String(repeating: " ", count: (64 - total % 64) % 64) + "\n"
        var out = magic + [1, 0]
        let n = header.utf8.count
        out += [UInt8(n & 0xFF), UInt8(n >> 8)]
        out += Array(header.utf8)
        out += r.bytes
        return out
    }

    /// Parses an .npy file (versions 1.0–3.0, little-endian or byte-order-free dtypes, C order).
    public static func decode(_ bytes: [UInt8], name: String, metadata: [String: String] = [:]) throws -> TensorRecord {
        guard bytes.count >= 10, Array(bytes[0..<6]) == magic else {
            throw ToolError("not a .npy file (no \\x93NUMPY magic) — write it with numpy.save")
        }
        let major = bytes[6]
        let headerLength: Int
        let headerStart: Int
        switch major {
        case 1:
            headerLength = Int(bytes[8]) | Int(bytes[9]) << 8
            headerStart = 10
        case 2, 3:
            guard bytes.count >= 12 else { throw ToolError(".npy header truncated") }
            headerLength = Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24
            headerStart = 12
        default:
            throw ToolError(".npy format version \(major) is not supported (1.0–3.0 are)")
        }
        guard headerLength <= 1 << 20, headerStart + headerLength <= bytes.count else {
            throw ToolError(".npy header truncated or too long")
        }
        let header = String(decoding: bytes[headerStart..<(headerStart + headerLength)], as: UTF8.self)
        func field(_ key: String) throws -> Substring {
            guard let r = header.range(of: "'\(key)':") else { throw ToolError(".npy header lacks '\(key)'") }
            return header[r.upperBound...].drop { $0 == " " }
        }
        let descrField = try field("descr")
        guard descrField.first == "'", let end = descrField.dropFirst().firstIndex(of: "'") else {
            throw ToolError(".npy header has a bad descr")
        }
        let descr = String(descrField[descrField.index(after: descrField.startIndex)..<end])
        let dtype: DType
        switch descr {
        case "<f4": dtype = .f32
        case "<f2": dtype = .f16
        case "<i4": dtype = .i32
        case "<i8": dtype = .i64
        case "|u1", "<u1": dtype = .u8
        default:
            throw ToolError(".npy dtype '\(descr)' is not supported — save as float32 ('<f4'), float16, int32, int64 or uint8, little-endian")
        }
        if try field("fortran_order").hasPrefix("True") {
            throw ToolError(".npy array is in Fortran order — save np.ascontiguousarray(a)")
        }
        let shapeField = try field("shape")
        guard shapeField.first == "(", let close = shapeField.firstIndex(of: ")") else {
            throw ToolError(".npy header has a bad shape")
        }
        let dims = shapeField[shapeField.index(after: shapeField.startIndex)..<close]
            .split(separator: ",").map { $0.trimmingSpaces }.filter { !$0.isEmpty }
        guard dims.count <= TensorStream.maxRank else { throw ToolError(".npy rank \(dims.count) is past the limit of \(TensorStream.maxRank)") }
        var shape: [Int] = []
        var count = 1
        for d in dims {
            guard let v = Int(d), v >= 0 else { throw ToolError(".npy shape has a bad dimension '\(d)'") }
            let (c, o) = count.multipliedReportingOverflow(by: v)
            guard !o else { throw ToolError(".npy shape overflows") }
            count = c
            shape.append(v)
        }
        let dataStart = headerStart + headerLength
        let (nbytes, o) = count.multipliedReportingOverflow(by: dtype.size)
        guard !o, bytes.count - dataStart == nbytes else {
            throw ToolError(".npy data is \(bytes.count - dataStart) bytes but shape \(shape) of \(descr) needs \(o ? -1 : nbytes) — truncated file?")
        }
        return TensorRecord(name: name, dtype: dtype, shape: shape, metadata: metadata,
                            bytes: Array(bytes[dataStart...]))
    }
}

extension Substring {
    var trimmingSpaces: Substring {
        var s = self
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return s
    }
}
