import CKernels

/// A layer's weight as a kernel reads it: a row-major matrix (rows = output channels) held in
/// f32, or in the 16 bits the checkpoint stored (f16 or bf16, often straight from the file's
/// memory map). 16-bit weights are widened to f32 block by block into the workspace just before
/// the product that uses them, so memory holds half the bytes and a product at small spatial
/// sizes (where streaming the weights is the cost) reads half as much from DRAM. Widening is
/// exact, so the numbers are those of f32 weights converted at load.
public struct WeightMatrix: @unchecked Sendable {
    public enum Bits: Sendable { case f32, f16, bf16 }

    let base: UnsafeRawPointer
    public let bits: Bits

    public init(f32 pointer: UnsafePointer<Float>) {
        base = UnsafeRawPointer(pointer)
        bits = .f32
    }

    init(raw: UnsafeRawPointer, bits: Bits) {
        base = raw
        self.bits = bits
    }

    /// Floats of one widened block (8 MiB: a quarter of this machine class's L3, so the block
    /// is still in cache when the BLAS packs it).
    nonisolated(unsafe) public static var blockFloats = 1 << 21

    /// Calls `body(k, block, ldBlock)` for column blocks `k` covering `columns` of the
    /// rows × (row stride `ld`) matrix: `block[r·ldBlock + j]` is element (r, k.lowerBound + j).
    /// f32: one call with the matrix itself (no copy). 16 bits: blocks of at most `blockFloats`
    /// widened into workspace scratch (whole rows when they fit, else slices of K, so a skinny
    /// product still streams each weight once and accumulates over K with beta = 1).
    func columnBlocks(_ ctx: ComputeContext, rows: Int, ld: Int, columns: Range<Int>,
                      _ body: (_ k: Range<Int>, _ block: UnsafePointer<Float>, _ ldBlock: Int) -> Void) {
        guard !columns.isEmpty, rows > 0 else { return }
        if bits == .f32 {
            body(columns, base.assumingMemoryBound(to: Float.self) + columns.lowerBound, ld)
            return
        }
        let width = max(1, min(columns.count, WeightMatrix.blockFloats / rows))
        ctx.workspace.withScratch(rows * width) { block in
            var k0 = columns.lowerBound
            while k0 < columns.upperBound {
                let kc = min(width, columns.upperBound - k0)
                widen(ctx, rows: 0..<rows, ld: ld, columns: k0..<(k0 + kc), into: block)
                body(k0..<(k0 + kc), block, kc)
                k0 += kc
            }
        }
    }

    /// Calls `body(r, block)` for row blocks `r` of a rows × rowLength matrix (contiguous rows),
    /// `block` holding rows r as f32 with stride rowLength (for kernels that need whole rows).
    func rowBlocks(_ ctx: ComputeContext, rows: Int, rowLength: Int,
                   _ body: (_ r: Range<Int>, _ block: UnsafePointer<Float>) -> Void) {
        guard rows > 0, rowLength > 0 else { return }
        if bits == .f32 {
            body(0..<rows, base.assumingMemoryBound(to: Float.self))
            return
        }
        let height = max(1, min(rows, WeightMatrix.blockFloats / rowLength))
        ctx.workspace.withScratch(height * rowLength) { block in
            var r0 = 0
            while r0 < rows {
                let rc = min(height, rows - r0)
                widen(ctx, rows: r0..<(r0 + rc), ld: rowLength, columns: 0..<rowLength, into: block)
                body(r0..<(r0 + rc), block)
                r0 += rc
            }
        }
    }

    /// block[(r − rows.lower)·columns.count + j] = W[r][columns.lower + j], on all workers.
    private func widen(_ ctx: ComputeContext, rows: Range<Int>, ld: Int, columns: Range<Int>,
                       into block: UnsafeMutablePointer<Float>) {
        let src = base.assumingMemoryBound(to: UInt16.self)
        let width = columns.count, half = bits == .f16
        ctx.parallelRanges(rows.count, minChunk: max(1, 16_384 / max(width, 1))) { part in
            for i in part {
                let s = src + (rows.lowerBound + i) * ld + columns.lowerBound
                let d = block + i * width
                if half { diffedit_f16_to_f32(s, d, width) } else { diffedit_bf16_to_f32(s, d, width) }
            }
        }
    }
}
