#if canImport(Glibc)
import Glibc
#endif

/// torch.Generator("cpu").manual_seed(seed) followed by torch.randn calls in float32, reproduced
/// bit for bit, so that diffedit draws the same noise as diffusers for the same seed.
///
/// What torch does (ATen CPUGeneratorImpl, core/DistributionsHelper.h, native/cpu/
/// DistributionTemplates.h), and so what this class does:
/// - The engine is MT19937 seeded with the low 32 bits of the seed (so 2^32+5 acts as 5).
///   random() is one 32-bit output; random64() is two, the first as the high word.
/// - A randn of fewer than 16 elements draws each element with normal_distribution<double>:
///   u1, u2 = 53-bit uniforms from random64(), r = √(−2·log1p(−u2)), θ = 2π·u1, returns r·cos θ
///   and caches r·sin θ in the generator for the next scalar draw (even one in a later randn
///   call). manual_seed clears the cache; the vectorised path below neither reads nor writes it.
/// - A randn of 16 or more elements first fills the whole buffer with 24-bit uniform floats,
///   then applies Box–Muller to each block of 16 (pairs j, j+8) with the AVX2 kernel
///   normal_fill_16_AVX2, whose log and sincos are Cephes polynomials in float32 (not libm)
///   compiled with FMA contraction. When the size is not a multiple of 16, the last 16 elements
///   are filled with fresh uniforms and transformed again.
public final class TorchGenerator {
    private var state = [UInt32](repeating: 0, count: 624)
    private var index = 624
    /// The cached second value of the scalar (double) Box–Muller path.
    private var nextDoubleNormal: Double?

    public init(seed: UInt64) {
        state[0] = UInt32(truncatingIfNeeded: seed)
        for i in 1..<624 {
            let prev = state[i - 1]
            state[i] = 1_812_433_253 &* (prev ^ (prev >> 30)) &+ UInt32(i)
        }
        index = 624
    }

    // MARK: MT19937

    private func twist() {
        let upper: UInt32 = 0x8000_0000, lower: UInt32 = 0x7fff_ffff, matrixA: UInt32 = 0x9908_b0df
        state.withUnsafeMutableBufferPointer { s in
            for i in 0..<624 {
                let y = (s[i] & upper) | (s[(i + 1) % 624] & lower)
                s[i] = s[(i + 397) % 624] ^ (y >> 1) ^ ((y & 1) != 0 ? matrixA : 0)
            }
        }
        index = 0
    }

