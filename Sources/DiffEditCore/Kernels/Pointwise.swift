#if canImport(Glibc)
import Glibc
#endif

/// Pointwise operations over activations, in place, on the context's threads. The libm forms
/// (expf, erff) are those the reference's parity was measured with for CLIP and GroupNorm+SiLU;
/// the UNet's hot activations use VectorMath's vectorised forms.
public enum Pointwise {
    @inline(__always) static func expf(_ x: Float) -> Float { Glibc.expf(x) }

    @inline(__always) public static func geluScalar(_ v: Float) -> Float {
        0.5 * v * (1 + erff(v * 0.70710678118654752))
    }

    /// GELU, exact (erf) form: torch's default `gelu`.
    static func gelu(_ ctx: ComputeContext, _ p: UnsafeMutablePointer<Float>, count: Int) {
        ctx.parallelRanges(count) { r in for i in r { p[i] = geluScalar(p[i]) } }
    }

    /// quick_gelu: x·σ(1.702x), CLIP's activation.
    static func quickGelu(_ ctx: ComputeContext, _ p: UnsafeMutablePointer<Float>, count: Int) {
        ctx.parallelRanges(count) { r in for i in r { let v = p[i]; p[i] = v / (1 + expf(-1.702 * v)) } }
    }

    /// SiLU with VectorMath's exp (the UNet's time embedding).
    static func silu(_ ctx: ComputeContext, _ p: UnsafeMutablePointer<Float>, count: Int) {
        ctx.parallelRanges(count) { r in VectorMath.silu(p + r.lowerBound, count: r.count) }
    }

    /// a[i] += b[i].
    static func add(_ ctx: ComputeContext, _ a: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, count: Int) {
        ctx.parallelRanges(count, minChunk: 1 << 15) { r in for i in r { a[i] += b[i] } }
    }

    /// a[i] = (a[i] + b[i]) / s: a residual connection with diffusers' output_scale_factor.
    static func addScaled(_ ctx: ComputeContext, _ a: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>,
                          divideBy s: Float, count: Int) {
        ctx.parallelRanges(count, minChunk: 1 << 15) { r in for i in r { a[i] = (b[i] + a[i]) / s } }
    }

    /// Adds v[c] to every element of plane c of each of n images [n, channels, plane] (a bias,
    /// or a time embedding projected per channel: v is [n, channels]).
    static func addPerChannel(_ ctx: ComputeContext, _ x: UnsafeMutablePointer<Float>, n: Int, channels: Int, plane: Int,
                              _ v: UnsafePointer<Float>, perImage: Bool) {
        ctx.parallelRanges(n * channels, minChunk: max(1, 16384 / max(1, plane))) { r in
            for p in r {
                let value = v[perImage ? p : p % channels]
                let row = x + p * plane
                for i in 0..<plane { row[i] += value }
            }
        }
    }

    /// out[r][i] = h[r][i] · gelu(g[r][i]) where each input row is [h (d) | g (d)] (GEGLU).
    static func geglu(_ ctx: ComputeContext, _ x: UnsafePointer<Float>, rows: Int, d: Int, out: UnsafeMutablePointer<Float>) {
        ctx.parallelRanges(rows, minChunk: 64) { r in
            VectorMath.geglu(x + r.lowerBound * 2 * d, rows: r.count, d: d, out: out + r.lowerBound * d)
        }
    }
}
