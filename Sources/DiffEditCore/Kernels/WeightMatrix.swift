import CKernels

/// A layer's weight as a kernel reads it: a row-major matrix (rows = output channels) in the
/// checkpoint's own layout and bits (f32, f16 or bf16), normally straight from the file's memory
/// map, so that every process using a model shares one copy in the page cache. 16-bit weights
/// are widened to f32 block by block into the workspace just before the product that uses them,
/// so memory holds half the bytes and a product at small spatial sizes (where streaming the
/// weights is the cost) reads half as much from DRAM. Widening is exact, so the numbers are
/// those of f32 weights converted at load. A matrix may be the rows of several stored tensors
/// one after another (`Segments`: fused q/k/v), read in place too.
public struct WeightMatrix: @unchecked Sendable {
    public enum Bits: Sendable { case f32, f16, bf16 }

    /// Row blocks stored apart: rows firstRows[i]..<firstRows[i + 1] start at bases[i].
    final class Segments {
        let bases: [UnsafeRawPointer]
        let firstRows: [Int]
        init(bases: [UnsafeRawPointer], rows: [Int]) {
            self.bases = bases
            var first = [0]
            for r in rows { first.append(first.last! + r) }
            firstRows = first
        }
    }

    let base: UnsafeRawPointer
    public let bits: Bits
    let segments: Segments?
    /// Where a model's weight keeps its bf16 packing (nil: a matrix made for one call, never packed).
    let packs: PackedBF16?

    public init(f32 pointer: UnsafePointer<Float>) {
        base = UnsafeRawPointer(pointer)
        bits = .f32
        segments = nil
        packs = nil
    }

    init(raw: UnsafeRawPointer, bits: Bits, segments: Segments? = nil, packs: PackedBF16? = nil) {
        base = raw
        self.bits = bits
        self.segments = segments
        self.packs = packs
    }

    /// Whether kernels can read the matrix as it is (f32 in one piece), without widening.
    var isPlainF32: Bool { bits == .f32 && segments == nil }

    /// The first element of row `r` (row stride `ld` elements).
    @inline(__always)
    func row(_ r: Int, ld: Int) -> UnsafeRawPointer {
        let size = bits == .f32 ? 4 : 2
        guard let segments else { return base + r * ld * size }
        var s = 0
        while r >= segments.firstRows[s + 1] { s += 1 }
        return segments.bases[s] + (r - segments.firstRows[s]) * ld * size
    }

    /// Calls `body(k, block, ldBlock)` for column blocks `k` covering `columns` of the
    /// rows × (row stride `ld`) matrix: `block[r·ldBlock + j]` is element (r, k.lowerBound + j).
    /// f32: one call with the matrix itself (no copy). 16 bits: blocks of at most the policy's
    /// `weightBlockFloats` widened into workspace scratch (whole rows when they fit, else slices of K, so a skinny
    /// product still streams each weight once and accumulates over K with beta = 1).
    func columnBlocks(_ ctx: ComputeContext, rows: Int, ld: Int, columns: Range<Int>,
                      _ body: (_ k: Range<Int>, _ block: UnsafePointer<Float>, _ ldBlock: Int) -> Void) {
        guard !columns.isEmpty, rows > 0 else { return }
        if isPlainF32 {
            body(columns, base.assumingMemoryBound(to: Float.self) + columns.lowerBound, ld)
            return
        }
        let width = max(1, min(columns.count, ctx.policy.weightBlockFloats / rows))
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
        rowBlocks(ctx, rows: 0..<rows, rowLength: rowLength, body)
    }

    /// `rowBlocks` over the rows `rows` only (r absolute row indices).
    func rowBlocks(_ ctx: ComputeContext, rows: Range<Int>, rowLength: Int,
                   _ body: (_ r: Range<Int>, _ block: UnsafePointer<Float>) -> Void) {
        guard !rows.isEmpty, rowLength > 0 else { return }
        if isPlainF32 {
            body(rows, base.assumingMemoryBound(to: Float.self) + rows.lowerBound * rowLength)
            return
        }
        let height = max(1, min(rows.count, ctx.policy.weightBlockFloats / rowLength))
        ctx.workspace.withScratch(height * rowLength) { block in
            var r0 = rows.lowerBound
            while r0 < rows.upperBound {
                let rc = min(height, rows.upperBound - r0)
                widen(ctx, rows: r0..<(r0 + rc), ld: rowLength, columns: 0..<rowLength, into: block)
                body(r0..<(r0 + rc), block)
                r0 += rc
            }
        }
    }

    /// block[(r − rows.lower)·columns.count + j] = W[r][columns.lower + j], on all workers.
    private func widen(_ ctx: ComputeContext, rows: Range<Int>, ld: Int, columns: Range<Int>,
                       into block: UnsafeMutablePointer<Float>) {
        let width = columns.count
        ctx.parallelRanges(rows.count, minChunk: max(1, 16_384 / max(width, 1))) { part in
            for i in part { widenRow(rows.lowerBound + i, ld: ld, columns: columns, into: block + i * width) }
        }
    }

    /// out[j] = W[r][columns.lower + j].
    @inline(__always)
    func widenRow(_ r: Int, ld: Int, columns: Range<Int>, into out: UnsafeMutablePointer<Float>) {
        let start = row(r, ld: ld)
        switch bits {
        case .f32: out.update(from: start.assumingMemoryBound(to: Float.self) + columns.lowerBound, count: columns.count)
        case .f16: diffedit_f16_to_f32(start.assumingMemoryBound(to: UInt16.self) + columns.lowerBound, out, columns.count)
        case .bf16: diffedit_bf16_to_f32(start.assumingMemoryBound(to: UInt16.self) + columns.lowerBound, out, columns.count)
        }
    }
}