    /// One 32-bit output of the engine (torch's `random()`).
    @inline(__always)
    public func random32() -> UInt32 {
        if index >= 624 { twist() }
        var y = state[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9d2c_5680
        y ^= (y << 15) & 0xefc6_0000
        y ^= y >> 18
        return y
    }

    /// torch's `random64()`: two outputs, the first as the high word.
    @inline(__always)
    public func random64() -> UInt64 {
        let hi = UInt64(random32())
        let lo = UInt64(random32())
        return (hi << 32) | lo
    }

    /// uniform_real_distribution<float>(0, 1): 24 random bits scaled by 2^-24.
    @inline(__always)
    func uniformFloat() -> Float {
        Float(random32() & 0x00ff_ffff) * (1.0 / 16_777_216.0)
    }

    /// uniform_real_distribution<double>(0, 1): 53 random bits scaled by 2^-53.
    @inline(__always)
    func uniformDouble() -> Double {
        Double(random64() & ((1 << 53) - 1)) * (1.0 / 9_007_199_254_740_992.0)
    }

    // MARK: randn

    /// One `torch.randn(count, generator=g)` call: `count` standard normal floats.
    public func randn(count: Int) -> [Float] {
        precondition(count >= 0)
        if count == 0 { return [] }
        if count < 16 {
            return (0..<count).map { _ in Float(scalarNormal()) }
        }
        var data = [Float](repeating: 0, count: count)
        data.withUnsafeMutableBufferPointer { d in
            for i in 0..<count { d[i] = uniformFloat() }
            var i = 0
            while i + 16 <= count {
                TorchGenerator.boxMuller16(d.baseAddress! + i)
                i += 16
            }
            if count % 16 != 0 {
                let tail = d.baseAddress! + count - 16
                for j in 0..<16 { tail[j] = uniformFloat() }
                TorchGenerator.boxMuller16(tail)
            }
        }
        return data
    }

    /// One `torch.randn(count, generator=g, dtype=torch.float64)` call. Sizes ≥ 16 take ATen's
    /// generic normal_fill: 53-bit uniforms, then Box–Muller per block of 16 with libm's double
    /// log/cos/sin (the AVX2 kernel is float-only); smaller sizes take the scalar path above.
    public func randnDouble(count: Int) -> [Double] {
        precondition(count >= 0)
        if count < 16 { return (0..<count).map { _ in scalarNormal() } }
        var data = (0..<count).map { _ in uniformDouble() }
        data.withUnsafeMutableBufferPointer { d in
            func fill16(_ p: UnsafeMutablePointer<Double>) {
                for j in 0..<8 {
                    let u1 = 1 - p[j], u2 = p[j + 8]
                    let radius = (-2 * log(u1)).squareRoot()
                    let theta = 2.0 * Double.pi * u2
                    p[j] = radius * cos(theta)
                    p[j + 8] = radius * sin(theta)
                }
            }
            var i = 0
            while i + 16 <= count { fill16(d.baseAddress! + i); i += 16 }
            if count % 16 != 0 {
                let tail = d.baseAddress! + count - 16
                for j in 0..<16 { tail[j] = uniformDouble() }
                fill16(tail)
            }
        }
        return data
    }

    /// One `torch.randint(low, high, (count,), generator=g)` call (int64): each value is
    /// low + random() % (high − low), with random64() when the range is 2^32 or more.
    public func randint(low: Int64 = 0, high: Int64, count: Int) -> [Int64] {
        precondition(high > low && count >= 0)
        let range = UInt64(bitPattern: high &- low)
        return (0..<count).map { _ in
            let v = range >= (1 << 32) ? random64() : UInt64(random32())
            return low &+ Int64(bitPattern: v % range)
        }
    }

    /// `torch.randn(shape, generator=g)` as a tensor.
    public func randn(shape: [Int]) -> Tensor {
        Tensor(shape: shape, data: randn(count: shape.reduce(1, *)))
    }

    /// at::normal_distribution<double>(0, 1) with the generator's cached second sample.
    private func scalarNormal() -> Double {
        if let cached = nextDoubleNormal {
            nextDoubleNormal = nil
            return cached
        }
        let u1 = uniformDouble()
        let u2 = uniformDouble()
        let r = (-2.0 * log1p(-u2)).squareRoot()
        let theta = 2.0 * Double.pi * u1
        nextDoubleNormal = r * sin(theta)
        return r * cos(theta)
    }

    // MARK: The float32 Box–Muller of normal_fill_16_AVX2, one lane at a time

    /// 2π rounded once to float, as _mm256_set1_ps(2.0f * c10::pi<double>).
    static let twoPi = Float(2.0 * Double.pi)

    /// data[j], data[j+8] (uniforms in [0,1)) become r·cos θ and r·sin θ, with
    /// u1 = 1 − data[j] ∈ (0, 1], r = √(−2 log u1), θ = 2π·data[j+8].
    @inline(__always)
    static func boxMuller16(_ data: UnsafeMutablePointer<Float>) {
        for j in 0..<8 {
            let u1 = 1 - data[j]
            let u2 = data[j + 8]
            let radius = (-2 * cephesLog(u1)).squareRoot()
            let (s, c) = cephesSinCos(twoPi * u2)
            // _mm256_fmadd_ps(n, std = 1, mean = 0): n + 0.
            data[j] = radius * c + 0
            data[j + 8] = radius * s + 0
        }
    }

    /// fma(a, b, c) = a·b + c rounded once.
    @inline(__always) static func fma(_ a: Float, _ b: Float, _ c: Float) -> Float {
        c.addingProduct(a, b)
    }

    /// Cephes' logf as vectorised in avx_mathfun.h (log256_ps), with the multiply–add pairs
    /// fused the way GCC contracts them in torch's AVX2 build (checked bit for bit against torch
    /// on 4·2^20 samples). Valid for x > 0.
    @inline(__always)
    static func cephesLog(_ input: Float) -> Float {
        if !(input > 0) { return .nan }
        var x = max(input, Float(bitPattern: 0x0080_0000))  // no denormals
        let bits = x.bitPattern
        var e = Float(Int32(bitPattern: bits >> 23) - 0x7f)
        x = Float(bitPattern: (bits & ~UInt32(0x7f80_0000)) | Float(0.5).bitPattern)  // mantissa in [0.5, 1)
        e = e + 1
        // if x < √½ { e −= 1; x = x + x − 1 } else { x = x − 1 }
        let small = x < 0.707106781186547524
        let tmp: Float = small ? x : 0
        x = x - 1
        e = e - (small ? 1 : 0)
        x = x + tmp
        let z = x * x
        var y: Float = 7.0376836292e-2
        y = fma(y, x, -1.1514610310e-1)
        y = fma(y, x, 1.1676998740e-1)
        y = fma(y, x, -1.2420140846e-1)
        y = fma(y, x, 1.4249322787e-1)
        y = fma(y, x, -1.6668057665e-1)
        y = fma(y, x, 2.0000714765e-1)
        y = fma(y, x, -2.4999993993e-1)
        y = fma(y, x, 3.3333331174e-1)
        y = y * x
        // y·z + e·q1 contracts as fma(y, z, e·q1); z·0.5 is exact, so the next one is too.
        y = fma(y, z, e * -2.12194440e-4)
        y = fma(-z, 0.5, y)
        x = x + y
        x = fma(e, 0.693359375, x)
        return x
    }

    /// Cephes' sinf/cosf pair as vectorised in avx_mathfun.h (sincos256_ps), FMA-contracted.
    @inline(__always)
    static func cephesSinCos(_ input: Float) -> (sin: Float, cos: Float) {
        var signSin = input.bitPattern & 0x8000_0000
        var x = abs(input)
        var y = x * 1.27323954473516  // 4/π
        var j = Int32(y)  // truncation, as _mm256_cvttps_epi32
        j = (j &+ 1) & ~1
        y = Float(j)
        let swapSin = UInt32(bitPattern: j & 4) << 29
        let polyIsSin = (j & 2) == 0
        // Extended-precision reduction x = ((x − y·DP1) − y·DP2) − y·DP3.
        x = fma(y, -0.78515625, x)
        x = fma(y, -2.4187564849853515625e-4, x)
        x = fma(y, -3.77489497744594108e-8, x)
        let signCos = UInt32(bitPattern: ~(j &- 2) & 4) << 29
        signSin ^= swapSin
        let z = x * x
        var yc: Float = 2.443315711809948e-5
        yc = fma(yc, z, -1.388731625493765e-3)
        yc = fma(yc, z, 4.166664568298827e-2)
        yc = yc * z
        yc = fma(yc, z, -(z * 0.5))  // y·z − z·0.5 contracts as fmsub(y, z, z·0.5)
        yc = yc + 1
        var ys: Float = -1.9515295891e-4
        ys = fma(ys, z, 8.3321608736e-3)
        ys = fma(ys, z, -1.6666654611e-1)
        ys = ys * z
        ys = fma(ys, x, x)
        // Both polynomials are summed with a zero, as the masked adds do.
        let sinPart = (polyIsSin ? 0 : yc) + (polyIsSin ? ys : 0)
        let cosPart = (polyIsSin ? yc : 0) + (polyIsSin ? 0 : ys)
        return (Float(bitPattern: sinPart.bitPattern ^ signSin),
                Float(bitPattern: cosPart.bitPattern ^ signCos))
    }
}
