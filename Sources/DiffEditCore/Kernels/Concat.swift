/// Joining activations.
enum Concat {
    /// out [n, ca + cb, plane] = a [n, ca, plane] followed by b [n, cb, plane] along channels
    /// (the UNet's skip connections): two contiguous copies per image.
    static func channels(_ ctx: ComputeContext, _ a: UnsafePointer<Float>, channels ca: Int,
                         _ b: UnsafePointer<Float>, channels cb: Int, images n: Int, plane: Int,
                         out: UnsafeMutablePointer<Float>) {
        for i in 0..<n {
            (out + i * (ca + cb) * plane).update(from: a + i * ca * plane, count: ca * plane)
            (out + (i * (ca + cb) + ca) * plane).update(from: b + i * cb * plane, count: cb * plane)
        }
    }
}
