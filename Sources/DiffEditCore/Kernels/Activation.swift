#if canImport(Glibc)
import Glibc
#endif

/// Pointwise activations, in place.
public enum Activation {
    @inline(__always) static func expf(_ x: Float) -> Float { Glibc.expf(x) }

    /// SiLU: x·σ(x).
    public static func silu(_ x: inout Tensor) {
        x.data.withUnsafeMutableBufferPointer { p in
            for i in 0..<p.count { let v = p[i]; p[i] = v / (1 + expf(-v)) }
        }
    }

    /// GELU, exact (erf) form: torch's default `gelu`.
    public static func gelu(_ x: inout Tensor) {
        x.data.withUnsafeMutableBufferPointer { p in
            for i in 0..<p.count { p[i] = geluScalar(p[i]) }
        }
    }

    @inline(__always) public static func geluScalar(_ v: Float) -> Float {
        0.5 * v * (1 + erff(v * 0.70710678118654752))
    }

    /// quick_gelu: x·σ(1.702x), CLIP's activation.
    public static func quickGelu(_ x: inout Tensor) {
        x.data.withUnsafeMutableBufferPointer { p in
            for i in 0..<p.count { let v = p[i]; p[i] = v / (1 + expf(-1.702 * v)) }
        }
    }

    /// GEGLU: splits the last dimension into (h, gate) halves and returns h·gelu(gate).
    public static func geglu(_ x: Tensor) -> Tensor {
        let d2 = x.shape.last!
        let d = d2 / 2
        let rows = x.count / d2
        var shape = x.shape
        shape[shape.count - 1] = d
        var out = [Float](repeating: 0, count: rows * d)
        x.data.withUnsafeBufferPointer { xp in
            out.withUnsafeMutableBufferPointer { op in
                for r in 0..<rows {
                    let h = xp.baseAddress! + r * d2
                    let g = h + d
                    let o = op.baseAddress! + r * d
                    for i in 0..<d { o[i] = h[i] * geluScalar(g[i]) }
                }
            }
        }
        return Tensor(shape: shape, data: out)
    }

    /// Numerically stable softmax over rows of length `n`, in place.
    @inline(__always)
    public static func softmaxRows(_ p: UnsafeMutablePointer<Float>, rows: Int, n: Int, stride: Int) {
        for r in 0..<rows {
            let row = p + r * stride
            var m = -Float.infinity
            for i in 0..<n { m = max(m, row[i]) }
            var s: Float = 0
            for i in 0..<n { let e = expf(row[i] - m); row[i] = e; s += e }
            let inv = 1 / s
            for i in 0..<n { row[i] *= inv }
        }
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
