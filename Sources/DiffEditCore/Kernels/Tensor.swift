/// A dense f32 tensor in C order: the value every model layer takes and returns.
public struct Tensor: Equatable {
    public var shape: [Int]
    public var data: [Float]

    public init(shape: [Int], data: [Float]) {
        precondition(shape.reduce(1, *) == data.count, "shape \(shape) needs \(shape.reduce(1, *)) elements, got \(data.count)")
        self.shape = shape
        self.data = data
    }

    public init(zeros shape: [Int]) {
        self.init(shape: shape, data: [Float](repeating: 0, count: shape.reduce(1, *)))
    }

    public var count: Int { data.count }
    public var rank: Int { shape.count }

    /// The same data seen with another shape of equal element count.
    public func reshaped(_ newShape: [Int]) -> Tensor { Tensor(shape: newShape, data: data) }

    /// Rows [start, start+n) of the leading dimension.
    public func slice(batch start: Int, count n: Int) -> Tensor {
        let inner = shape.dropFirst().reduce(1, *)
        var s = shape
        s[0] = n
        return Tensor(shape: s, data: Array(data[(start * inner)..<((start + n) * inner)]))
    }

    /// Concatenates along the leading dimension.
    public static func concat(batch parts: [Tensor]) -> Tensor {
        precondition(!parts.isEmpty)
        var s = parts[0].shape
        s[0] = parts.reduce(0) { $0 + $1.shape[0] }
        var d = [Float]()
        d.reserveCapacity(s.reduce(1, *))
        for p in parts {
            precondition(Array(p.shape.dropFirst()) == Array(s.dropFirst()))
            d.append(contentsOf: p.data)
        }
        return Tensor(shape: s, data: d)
    }

    /// Concatenates NCHW tensors along channels (UNet skip connections).
    public static func concat(channels a: Tensor, _ b: Tensor) -> Tensor {
        precondition(a.rank == 4 && b.rank == 4 && a.shape[0] == b.shape[0]
                     && a.shape[2] == b.shape[2] && a.shape[3] == b.shape[3])
        let n = a.shape[0], hw = a.shape[2] * a.shape[3]
        let ca = a.shape[1], cb = b.shape[1]
        var out = [Float]()
        out.reserveCapacity(n * (ca + cb) * hw)
        for i in 0..<n {
            out.append(contentsOf: a.data[(i * ca * hw)..<((i + 1) * ca * hw)])
            out.append(contentsOf: b.data[(i * cb * hw)..<((i + 1) * cb * hw)])
        }
        return Tensor(shape: [n, ca + cb, a.shape[2], a.shape[3]], data: out)
    }

    /// Largest absolute elementwise difference (tests and `tensor compare`).
    public func maxAbsDifference(_ other: Tensor) -> Float {
        precondition(count == other.count)
        var m: Float = 0
        for i in 0..<count { m = max(m, abs(data[i] - other.data[i])) }
        return m
    }
}
