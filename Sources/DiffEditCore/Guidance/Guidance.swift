/// Classifier-free guidance (Ho & Salimans 2022) as diffusers' pipelines apply it:
/// ε̂ = ε_uncond + g·(ε_cond − ε_uncond), each operation rounded to float32 in that order.
public enum Guidance {
    public static func classifierFree(uncond: Tensor, cond: Tensor, scale: Float) -> Tensor {
        precondition(uncond.shape == cond.shape, "guidance: \(uncond.shape) vs \(cond.shape)")
        return Elementwise.map2(uncond, cond) { u, c in u + scale * (c - u) }
    }

    /// The UNet output of a CFG batch [uncond; cond] (torch's `.chunk(2)`), guided.
    public static func classifierFree(batched: Tensor, scale: Float) -> Tensor {
        let b = batched.shape[0]
        precondition(b % 2 == 0, "guidance: batch \(b) is not [uncond; cond]")
        return classifierFree(uncond: batched.slice(batch: 0, count: b / 2),
                              cond: batched.slice(batch: b / 2, count: b / 2), scale: scale)
    }
}
