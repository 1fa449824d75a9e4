/// Float32 elementwise helpers written in the order torch evaluates each expression, one rounding
/// per operation, so scheduler steps match diffusers bit for bit where the inputs do.
enum Elementwise {
    /// out[i] = f(a[i], b[i])
    @inline(__always)
    static func map2(_ a: Tensor, _ b: Tensor, _ f: (Float, Float) -> Float) -> Tensor {
        precondition(a.count == b.count, "shapes \(a.shape) and \(b.shape) differ")
        var out = [Float](repeating: 0, count: a.count)
        a.data.withUnsafeBufferPointer { ap in
            b.data.withUnsafeBufferPointer { bp in
                out.withUnsafeMutableBufferPointer { op in
                    for i in 0..<op.count { op[i] = f(ap[i], bp[i]) }
                }
            }
        }
        return Tensor(shape: a.shape, data: out)
    }

    @inline(__always)
    static func map1(_ a: Tensor, _ f: (Float) -> Float) -> Tensor {
        var out = a
        out.data.withUnsafeMutableBufferPointer { op in
            for i in 0..<op.count { op[i] = f(op[i]) }
        }
        return out
    }
}
