import Foundation

/// LEDITS++'s attention store (diffusers' LeditsAttentionStore with LEDITSCrossAttnProcessor and
/// aggregate_attention, pipeline_leditspp_stable_diffusion.py): the UNet's up- and down-block
/// cross-attention layers (attn2; not the mid block, not self-attention — diffusers' prepare_unet)
/// whose query grid is the store's hand it their attention probabilities, and the store keeps,
/// per batch item, their sum over those layers and heads. One UNet pass per `reset()`: diffusers
/// reads `step_store`, the current step's maps only.
///
/// Batch item 0 (the unconditional branch) is never computed — diffusers skips it (`skip = 1`);
/// items 1 ..< batch are the edit concepts. Grids are matched by query count, as diffusers does
/// (`item.shape[1] == num_pixels`).
///
/// Pass it to `UNet2DCondition.forward(…, attention:)`. The sum buffer is allocated by the first
/// UNet pass and reused by every later one (again only if a later batch needs more room).
public final class CrossAttentionStore {
    /// The query grid kept, (height, width) in latent rows and columns divided as the layer's.
    public let grid: (height: Int, width: Int)
    /// Layers that handed over probabilities since the last `reset()`.
    public private(set) var layers = 0
    /// Their heads, in total: the maps are the mean over these (layer, head) pairs.
    public private(set) var heads = 0
    /// The UNet batch (items 0 ..< batch) and key tokens of the stored layers (0 before any).
    public private(set) var batch = 0
    public private(set) var keys = 0

    /// Σ over stored (layer, head) pairs of the probabilities of items 1 ..< batch:
    /// [batch − 1][queries][keys].
    private var sums: UnsafeMutablePointer<Float>
    private var capacity = 0

    public init(grid: (height: Int, width: Int)) {
        precondition(grid.height >= 1 && grid.width >= 1, "attention store grid \(grid) must be at least 1×1")
        self.grid = grid
        sums = UnsafeMutablePointer<Float>.allocate(capacity: 0)
    }

    deinit { sums.deallocate() }

    /// Query tokens of the grid (height × width).
    public var queries: Int { grid.height * grid.width }

    /// Forgets the stored maps (per UNet pass; the buffer is kept).
    public func reset() {
        layers = 0
        heads = 0
    }

    /// Whether a cross-attention layer with this many query tokens hands over its probabilities.
    @inline(__always)
    public func wants(queries: Int) -> Bool { queries == self.queries }

    /// The hook the layers call: `probabilities` holds items 1 ..< batch of one layer, item-major
    /// then head ([batch − 1][heads][queries][keys], diffusers' head_to_batch_dim order with item 0
    /// left out), each row a softmax over the keys.
    public func add(probabilities: UnsafePointer<Float>, batch: Int, heads: Int, queries: Int, keys: Int) {
        precondition(wants(queries: queries), "attention store for \(grid) handed \(queries) queries")
        precondition(batch >= 1 && heads >= 1 && keys >= 1)
        let plane = queries * keys
        if layers == 0 {
            let count = (batch - 1) * plane
            if count > capacity {
                sums.deallocate()
                sums = UnsafeMutablePointer<Float>.allocate(capacity: count)
                capacity = count
            }
            sums.update(repeating: 0, count: count)
            self.batch = batch
            self.keys = keys
        } else {
            precondition(batch == self.batch && keys == self.keys,
                         "attention store: a layer of batch \(batch), \(keys) keys after batch \(self.batch), \(self.keys) keys")
        }
        // diffusers sums the (layer, head) maps in this order: torch.cat over layers of each
        // layer's heads, then .sum(1).
        for item in 0..<(batch - 1) {
            let sum = sums + item * plane
            for h in 0..<heads {
                let p = probabilities + (item * heads + h) * plane
                for i in 0..<plane { sum[i] += p[i] }
            }
        }
        layers += 1
        self.heads += heads
    }

    /// The attention map of batch item `item` (1 ..< batch; item 0, the unconditional branch, is
    /// not stored): the mean over stored layers × heads of its probabilities, summed over key tokens
    /// 1 ... tokens (token 0, the start token, skipped) — diffusers' aggregate_attention(…)[…, 1 : 1 +
    /// num_edit_tokens].sum(3). [grid.height · grid.width], row-major.
    public func conceptMap(item: Int, tokens: Int) throws -> [Float] {
        guard heads > 0 else {
            throw ToolError("attention store: no up/down cross-attention layer had the grid \(grid.height)x\(grid.width) in this UNet pass — choose one of the UNet's cross-attention grids")
        }
        guard item >= 1 && item < batch else {
            throw ToolError("attention store: batch item \(item) is not an edit concept — use 1 ... \(batch - 1) (item 0, the unconditional branch, is not stored)")
        }
        guard tokens >= 0 && 1 + tokens <= keys else {
            throw ToolError("attention store: \(tokens) edit tokens do not fit the \(keys) encoder tokens after the start token — use at most \(keys - 1)")
        }
        let plane = queries * keys
        let sum = sums + (item - 1) * plane
        let count = Float(heads)
        var map = [Float](repeating: 0, count: queries)
        for q in 0..<queries {
            let row = sum + q * keys
            // The mean first (torch: out.sum(1) / out.shape[1]), then the token sum.
            var s = 0.0
            for t in 1..<(1 + tokens) { s += Double(row[t] / count) }
            map[q] = Float(s)
        }
        return map
    }
}
