#ifndef DIFFEDIT_CKERNELS_H
#define DIFFEDIT_CKERNELS_H
#include <stddef.h>
#include <stdint.h>

/// IEEE half → float for n values, with the CPU's F16C instructions where it has them
/// (checked once at run time), else a portable bit-exact conversion. Values are converted
/// exactly (every half is representable as a float), NaN payloads kept quiet.
void diffedit_f16_to_f32(const uint16_t *src, float *dst, size_t n);

/// bfloat16 → float for n values (a shift; exact).
void diffedit_bf16_to_f32(const uint16_t *src, float *dst, size_t n);

/// Whether diffedit_f16_to_f32 uses F16C on this CPU.
int diffedit_has_f16c(void);

#endif

/* Vectorised elementwise kernels of the UNet's hot loops, compiled for AVX-512, AVX2+FMA and
 * the baseline, the best chosen at load time (function multiversioning). exp is the
 * Cephes-style range reduction and degree-6 polynomial of VectorMath.exp (≲ 2 ulp), exactly 0
 * below −87.3; erf is Abramowitz & Stegun 7.1.26 as ATen's Vectorized<float>::erf. */

/// Each of `rows` rows (length n, stride `stride`) becomes exp(x − max(row)) in place; its sum
/// is written to sums[r] (a fully masked row, max −∞, uses 0 as its max).
void diffedit_exp_rows(float *p, size_t rows, size_t n, size_t stride, float *sums);

/// out[r][i] = h[r][i] · gelu(g[r][i]) where input row r is [h (d) | g (d)] (GEGLU, exact GELU).
void diffedit_geglu(const float *x, size_t rows, size_t d, float *out);
/// diffedit_geglu of rows [h (d) | g (d)] at t + r·ldt with biases added first (NULL: none):
/// out[r·ldo + i] = (h + bias_h[i]) · gelu(g + bias_g[i]), the arithmetic of a product written
/// with its bias and then diffedit_geglu (the epilogue of diffedit_gemm_bf16_geglu).
void diffedit_geglu_bias(const float *t, size_t ldt, size_t rows, size_t d, const float *bias_h, const float *bias_g,
                         float *out, size_t ldo);

/// x[i] = x[i] · σ(x[i]) in place.
void diffedit_silu(float *x, size_t n);

/// GroupNorm over (image, group) pairs [pair_lo, pair_hi) of x [n][c][spatial]: mean and
/// variance accumulated in double (two passes, as torch's CPU kernel), then the per-channel
/// affine, optionally followed by SiLU (with the vectorised exp above).
void diffedit_group_norm(const float *x, size_t c, size_t spatial, size_t groups, const float *weight,
                         const float *bias, float eps, int silu, float *out, size_t pair_lo, size_t pair_hi);

/// Whether this CPU has AVX512-BF16 (vdpbf16ps), which diffedit_gemm_bf16 computes with.
int diffedit_has_avx512bf16(void);

/// float → bfloat16 bits, rounded to nearest even (NaN stays NaN): the rounding of the bf16 path.
uint16_t diffedit_f32_to_bf16(float x);

/// C[m×n] = alpha·A·B + beta·C (beta 0: C is only written) with every element of A and B rounded to
/// bfloat16 and the products accumulated in f32 (gemm_bf16.c). A(i, l) = a[i·ars + l·acs] and
/// B(l, j) = b[l·brs + j·bcs] for l < k: a transpose is a swap of strides. One thread; the caller
/// splits rows or columns between threads. With AVX512-BF16 (and emulate 0) the product runs on
/// vdpbf16ps; else, or with emulate 1, on a scalar emulation of the same arithmetic. Returns 0, or
/// −1 when its packing buffers (per thread, kept between calls) could not be allocated.
int diffedit_gemm_bf16(size_t m, size_t n, size_t k, float alpha, const float *a, size_t ars, size_t acs,
                       const float *b, size_t brs, size_t bcs, float beta, float *c, size_t ldc, int emulate);

