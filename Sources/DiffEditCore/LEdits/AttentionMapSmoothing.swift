import Foundation

/// LEDITS++'s smoothing of a concept's attention map (diffusers' pipeline_leditspp_stable_diffusion.py):
/// `F.pad(map, (1, 1, 1, 1), mode="reflect")`, then `LeditsGaussianSmoothing`, a 3×3 Gaussian
/// (σ = 0.5 on both axes) applied as a valid conv2d — the map keeps its size.
public enum AttentionMapSmoothing {
    /// The 3×3 kernel, row-major, computed as LeditsGaussianSmoothing does in float32: per axis
    /// 1/(σ√(2π))·exp(−((x − mean)/(2σ))²) over x = 0, 1, 2 (mean 1), the product of the two axes,
    /// divided by its sum.
    public static let kernel: [Float] = {
        let sigma = 0.5
        let scale = Float(1 / (sigma * (2 * Double.pi).squareRoot()))  // a Python float, applied in float32
        let axis: [Float] = (0..<3).map { x in
            let z = (Float(x) - 1) / Float(2 * sigma)
            return scale * Foundation.exp(-(z * z))
        }
        var k = [Float](repeating: 0, count: 9)
        for i in 0..<3 { for j in 0..<3 { k[i * 3 + j] = axis[i] * axis[j] } }
        let total = k.reduce(0, +)
        return k.map { $0 / total }
    }()

    /// `map` [height · width] row-major → the smoothed map, same size. torch's reflect padding needs
    /// every axis longer than the pad (1), so a grid with a side of 1 is refused, as diffusers'
    /// F.pad raises ("Padding size should be less than the corresponding input dimension").
    public static func gaussian(_ map: [Float], height: Int, width: Int) throws -> [Float] {
        guard height >= 2 && width >= 2 else {
            throw ToolError("attention map smoothing: a \(height)x\(width) grid has a side of 1, which reflect padding cannot pad (diffusers' F.pad(mode=\"reflect\") raises too) — use an attention grid at least 2x2")
        }
        precondition(map.count == height * width, "attention map of \(map.count) values for a \(height)x\(width) grid")
        // torch 'reflect': index −1 → 1, index n → n − 2 (the edge is not repeated).
        func reflect(_ i: Int, _ n: Int) -> Int { i < 0 ? -i : (i >= n ? 2 * n - 2 - i : i) }
        let k = kernel
        var out = [Float](repeating: 0, count: height * width)
        for y in 0..<height {
            for x in 0..<width {
                var s: Float = 0
                for dy in 0..<3 {
                    let row = reflect(y + dy - 1, height) * width
                    for dx in 0..<3 { s += k[dy * 3 + dx] * map[row + reflect(x + dx - 1, width)] }
                }
                out[y * width + x] = s
            }
        }
        return out
    }
}
