import CKernels

/// How the kernels split their work: the scratch each may keep, which convolution method a size
/// takes, and whether a model's weights are read in place. A value held by the ComputeContext
/// (`ctx.policy`) and read by each kernel from the context it is handed, once per call, so two
/// contexts (two tests, two models) can run with different policies at the same time. Every
/// default is the measured best; none changes the numbers beyond float rounding order, which
/// the parity tests bound — except `precision`, which is opt-in for that reason.
public struct KernelPolicy: Sendable, Equatable {
    // MARK: Weights

    /// Floats of one widened block of a 16-bit weight (`WeightMatrix`; 8 MiB: a quarter of this
    /// machine class's L3, so the block is still in cache when the BLAS packs it).
    public var weightBlockFloats = 1 << 21

    /// Whether large matrices are read in place from the checkpoint's memory map (default);
    /// false converts every weight to a private f32 copy at load (`unet-bench --f32-weights`, to
    /// compare). Same numbers either way. Read once, by a model's initialiser when it loads its
    /// weights with this context (`ParameterLoader`), not by any forward pass: changing it
    /// after a model is built has no effect on that model.
    public var readsWeightsInPlace = true

    /// Products by a weight with at most this many columns of X (tokens or pixels: SD's 4×4 level
    /// at 32² latents, two images of 16 pixels) stream the weight once in place
    /// (`WeightMatrix.stream`, gemm_stream.c) instead of widening and packing it for the BLAS;
    /// 0 turns it off (`unet-bench --stream-columns`). Measured on one Zen 5 core against
    /// widening + OpenBLAS: 1280 × 32 × 11520 in 8.0 against 10.1 ms, but 1280 × 128 × 11520 in
    /// 25.8 against 22.6 ms, so the 8×8 level (128 columns) stays on the BLAS.
    public var streamColumns = 64

    /// The instruction set of the streamed products: 2 AVX-512, 1 AVX2+FMA+F16C, 0 scalar; the
    /// CPU's best by default (tests lower it).
    public var streamLevel = Int(diffedit_stream_level())

    // MARK: Arithmetic

    /// The products' arithmetic (`Precision`): f32 (OpenBLAS), or the opt-in bf16 where the CPU
    /// has AVX512-BF16 (`--precision bf16`, `DIFFEDIT_PRECISION=bf16`; elsewhere f32). Starts as
    /// `Precision.requested` says, which is f32 unless a tool or the environment asked.
    public var precision: Precision = Precision.requested.effective

    /// At `precision` bf16, whether a model's linear and convolution weights (and F(4×4, 3×3)'s
    /// transformed planes) are packed into the bf16 kernel's layout once, at their first product,
    /// and kept (`WeightMatrix.packedBF16`, `Conv2D.packedWinograd4BF16`; the checkpoint's pages of
    /// a packed weight are given back) instead of being widened and packed again at every product
    /// (`unet-bench --bf16-weights packed|per-product`). Same numbers, but that products too small
    /// for the bf16 kernel stay in f32 per product.
    public var packsWeightsBF16 = true

    // MARK: Attention

    /// Rows of scores kept at once are bounded by this many floats per worker (4 MiB; measured
    /// best for SD at 64×64 latents: 256 query rows per chunk against 4096 keys). Tests shrink it
    /// to force many partial chunks.
    public var scoreBudget = 1 << 20

    /// Whether attention with heads of at most `Attention.fusedMaxHeadDim` and at least
    /// `fusedAttentionMinKeys` keys (the UNet's self-attention; not the VAE's 512-wide head, the
    /// cross-attention over 77 text tokens or CLIP's causal one) runs fused (attention.c: keys and values packed once per
    /// head, blocks of query rows whose scores stay in cache) instead of as two BLAS products per
    /// chunk (`unet-bench --attention fused|gemm`). Same arithmetic but for the order of sums.
    /// At `precision` bf16 the fused form is attention_bf16.c: the same roundings as the bf16
    /// products of the BLAS form, on vdpbf16ps.
    public var fusedAttention = true

    /// Fewer keys than this stay on the BLAS: the 77 text tokens of cross-attention fill three
    /// 32-key panels to 80 % and measured slower fused (`unet-bench --time-attention 4096 77 8 40`).
    /// Tests lower it to run the fused tiles on small cases.
    public var fusedAttentionMinKeys = 128

    /// Floats of scores one block of the fused attention keeps (512 KiB; 24 rows of 4096 keys on
    /// AVX-512, measured against 12 and 48 on SD's 64² step); a block is at least one tile of rows,
    /// and never more rows than `scoreBudget` allows.
    public var attentionBlockFloats = 1 << 17

    /// The instruction set of the fused attention's tiles: 2 AVX-512, 1 AVX2+FMA, 0 baseline;
    /// the CPU's best by default (tests lower it to check every level the CPU runs).
    public var attentionLevel = Int(diffedit_attention_level())

    // MARK: Convolutions

    /// Floats of the unfolded band `Conv2D.forwardIm2col` keeps (16 MiB: the band and its share
    /// of the output stay in this machine class's L3 while the product runs; at 512×512 with 128
    /// channels a band of 7 rows instead of a 2.4 GB whole-image unfold).
    public var columnBudget = 1 << 22

    /// Images of at most this many output pixels (oh·ow) take `Conv2D.forwardSmall` (measured on
    /// SD 1.5's UNet at 32×32 latents: the step 3.1 s → 2.2 s; equal at 64×64).
    public var smallImagePixels = 1024

    /// Most floats of the unfolded copy `Conv2D.forwardSmall` keeps at once (128 MiB); images
    /// are unfolded and multiplied in groups that fit.
    public var smallColumnBudget = 1 << 25

    /// Whether 3×3 stride-1 convolutions of images larger than `smallImagePixels` may use
    /// F(2×2, 3×3) when it pays (`Conv2D.prefersWinograd`; else im2col bands:
    /// `unet-bench --no-winograd`).
    public var useWinograd = true

    /// Which Winograd form `useWinograd` means (`unet-bench --winograd 4|2|off`): 4 for
    /// F(4×4, 3×3) (Conv2DWinograd4.swift) wherever `Conv2D.prefersWinograd4` says it pays, at any
    /// image size (the small path included); 2 for F(2×2, 3×3) on images larger than
    /// `smallImagePixels` only, where `Conv2D.prefersWinograd` says it pays.
    public var winogradTile = 4

    /// F(4×4) needs at least this many 4×4 output tiles (n·⌈oh/4⌉·⌈ow/4⌉) and input channels
    /// (`Conv2D.prefersWinograd4`; the measurements are there).
    public var winograd4MinTiles = 64
    public var winograd4MinInChannels = 24

    /// Floats of the transformed input and output one group of Winograd tiles keeps
    /// (16·(C + O)·tiles for F(2×2), 36·(C + O)·tiles for F(4×4)).
    public var winogradBudget = 1 << 24

    /// Most floats of F(4×4)'s transformed weights U kept at once (36·O·C; 64 MiB): larger
    /// layers build U for blocks of output channels (1280 → 1280: 236 MB whole, 4 blocks).
    public var winogradWeightBudget = 1 << 24

    /// The measured defaults above.
    public init() {}
}
