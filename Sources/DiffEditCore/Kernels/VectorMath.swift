import Foundation

import Dispatch

/// Vectorised float32 transcendental kernels for the hot elementwise work of the UNet (softmax,
/// SiLU, GELU), written over SIMD8<Float> so they compile to packed SSE/AVX code. Accuracy is
/// that of torch's own vectorised CPU kernels (Cephes-style exp, ≲ 2 ulp; erf by Abramowitz &
/// Stegun 7.1.26 like ATen's Vectorized<float>::erf, |error| < 1.5e-7), not of libm.
public enum VectorMath {
    public typealias V = SIMD8<Float>

    /// e^x for each lane; exactly 0 below −87.3 (so −∞ from a causal mask gives 0), +∞ above 88.7.
    @inline(__always)
    public static func exp(_ xIn: V) -> V {
        let x = xIn.clamped(lowerBound: V(repeating: -88), upperBound: V(repeating: 88.5))
        // n = round(x·log2 e) via the 1.5·2^23 trick; its low bits hold n.
        let magic = V(repeating: 12_582_912)
        let t = x * V(repeating: 1.44269504088896341) + magic
        let n = t - magic
        // r = x − n·ln 2 in two parts (Cephes C1 + C2).
        var r = x - n * V(repeating: 0.693359375)
        r = r - n * V(repeating: -2.12194440e-4)
        let z = r * r
        var y = V(repeating: 1.9875691500e-4)
        y = y * r + V(repeating: 1.3981999507e-3)
        y = y * r + V(repeating: 8.3334519073e-3)
        y = y * r + V(repeating: 4.1665795894e-2)
        y = y * r + V(repeating: 1.6666665459e-1)
        y = y * r + V(repeating: 5.0000001201e-1)
        y = y * z + r + V(repeating: 1)
        // 2^n from the integer in t's mantissa.
        let tb = unsafeBitCast(t, to: SIMD8<UInt32>.self)
        let e = (tb &- UInt32(0x4B40_0000) &+ 127) &<< 23
        var result = y * unsafeBitCast(e, to: V.self)
        result.replace(with: 0, where: xIn .< V(repeating: -87.3))
        result.replace(with: .infinity, where: xIn .> V(repeating: 88.7))
        return result
    }

    @inline(__always)
    public static func exp(_ x: Float) -> Float { exp(V(repeating: x))[0] }

    @inline(__always)
    static func load(_ p: UnsafePointer<Float>) -> V {
        UnsafeRawPointer(p).loadUnaligned(as: V.self)
    }

    @inline(__always)
    static func store(_ v: V, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self)
    }

    /// erf by A&S 7.1.26, the formula ATen's Vectorized<float>::erf uses.
    @inline(__always)
    public static func erf(_ x: V) -> V {
        let a = x.replacing(with: -x, where: x .< 0)
        let t = V(repeating: 1) / (V(repeating: 0.3275911) * a + V(repeating: 1))
        var r = V(repeating: 1.061405429) * t + V(repeating: -1.453152027)
        r = r * t + V(repeating: 1.421413741)
        r = r * t + V(repeating: -0.284496736)
        r = r * t + V(repeating: 0.254829592)
        let e = exp(-(x * x))
        let y = V(repeating: 1) - r * t * e
        var out = y
        out.replace(with: -y, where: x .< 0)
        return out
    }

    /// Exact-form GELU: x/2 · (1 + erf(x/√2)).
    @inline(__always)
    public static func gelu(_ x: V) -> V {
        x * V(repeating: 0.5) * (V(repeating: 1) + erf(x * V(repeating: 0.70710678118654752)))
    }

    @inline(__always)
    public static func silu(_ x: V) -> V { x / (V(repeating: 1) + exp(-x)) }

    /// SiLU in place over n floats.
    public static func silu(_ p: UnsafeMutablePointer<Float>, count n: Int) {
        var i = 0
        while i + 8 <= n { store(silu(load(p + i)), p + i); i += 8 }
        while i < n { p[i] = silu(V(repeating: p[i]))[0]; i += 1 }
    }

    /// out[r][i] = h[r][i] · gelu(g[r][i]) where each input row is [h (d) | g (d)] (GEGLU).
    public static func geglu(_ x: UnsafePointer<Float>, rows: Int, d: Int, out: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let h = x + r * 2 * d, g = h + d, o = out + r * d
            var i = 0
            while i + 8 <= d { store(load(h + i) * gelu(load(g + i)), o + i); i += 8 }
            while i < d { o[i] = h[i] * gelu(V(repeating: g[i]))[0]; i += 1 }
        }
    }

    /// Softmax over `rows` rows of length n (row stride `stride`), in place.
    public static func softmaxRows(_ p: UnsafeMutablePointer<Float>, rows: Int, n: Int, stride: Int) {
        for r in 0..<rows {
            let row = p + r * stride
            var i = 0
            var mv = V(repeating: -.infinity)
            while i + 8 <= n { mv = pointwiseMax(mv, load(row + i)); i += 8 }
            var m = mv.max()
            while i < n { m = Swift.max(m, row[i]); i += 1 }
            if m == -.infinity { m = 0 }
            let mb = V(repeating: m)
            var sv = V(repeating: 0)
            i = 0
            while i + 8 <= n {
                let e = exp(load(row + i) - mb)
                store(e, row + i)
                sv += e
                i += 8
            }
            var s = sv.sum()
            while i < n { let e = exp(V(repeating: row[i] - m))[0]; row[i] = e; s += e; i += 1 }
            let inv = V(repeating: 1 / s)
            i = 0
            while i + 8 <= n { store(load(row + i) * inv, row + i); i += 8 }
            while i < n { row[i] *= inv[0]; i += 1 }
        }
    }
}

/// Splitting work over the machine's cores.
public enum Parallel {
    /// Number of workers used for elementwise kernels.
    public static let workers = Swift.max(1, ProcessInfo.processInfo.activeProcessorCount)

    /// Runs body(i) for i in 0..<count on up to `workers` threads (inline when count is 1).
    @inline(__always)
    public static func forEach(_ count: Int, _ body: (Int) -> Void) {
        if count <= 1 || workers == 1 {
            for i in 0..<count { body(i) }
        } else {
            DispatchQueue.concurrentPerform(iterations: count, execute: body)
        }
    }

    /// Splits 0..<n into about `workers` contiguous ranges (at least `minChunk` long each) and runs
    /// body(range) for each in parallel.
    public static func ranges(_ n: Int, minChunk: Int = 4096, _ body: (Range<Int>) -> Void) {
        let parts = Swift.max(1, Swift.min(workers, n / Swift.max(minChunk, 1)))
        if parts == 1 { body(0..<n); return }
        let size = (n + parts - 1) / parts
        DispatchQueue.concurrentPerform(iterations: parts) { k in
            let lo = k * size, hi = Swift.min(n, lo + size)
            if lo < hi { body(lo..<hi) }
        }
    }
}