/// diffedit_gemm_bf16 with either operand, or both, a weight packed once (pa, pb; NULL: packed per
/// call from a or b, which are then ignored when non-NULL). A packed A (role 0) is m rows of ⌈k/2⌉
/// pair units, rows padded to a multiple of 12; a packed B (role 1) is the n × k matrix W with
/// B(l, j) = W(j, l) in panels of 32 rows. Pointers into a packed weight start at a row that is a
/// multiple of its panel (12 for A, 32 for B), so that threads can split the rows or columns.
/// `bias` (NULL: none) is added to every row's element i (bias_per_column 0: bias[i] for row i)
/// or column's (1: bias[j] for column j): C = alpha·A·B + bias + beta·C, one addition per
/// element, as writing the bias into C and multiplying with beta 1 would add it.
int diffedit_gemm_bf16_packed(size_t m, size_t n, size_t k, float alpha, const float *a, size_t ars, size_t acs,
                              const uint32_t *pa, const float *b, size_t brs, size_t bcs, const uint32_t *pb,
                              float beta, float *c, size_t ldc, const float *bias, int bias_per_column,
                              int emulate);

/// GEGLU's first product and its gate at once (the feed-forward of SD's transformer blocks):
/// C = X·W'ᵀ with W' (n × k, n a multiple of 32) packed as a B weight (role 1) whose panels of 32
/// rows hold 16 rows of the value half of the layer's weight and their 16 rows of the gate half
/// (panel q: value rows 16q…16q+15, gate rows d + 16q…), then out[i·ldc + 16q + x] =
/// (C(i, 32q + x) + bias_h[16q + x]) · gelu(C(i, 32q + 16 + x) + bias_g[16q + x]): n/2 columns,
/// never the n-wide product. K is one block (the gate needs whole sums). Returns as
/// diffedit_gemm_bf16.
int diffedit_gemm_bf16_geglu(size_t m, size_t n, size_t k, const float *a, size_t ars, size_t acs, const uint32_t *pb,
                             float *c, size_t ldc, const float *bias_h, const float *bias_g, int emulate);

/// The B operand of a convolution's product over `images` images [c, h, w] (kernel kh × kw,
/// `stride`, top and left padding pt and pl, output oh × ow), packed as diffedit_gemm_bf16_packed
/// takes a B packed once (role 1's layout): B(l, j) = x[i][ci][oy·stride + ky − pt][ox·stride + kx
/// − pl], 0 outside the image, for l = (ci·kh + ky)·kw + kx and j = (i·oh + oy)·ow + ox — the
/// values Conv2D.unfold writes, rounded to bf16 pairs along l, without the unfolded copy. Columns
/// [j0, j1) only, j0 a multiple of 32 (threads split the panels); `out` is the whole operand.
void diffedit_bf16_pack_im2col(const float *x, size_t images, size_t c, size_t h, size_t w, size_t kh, size_t kw,
                               size_t stride, size_t pt, size_t pl, size_t oh, size_t ow, size_t j0, size_t j1,
                               uint32_t *out);

/// 32-bit units of a rows × k weight packed as `role` (0: the left operand A; 1: the right one, transposed).
size_t diffedit_bf16_packed_units(int role, size_t rows, size_t k);

/// Packs rows [r0, r1) of a rows × k f32 weight (row r at w + (r − r0)·ldw) into `out`, the whole
/// packed weight; r0 a multiple of the role's panel (12 or 32), r1 too unless it is `rows` (the
/// last panel's missing rows are then zeroed).
void diffedit_bf16_pack_weight(int role, const float *w, size_t ldw, size_t rows, size_t k, size_t r0, size_t r1,
                               uint32_t *out);

/// Limits glibc's malloc to one arena (mallopt(M_ARENA_MAX, 1), which Swift cannot import):
/// under an address-space limit each extra arena reserves 64 MiB. Returns mallopt's result.
int diffedit_limit_malloc_arenas(void);

/* Fused attention (attention.c): one (batch, head) pair, a block of query rows at a time. `level`
 * selects the tiles: 2 AVX-512, 1 AVX2+FMA, 0 baseline; never above diffedit_attention_level(). */

/// The highest level this CPU runs: 2 (AVX-512 F/DQ/VL/BW), 1 (AVX2 and FMA) or 0.
int diffedit_attention_level(void);

