import CKernels

/// Vectorised float32 transcendental kernels for the hot elementwise work of the UNet (softmax,
/// SiLU, GELU), written over SIMD8<Float> so they compile to packed SSE/AVX code. Accuracy is
/// that of torch's own vectorised CPU kernels (Cephes-style exp, ≲ 2 ulp; erf by Abramowitz &
/// Stegun 7.1.26 like ATen's Vectorized<float>::erf, |error| < 1.5e-7), not of libm.
public enum VectorMath {
    public typealias V = SIMD8<Float>

    // The scalar functions below use only arithmetic, comparisons-with-select and bit casts, so
    // the loops that call them are auto-vectorised by LLVM (SSE on baseline x86-64, NEON on arm64).

    /// e^x: Cephes-style range reduction x = n·ln2 + r and a degree-6 polynomial (≲ 2 ulp);
    /// exactly 0 below −87.3 (so −∞ from a causal mask gives 0).
    @inline(__always)
    public static func exp(_ xIn: Float) -> Float {
        let x0: Float = xIn < -88 ? -88 : xIn
        let x: Float = x0 > 88.5 ? 88.5 : x0
        // n = round(x·log2 e) via the 1.5·2^23 trick; t's low mantissa bits hold n.
        let magic: Float = 12_582_912
        let t = x * 1.44269504088896341 + magic
        let n = t - magic
        var r = x - n * 0.693359375
        r = r - n * -2.12194440e-4
        let z = r * r
        var y: Float = 1.9875691500e-4
        y = y * r + 1.3981999507e-3
        y = y * r + 8.3334519073e-3
        y = y * r + 4.1665795894e-2
        y = y * r + 1.6666665459e-1
        y = y * r + 5.0000001201e-1
        y = y * z + r + 1
        let e = (t.bitPattern &- 0x4B40_0000 &+ 127) &<< 23
        let result = y * Float(bitPattern: e)
        return xIn < -87.3 ? 0 : result
    }

    /// erf by A&S 7.1.26, the formula ATen's Vectorized<float>::erf uses (|error| < 1.5e-7).
    @inline(__always)
    public static func erf(_ x: Float) -> Float {
        let a: Float = x < 0 ? -x : x
        let t = 1 / (0.3275911 * a + 1)
        var r: Float = 1.061405429 * t - 1.453152027
        r = r * t + 1.421413741
        r = r * t - 0.284496736
        r = r * t + 0.254829592
        let y = 1 - r * t * exp(-(x * x))
        return x < 0 ? -y : y
    }

    /// Exact-form GELU: x/2 · (1 + erf(x/√2)).
    @inline(__always)
    public static func gelu(_ x: Float) -> Float {
        x * 0.5 * (1 + erf(x * 0.70710678118654752))
    }

    @inline(__always)
    public static func silu(_ x: Float) -> Float { x / (1 + exp(-x)) }

    @inline(__always)
    static func load(_ p: UnsafePointer<Float>) -> V {
        UnsafeRawPointer(p).loadUnaligned(as: V.self)
    }

    /// SiLU in place over n floats (CKernels: AVX-512/AVX2 where the CPU has them).
    public static func silu(_ p: UnsafeMutablePointer<Float>, count n: Int) {
        diffedit_silu(p, n)
    }

    /// out[r][i] = h[r][i] · gelu(g[r][i]) where each input row is [h (d) | g (d)] (GEGLU).
    public static func geglu(_ x: UnsafePointer<Float>, rows: Int, d: Int, out: UnsafeMutablePointer<Float>) {
        diffedit_geglu(x, rows, d, out)
    }

    /// Sum of n floats with eight running partial sums.
    @inline(__always)
    static func sum(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = V(repeating: 0)
        var i = 0
        while i + 8 <= n { acc += load(p + i); i += 8 }
        var s = acc.sum()
        while i < n { s += p[i]; i += 1 }
        return s
    }

    /// Maximum of n floats with four running maxima.
    @inline(__always)
    static func max(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
        var m0 = -Float.infinity, m1 = m0, m2 = m0, m3 = m0
        var i = 0
        while i + 4 <= n {
            m0 = p[i] > m0 ? p[i] : m0
            m1 = p[i + 1] > m1 ? p[i + 1] : m1
            m2 = p[i + 2] > m2 ? p[i + 2] : m2
            m3 = p[i + 3] > m3 ? p[i + 3] : m3
            i += 4
        }
        var m = Swift.max(Swift.max(m0, m1), Swift.max(m2, m3))
        while i < n { m = Swift.max(m, p[i]); i += 1 }
        return m
    }

    /// The unnormalised half of a softmax: each row becomes exp(x − max(row)) in place and its sum
    /// is written to sums[r]. Attention divides its (much narrower) output rows by the sums instead
    /// of the score rows. (CKernels: the same exp, AVX-512/AVX2 where the CPU has them.)
    public static func expRows(_ p: UnsafeMutablePointer<Float>, rows: Int, n: Int, stride: Int,
                               sums: UnsafeMutablePointer<Float>) {
        diffedit_exp_rows(p, rows, n, stride, sums)
    }

    /// Softmax over `rows` rows of length n (row stride `stride`), in place.
    public static func softmaxRows(_ p: UnsafeMutablePointer<Float>, rows: Int, n: Int, stride: Int) {
        for r in 0..<rows {
            let row = p + r * stride
            var m = max(row, n)
            if m == -.infinity { m = 0 }  // fully masked row: all exp(−∞) = 0, sum 0 → NaN like torch
            for i in 0..<n { row[i] = exp(row[i] - m) }
            let inv = 1 / sum(row, n)
            for i in 0..<n { row[i] *= inv }
        }
    }
}
