/// What the output of a product by a weight holds before the first GEMM adds to it. A bias (or
/// residual) is written into the output first and every GEMM accumulates onto it with beta = 1,
/// so no pass over the output is spent adding it afterwards.
enum ProductStart {
    /// Nothing: the first GEMM writes the output (beta = 0).
    case empty
    /// The bias copied into each of `rows` rows (row stride `ld`): outputs laid out
    /// [token][channel] (linear layers). nil: `empty`.
    case biasRows(UnsafePointer<Float>?, rows: Int, ld: Int)
    /// bias[p mod channels] in the first `width` elements of each of `planes` planes (stride
    /// `ld`): outputs laid out [image][channel][pixel] (convolutions, or one band of their rows
    /// in every channel). nil: `empty`.
    case biasPlanes(UnsafePointer<Float>?, planes: Int, width: Int, ld: Int)
    /// `residual` ([images][channel][plane], copied), plus the bias of each channel over its
    /// plane when there is one: a product written back to NCHW with a skip connection.
    case residual(UnsafePointer<Float>, bias: UnsafePointer<Float>?, images: Int, plane: Int)

    /// Writes the start into `out` (`channels`: the product's output channels, the weight's
    /// rows); returns whether anything was written for the GEMMs to add to.
    func write(_ ctx: ComputeContext, channels: Int, into out: UnsafeMutablePointer<Float>) -> Bool {
        switch self {
        case .empty:
            return false
        case let .biasRows(bias, rows, ld):
            guard let bias else { return false }
            for r in 0..<rows { (out + r * ld).update(from: bias, count: channels) }
            return true
        case let .biasPlanes(bias, planes, width, ld):
            guard let bias else { return false }
            ctx.parallelRanges(planes, minChunk: 16) { range in
                for p in range { (out + p * ld).update(repeating: bias[p % channels], count: width) }
            }
            return true
        case let .residual(residual, bias, images, plane):
            out.update(from: residual, count: images * channels * plane)
            if let bias {
                Pointwise.addPerChannel(ctx, out, n: images, channels: channels, plane: plane, bias, perImage: false)
            }
            return true
        }
    }
}

extension WeightMatrix {
    /// out = start + W·X for this rows × columns matrix (rows: output channels), multiplied in
    /// the K blocks of `columnBlocks`: writes `start` into `out`, then calls
    /// `gemm(k, block, ldBlock, beta)` per block with the beta that sums the blocks onto it — 0
    /// only for the first block when the start is empty, 1 for every other.
    @inline(__always)
    func accumulate(_ ctx: ComputeContext, rows: Int, columns: Int, into out: UnsafeMutablePointer<Float>,
                    onto start: ProductStart,
                    _ gemm: (_ k: Range<Int>, _ block: UnsafePointer<Float>, _ ldBlock: Int, _ beta: Float) -> Void) {
        let written = start.write(ctx, channels: rows, into: out)
        columnBlocks(ctx, rows: rows, ld: columns, columns: 0..<columns) { k, block, ldBlock in
            gemm(k, block, ldBlock, written || k.lowerBound > 0 ? 1 : 0)
        }
    }
}
