/// Element types of the tensor stream format (`man 5 diffedit-tensor`).
public enum DType: String, CaseIterable, Sendable {
    case f32, f16, bf16, i32, i64, u8

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .f32, .i32: return 4
        case .f16, .bf16: return 2
        case .i64: return 8
        case .u8: return 1
        }
    }

    public var isFloatingPoint: Bool {
        switch self {
        case .f32, .f16, .bf16: return true
        case .i32, .i64, .u8: return false
        }
    }
}

/// Conversions between the 16-bit float formats and Float, bit-exact with torch.
public enum HalfFloat {
    @inline(__always) public static func f16ToFloat(_ bits: UInt16) -> Float {
        Float(Float16(bitPattern: bits))
    }
    @inline(__always) public static func floatToF16(_ x: Float) -> UInt16 {
        Float16(x).bitPattern  // round to nearest even, as torch's .half()
    }
    @inline(__always) public static func bf16ToFloat(_ bits: UInt16) -> Float {
        Float(bitPattern: UInt32(bits) << 16)
    }
    /// Round to nearest even, NaN kept quiet, as torch's .bfloat16().
    @inline(__always) public static func floatToBF16(_ x: Float) -> UInt16 {
        let u = x.bitPattern
        if x.isNaN { return UInt16(truncatingIfNeeded: (u >> 16) | 0x40) }
        let rounding = 0x7FFF &+ ((u >> 16) & 1)
        return UInt16(truncatingIfNeeded: (u &+ rounding) >> 16)
    }
}