/// Query rows of one score tile at `level` (blocks of a multiple of it waste no work).
size_t diffedit_attention_tile_rows(int level);

/// Floats of the packed keys and of the packed values of lk keys of width d at `level`.
size_t diffedit_attention_keys_floats(int level, size_t lk, size_t d);
size_t diffedit_attention_values_floats(int level, size_t lk, size_t d);

/// Packs K (row j at k + j·ldk, d wide) into kt and V (row j at v + j·ldv) into vp, sized as the
/// two functions above say.
void diffedit_attention_pack(int level, const float *k, size_t ldk, const float *v, size_t ldv, size_t lk,
                             size_t d, float *kt, float *vp);

/// s[r·lds + j] = scale · (Q·Kᵀ)(r, j) for `rows` query rows (row r at q + r·ldq) and the lk packed keys
/// (heads wider than 256 run on plain loops: correct, not fast).
void diffedit_attention_scores(int level, const float *q, size_t ldq, size_t rows, const float *kt, size_t lk,
                               size_t d, float scale, float *s, size_t lds);

/// out[r·ldo + c] = inv[r] · (P·V)(r, c) for `rows` rows of p (row stride ldp) and the lk packed values.
void diffedit_attention_values(int level, const float *p, size_t ldp, size_t rows, const float *vp, size_t lk,
                               size_t d, const float *inv, float *out, size_t ldo);

/* Fused attention at bf16 (attention_bf16.c): the blocks of the f32 form with Q, K, the
 * unnormalised probabilities and V rounded to bfloat16 and both products on vdpbf16ps (f32
 * accumulation); with emulate 1, or without AVX512-BF16, scalar loops of the same arithmetic. */

/// 32-bit units of the packed keys and of the packed values of lk keys of width d.
size_t diffedit_attention_bf16_keys_units(size_t lk, size_t d);
size_t diffedit_attention_bf16_values_units(size_t lk, size_t d);

/// Packs K (row j at k + j·ldk, d wide) into kt and V into vp. Returns −1 for heads wider than 256.
int diffedit_attention_bf16_pack(const float *k, size_t ldk, const float *v, size_t ldv, size_t lk, size_t d,
                                 uint32_t *kt, uint32_t *vp);

/// s[r·lds + j] = scale · (Q·Kᵀ)(r, j) for `rows` query rows and the lk packed keys. −1 for d > 256.
int diffedit_attention_bf16_scores(const float *q, size_t ldq, size_t rows, const uint32_t *kt, size_t lk, size_t d,
                                   float scale, float *s, size_t lds, int emulate);

/// out[r·ldo + c] = inv[r] · (P·V)(r, c) for `rows` rows of p (stride ldp, lk wide); p's rows are
/// overwritten by their rounded pairs.
void diffedit_attention_bf16_values(float *p, size_t ldp, size_t rows, const uint32_t *vp, size_t lk, size_t d,
                                    const float *inv, float *out, size_t ldo, int emulate);

/* Products of a weight with few columns (gemm_stream.c). */

/// The highest level this CPU runs: 2 (AVX-512 F/BW/VL/DQ with F16C and FMA), 1 (AVX2, F16C, FMA), 0.
int diffedit_stream_level(void);

/// Floats of scratch one diffedit_gemm_stream call needs for n columns and depth k.
size_t diffedit_gemm_stream_scratch(size_t n, size_t k);

/// C(i, j) = beta·C(i, j) + Σ_l W(i, l)·X(j, l) for i < m, j < n, l < k: W row-major (row stride
/// ldw elements) in `bits` (0 f32, 1 f16, 2 bf16), read once in place; X(j, l) = x[j·xj + l·xl];
/// C(i, j) = c[i·ci + j·cj] (beta 0: only written). One thread, `scratch` of
/// diffedit_gemm_stream_scratch(n, k) floats; `level` at most diffedit_stream_level().
void diffedit_gemm_stream(int level, size_t m, size_t n, size_t k, const void *w, size_t ldw, int bits,
                          const float *x, size_t xj, size_t xl, float beta, float *c, size_t ci, size_t cj,
                          float *scratch);
