/// Fully connected layers: y = x·Wᵀ + b over the last dimension, as torch.nn.Linear.
public enum Linear {
    /// x: [..., inFeatures], weight: [outFeatures, inFeatures] (torch layout), bias: [outFeatures].
    public static func forward(_ x: Tensor, weight: [Float], bias: [Float]?, outFeatures: Int) -> Tensor {
        let inFeatures = x.shape.last!
        precondition(weight.count == outFeatures * inFeatures, "linear weight \(weight.count) != \(outFeatures)x\(inFeatures)")
        let rows = x.count / inFeatures
        var shape = x.shape
        shape[shape.count - 1] = outFeatures
        var out = [Float](repeating: 0, count: rows * outFeatures)
        out.withUnsafeMutableBufferPointer { o in
            if let bias {
                for r in 0..<rows {
                    (o.baseAddress! + r * outFeatures).update(from: bias, count: outFeatures)
                }
            }
            x.data.withUnsafeBufferPointer { xp in
                weight.withUnsafeBufferPointer { wp in
                    BLAS.gemm(transB: true, m: rows, n: outFeatures, k: inFeatures,
                              a: xp.baseAddress!, lda: inFeatures, b: wp.baseAddress!, ldb: inFeatures,
                              beta: bias == nil ? 0 : 1, c: o.baseAddress!, ldc: outFeatures)
                }
            }
        }
        return Tensor(shape: shape, data: out)
    }
}
