import CKernels

/// What the output of a product by a weight holds before the first GEMM adds to it. A bias (or
/// residual) is written into the output first and every GEMM accumulates onto it with beta = 1,
/// so no pass over the output is spent adding it afterwards.
enum ProductStart {
    /// Nothing: the first GEMM writes the output (beta = 0).
    case empty
    /// What the output already holds (written by the caller): every GEMM adds to it (beta = 1).
    case accumulate
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

    /// The bias alone, when this start is just a bias on the output channels of a product by a
    /// weight in `role` — per column of C for `right` (rows of tokens), per row of C for `left`
    /// (channel planes, each product one image's or band's planes) — which the bf16 kernel can
    /// add as it writes C; nil for any other start.
    func biasPerChannel(_ role: WeightRole) -> UnsafePointer<Float>? {
        switch (self, role) {
        case let (.biasRows(bias, _, _), .right), let (.biasPlanes(bias, _, _, _), .left): return bias
        default: return nil
        }
    }

    /// Writes the start into `out` (`channels`: the product's output channels, the weight's
    /// rows); returns whether anything was written for the GEMMs to add to.
    func write(_ ctx: ComputeContext, channels: Int, into out: UnsafeMutablePointer<Float>) -> Bool {
        switch self {
        case .empty:
            return false
        case .accumulate:
            return true
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

/// A weight as one product reads it: a block of its columns widened to f32 (`values`, row stride
/// `ld`), or the whole weight packed once for bf16 (`packed`, `WeightMatrix.packedBF16`), then
/// with the product's bias (`bias`: per output channel, the weight's rows) when the kernel adds it
/// as it writes C instead of the start writing it first.
struct WeightBlock {
    let values: UnsafePointer<Float>?
    let ld: Int
    let packed: UnsafePointer<UInt32>?
    var bias: UnsafePointer<Float>? = nil
}

extension WeightMatrix {
    /// out = start + the product with this rows × columns weight as `role`, multiplied in the K
    /// blocks of `columnBlocks`: writes `start` into `out`, then calls `gemm(k, block, beta)` per
    /// block with the beta that sums the blocks onto it — 0 only for the first block when the
    /// start is empty, 1 for every other. At bf16 with the weight packed once, one call with all
    /// of K and the packing; a bias start is then left to the kernel (`WeightBlock.bias`).
    @inline(__always)
    func accumulate(_ ctx: ComputeContext, rows: Int, columns: Int, into out: UnsafeMutablePointer<Float>,
                    onto start: ProductStart, as role: WeightRole,
                    _ gemm: (_ k: Range<Int>, _ block: WeightBlock, _ beta: Float) -> Void) {
        if let packed = packedBF16(ctx, role: role, rows: rows, columns: columns) {
            if let bias = start.biasPerChannel(role) {
                gemm(0..<columns, WeightBlock(values: nil, ld: columns, packed: packed, bias: bias), 0)
                return
            }
            let written = start.write(ctx, channels: rows, into: out)
            gemm(0..<columns, WeightBlock(values: nil, ld: columns, packed: packed), written ? 1 : 0)
            return
        }
        let written = start.write(ctx, channels: rows, into: out)
        columnBlocks(ctx, rows: rows, ld: columns, columns: 0..<columns) { k, block, ldBlock in
            gemm(k, WeightBlock(values: block, ld: ldBlock, packed: nil), written || k.lowerBound > 0 ? 1 : 0)
        }
    }
}

extension WeightMatrix {
    /// Whether a product of this rows-row weight with `columns` columns of X streams the weight
    /// (`stream`) instead of widening it for the BLAS: few columns (`KernelPolicy.streamColumns`),
    /// enough rows to split between threads, f32 arithmetic (bf16 keeps its own GEMM).
    func streams(_ ctx: ComputeContext, rows: Int, columns: Int) -> Bool {
        columns <= ctx.policy.streamColumns && rows >= 32 && ctx.policy.precision == .f32
    }

    /// out = start + W·Xᵀ with every weight read once in place (gemm_stream.c): W is rows × k
    /// (row stride k), X(j, l) = x[j·xj + l·xl] for j < n, C(i, j) = out[i·ci + j·cj]. Rows are
    /// split between workers in multiples of the kernel's tiles, at the segments' bounds.
    func stream(_ ctx: ComputeContext, rows m: Int, k: Int, n: Int, x: UnsafePointer<Float>, xj: Int, xl: Int,
                into out: UnsafeMutablePointer<Float>, ci: Int, cj: Int, onto start: ProductStart) {
        let beta: Float = start.write(ctx, channels: m, into: out) ? 1 : 0
        let level = Int32(min(ctx.policy.streamLevel, Int(diffedit_stream_level())))
        let bitsCode: Int32 = bits == .f32 ? 0 : bits == .f16 ? 1 : 2
        let parts = max(1, min(ctx.threads, m / 48, n * k >= 1 << 14 ? ctx.threads : 1))
        let size = ((m + parts - 1) / parts + 11) / 12 * 12
        let scratchFloats = Int(diffedit_gemm_stream_scratch(n, k))
        ctx.workspace.withScratch(parts * scratchFloats) { scratch in
            ctx.parallel(parts) { p in
                let lo = min(m, p * size), hi = min(m, lo + size)
                var r = lo
                while r < hi {
                    // The run of rows [r, end) within one stored segment.
                    var end = hi
                    if let segments {
                        var s = 0
                        while r >= segments.firstRows[s + 1] { s += 1 }
                        end = min(hi, segments.firstRows[s + 1])
                    }
                    diffedit_gemm_stream(level, end - r, n, k, row(r, ld: k), k, bitsCode,
                                         x, xj, xl, beta, out + r * ci, ci, cj, scratch + p * scratchFloats)
                    r = end
                }
            }
        }
    }
}
