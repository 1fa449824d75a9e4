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

    /// Entry `k` of dimension 1 of a [N, T, …] tensor, as [N, …].
    public func step(_ k: Int) -> Tensor {
        let n = shape[0], t = shape[1]
        let inner = count / (n * t)
        var out = [Float]()
        out.reserveCapacity(n * inner)
        for b in 0..<n { out.append(contentsOf: data[((b * t + k) * inner)..<((b * t + k + 1) * inner)]) }
        return Tensor(shape: [n] + Array(shape.dropFirst(2)), data: out)
    }

    /// Largest absolute elementwise difference; NaN when any difference is NaN (Swift's `max`
    /// would skip it and report agreement).
    public func maxAbsDifference(_ other: Tensor) -> Float {
        precondition(count == other.count)
        var m: Float = 0
        for i in 0..<count {
            let d = abs(data[i] - other.data[i])
            if d.isNaN { return .nan }
            if d > m { m = d }
        }
        return m
    }
}

/// Elementwise arithmetic on tensors of equal shape.
public extension Tensor {
    static func + (a: Tensor, b: Tensor) -> Tensor {
        var r = a
        r += b
        return r
    }

    static func += (a: inout Tensor, b: Tensor) {
        precondition(a.count == b.count, "add: \(a.shape) vs \(b.shape)")
        a.data.withUnsafeMutableBufferPointer { ap in
            b.data.withUnsafeBufferPointer { bp in
                for i in 0..<ap.count { ap[i] += bp[i] }
            }
        }
    }

    static func - (a: Tensor, b: Tensor) -> Tensor {
        precondition(a.count == b.count)
        var r = a
        r.data.withUnsafeMutableBufferPointer { rp in
            b.data.withUnsafeBufferPointer { bp in
                for i in 0..<rp.count { rp[i] -= bp[i] }
            }
        }
        return r
    }

    static func * (a: Tensor, s: Float) -> Tensor {
        var r = a
        r.data.withUnsafeMutableBufferPointer { rp in
            for i in 0..<rp.count { rp[i] *= s }
        }
        return r
    }
}
