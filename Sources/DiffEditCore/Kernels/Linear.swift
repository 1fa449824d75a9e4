/// Fully connected layers: y = x·Wᵀ + b over the last dimension, as torch.nn.Linear.
public enum Linear {
    /// x: rows × inFeatures, weight: [outFeatures, inFeatures] (torch layout), bias:
    /// [outFeatures]; writes rows × outFeatures (row stride `ldo`) to `out`.
    static func forward(_ ctx: ComputeContext, x: UnsafePointer<Float>, rows: Int, inFeatures: Int,
                        weight: WeightMatrix, bias: UnsafePointer<Float>?, outFeatures: Int,
                        out: UnsafeMutablePointer<Float>, ldo: Int? = nil) {
        let ldo = ldo ?? outFeatures
        if let bias {
            for r in 0..<rows { (out + r * ldo).update(from: bias, count: outFeatures) }
        }
        weight.columnBlocks(ctx, rows: outFeatures, ld: inFeatures, columns: 0..<inFeatures) { k, w, ldw in
            ctx.gemm(transB: true, m: rows, n: outFeatures, k: k.count, a: x + k.lowerBound, lda: inFeatures, b: w,
                     ldb: ldw, beta: bias == nil && k.lowerBound == 0 ? 0 : 1, c: out, ldc: ldo)
        }
    }

    /// Tensor form. x: [..., inFeatures].
    public static func forward(_ x: Tensor, weight: [Float], bias: [Float]?, outFeatures: Int) -> Tensor {
        let inFeatures = x.shape.last!
        precondition(weight.count == outFeatures * inFeatures, "linear weight \(weight.count) != \(outFeatures)x\(inFeatures)")
        let rows = x.count / inFeatures
        var shape = x.shape
        shape[shape.count - 1] = outFeatures
        var out = [Float](repeating: 0, count: rows * outFeatures)
        x.data.withUnsafeBufferPointer { xp in
            weight.withUnsafeBufferPointer { wp in
                out.withUnsafeMutableBufferPointer { o in
                    bias.withUnsafeOptionalPointer { bp in
                        forward(ComputeContext(), x: xp.baseAddress!, rows: rows, inFeatures: inFeatures, weight: WeightMatrix(f32: wp.baseAddress!),
                                bias: bp, outFeatures: outFeatures, out: o.baseAddress!)
                    }
                }
            }
        }
        return Tensor(shape: shape, data: out)
    }
}
