/// One record of a tensor stream: a named, typed, shaped block of little-endian C-order data
/// with free-form metadata. See `man 5 diffedit-tensor`.
public struct TensorRecord: Equatable {
    public var name: String
    public var dtype: DType
    public var shape: [Int]
    /// Metadata `key=value` pairs. Writers emit them sorted by key, so equal records give equal
    /// bytes.
    public var metadata: [String: String]
    /// Raw element bytes, little-endian, C order; `count * dtype.size` of them.
    public var bytes: [UInt8]

    public init(name: String, dtype: DType, shape: [Int], metadata: [String: String] = [:],
                bytes: [UInt8]) {
        precondition(bytes.count == TensorRecord.elementCount(shape) * dtype.size,
                     "record \(name): \(bytes.count) bytes for shape \(shape) \(dtype)")
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.metadata = metadata
        self.bytes = bytes
    }

    /// An f32 record.
    public init(name: String, shape: [Int], floats: [Float], metadata: [String: String] = [:]) {
        precondition(floats.count == TensorRecord.elementCount(shape))
        self.init(name: name, dtype: .f32, shape: shape, metadata: metadata,
                  bytes: floats.withUnsafeBytes { Array($0) })
    }

    /// An i32 record.
    public init(name: String, shape: [Int], int32s: [Int32], metadata: [String: String] = [:]) {
        precondition(int32s.count == TensorRecord.elementCount(shape))
        self.init(name: name, dtype: .i32, shape: shape, metadata: metadata,
                  bytes: int32s.withUnsafeBytes { Array($0) })
    }

    /// An f32 record from a compute tensor.
    public init(name: String, tensor: Tensor, metadata: [String: String] = [:]) {
        self.init(name: name, shape: tensor.shape, floats: tensor.data, metadata: metadata)
    }

    public var rank: Int { shape.count }
    public var count: Int { TensorRecord.elementCount(shape) }

    static func elementCount(_ shape: [Int]) -> Int { shape.reduce(1, *) }

    /// "1x4x64x64 f32" — how messages describe a record.
    public var shapeDescription: String {
        (shape.isEmpty ? "scalar" : shape.map(String.init).joined(separator: "x")) + " " + dtype.rawValue
    }

    /// The elements as Float, converting from any dtype (integers exactly where they fit).
    public func floats() -> [Float] {
        let n = count
        return [Float](unsafeUninitializedCapacity: n) { out, initialized in
            bytes.withUnsafeBytes { raw in
                switch dtype {
                case .f32:
                    for i in 0..<n { out[i] = raw.loadUnaligned(fromByteOffset: i * 4, as: Float.self) }
                case .f16:
                    for i in 0..<n {
                        out[i] = HalfFloat.f16ToFloat(raw.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))
                    }
                case .bf16:
                    for i in 0..<n {
                        out[i] = HalfFloat.bf16ToFloat(raw.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))
                    }
                case .i32:
                    for i in 0..<n { out[i] = Float(raw.loadUnaligned(fromByteOffset: i * 4, as: Int32.self)) }
                case .i64:
                    for i in 0..<n { out[i] = Float(raw.loadUnaligned(fromByteOffset: i * 8, as: Int64.self)) }
                case .u8:
                    for i in 0..<n { out[i] = Float(raw[i]) }
                }
            }
            initialized = n
        }
    }

    /// The elements as Double (for statistics).
    public func doubles() -> [Double] {
        switch dtype {
        case .i64:
            return bytes.withUnsafeBytes { raw in
                (0..<count).map { Double(raw.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self)) }
            }
        default:
            return floats().map(Double.init)
        }
    }

    /// The elements as Int32; throws for floating-point or out-of-range data.
    public func int32s() throws -> [Int32] {
        switch dtype {
        case .i32:
            return bytes.withUnsafeBytes { raw in
                (0..<count).map { raw.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self) }
            }
        case .i64:
            return try bytes.withUnsafeBytes { raw in
                try (0..<count).map {
                    let v = raw.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self)
                    guard let w = Int32(exactly: v) else {
                        throw ToolError("record '\(name)' holds \(v), which does not fit in i32 — token ids must come from tokenize")
                    }
                    return w
                }
            }
        case .u8:
            return bytes.map { Int32($0) }
        default:
            throw ToolError("record '\(name)' is \(dtype.rawValue), expected integer token ids (i32) — pass the output of tokenize")
        }
    }

    /// The record as an f32 compute tensor.
    public func tensor() -> Tensor { Tensor(shape: shape, data: floats()) }

    /// Throws unless the record is floating point with the given rank.
    public func expectFloat(rank: Int, what: String) throws {
        guard dtype.isFloatingPoint else {
            throw ToolError("record '\(name)' is \(dtype.rawValue), expected floating-point \(what) — check which file feeds this input")
        }
        guard shape.count == rank else {
            throw ToolError("record '\(name)' has shape \(shapeDescription), expected rank-\(rank) \(what) — check which file feeds this input")
        }
    }

    /// NaN and ±Inf elements (always 0 for integer dtypes).
    public var nonFiniteCounts: (nan: Int, inf: Int) {
        guard dtype.isFloatingPoint else { return (0, 0) }
        var nan = 0, inf = 0
        for x in floats() where !x.isFinite { if x.isNaN { nan += 1 } else { inf += 1 } }
        return (nan, inf)
    }

    /// Refuses NaN or ±Inf elements unless `allow` (the tools' --allow-nonfinite): a stage fed
    /// them would only spread them, so the error names the input instead.
    /// An input let through with them is noted, so that the outputs may carry them on.
    public func requireFinite(from source: String, allow: Bool) throws {
        let (nan, inf) = nonFiniteCounts
        guard nan == 0 && inf == 0 else {
            if allow { NonfiniteOutput.admitInput(); return }
            throw ToolError("\(source): record '\(name)' holds \(nan) NaN and \(inf) infinite values — the stage that made it diverged or the file is corrupt; fix that input, or pass --allow-nonfinite to process it anyway")
        }
    }
}
