/* C = A·B + beta·C with A and B rounded to bfloat16 and f32 accumulation: the opt-in bf16 path
 * (KernelPolicy.precision = .bf16). Debian's OpenBLAS has no sbgemm, so this is our own GEMM in
 * the GotoBLAS shape: B packed in blocks of KC × NC (L2), A in blocks of MC × KC, and a 12 × 32
 * register tile multiplied by `vdpbf16ps` (AVX512-BF16), which takes pairs of bf16 values along
 * K and adds both products to an f32 lane. Both operands are packed as such pairs: one 32-bit
 * unit holds (X[2p], X[2p+1]), low half first, K padded with a zero to even.
 *
 * Without AVX512-BF16 the same packing runs a scalar kernel that multiplies the rounded values in
 * f32 (the tests' reference arithmetic everywhere; far too slow to be a compute path: the tools
 * say the CPU lacks the instructions and stay in f32). */
#include "ckernels.h"
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include "bf16_round.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

enum { MR = 12, NR = 32, KC = 384, MC = 240, NC = 1024 };

uint16_t diffedit_f32_to_bf16(float x) { return bf16_rne(x); }

int diffedit_has_avx512bf16(void) {
#if defined(__x86_64__)
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
    }
    return cached;
#else
    return 0;
#endif
}

#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

/* Packing. X(j, k) = x[j·js + k·ks]; the packed block holds, per micro-panel of W rows (MR for
 * A, NR for B), kp pairs × W units, unit (r, p) = bf16_pair(X(j0 + panel·W + r, 2p), X(…, 2p + 1)),
 * zero beyond `rows` or `kc`, at out[panel·kp·W + p·W + r] (interleaved: what the tile reads with
 * one vector load for B, and with one pointer for A) or, with `by_rows`, at
 * out[panel·kp·W + r·kp + p] (each row's units contiguous: A taken along K, where the interleaved
 * form scattered one unit per store and was 17 % of a bf16 UNet step). Both walks round 16 values
 * at a time where the floats lie contiguous. */
CLONES
static void pack(const float *x, size_t js, size_t ks, size_t rows, size_t kc, size_t W, int by_rows, uint32_t *out) {
    size_t kp = (kc + 1) / 2, panels = (rows + W - 1) / W;
    size_t rs = by_rows ? kp : 1, ps = by_rows ? 1 : W;    /* unit (r, p) at o[r·rs + p·ps] */
    for (size_t pn = 0; pn < panels; pn++) {
        uint32_t *o = out + pn * kp * W;
        size_t r0 = pn * W, rn = rows - r0 < W ? rows - r0 : W;
        if (ks == 1) {          /* pairs adjacent in memory: walk each row along K */
            for (size_t r = 0; r < rn; r++) {
                const float *row = x + (r0 + r) * js;
                uint32_t *u = o + r * rs;
                size_t p = 0;
                /* The activations come from DRAM or the other core's cache: ask for the row after
                 * next while this one is rounded (the loads' latency was most of packing's time). */
                if (r0 + r + 2 < rows)
                    for (size_t q = 0; q < kc; q += 16) __builtin_prefetch(row + 2 * js + q);
                for (; 2 * p + 16 <= kc; p += 8) {
                    bf16_vu32h v = bf16_adjacent8(row + 2 * p);
                    if (by_rows) memcpy(u + p, &v, sizeof v);
                    else
                        for (int i = 0; i < 8; i++) u[(p + i) * ps] = v[i];
                }
                for (; 2 * p + 1 < kc; p++) u[p * ps] = bf16_pair(row[2 * p], row[2 * p + 1]);
                if (p < kp) u[p * ps] = bf16_pair(row[2 * p], 0.0f);
            }
        } else {                /* rows adjacent (js == 1, say): walk two K rows at once */
            for (size_t p = 0; p < kp; p++) {
                const float *k0 = x + 2 * p * ks, *k1 = k0 + ks;
                int odd = 2 * p + 1 >= kc;
                size_t r = 0;
                /* K rows lie a whole row of X apart: the prefetcher does not follow; two pairs ahead. */
                if (js == 1 && 2 * p + 5 < kc)
                    for (size_t q = 0; q < rn; q += 16) {
                        __builtin_prefetch(k0 + 4 * ks + r0 + q);
                        __builtin_prefetch(k1 + 4 * ks + r0 + q);
                    }
                if (js == 1 && !odd && !by_rows)
                    for (; r + 16 <= rn; r += 16) {
                        bf16_vu32 v = bf16_pairs16(k0 + r0 + r, k1 + r0 + r);
                        memcpy(o + p * W + r, &v, sizeof v);
                    }
                for (; r < rn; r++)
                    o[r * rs + p * ps] = bf16_pair(k0[(r0 + r) * js], odd ? 0.0f : k1[(r0 + r) * js]);
            }
        }
        for (size_t r = rn; r < W; r++)
            for (size_t p = 0; p < kp; p++) o[r * rs + p * ps] = 0;
    }
}

/* The tile's result (times alpha, on the first K block; later blocks add alpha·tile too) written
 * into C: mode 0 stores, 1 adds, 2 adds beta·C. On the first K block a bias is added too, per
 * row (brow[i]) or per column (bcol[j]) of the tile, NULL for none: one addition, the one the
 * caller's writing the bias into C before a beta-1 product would make. */
static inline void merge(const float *t, size_t mr, size_t nr, float *c, size_t ldc, int mode, float alpha,
                         float beta, const float *brow, const float *bcol) {
    for (size_t i = 0; i < mr; i++)
        for (size_t j = 0; j < nr; j++) {
            float *d = c + i * ldc + j, v = alpha * t[i * NR + j];
            if (brow) v += brow[i];
            if (bcol) v += bcol[j];
            *d = mode == 0 ? v : mode == 1 ? *d + v : beta * *d + v;
        }
}

static void tile_scalar(size_t kp, const uint32_t *ap, size_t ars, size_t aps, const uint32_t *bp, float *t) {
    for (size_t i = 0; i < MR * NR; i++) t[i] = 0;
    for (size_t p = 0; p < kp; p++)
        for (size_t r = 0; r < MR; r++) {
            uint32_t a = ap[r * ars + p * aps];
            float a0 = bf16_value(a & 0xFFFFu), a1 = bf16_value(a >> 16);
            for (size_t j = 0; j < NR; j++) {
                uint32_t b = bp[p * NR + j];
                t[r * NR + j] += a0 * bf16_value(b & 0xFFFFu) + a1 * bf16_value(b >> 16);
            }
        }
}

#if defined(__x86_64__)
/* The register tile, its A units at ap[r·ARS + p·APS]: interleaved (constants: the twelve
 * broadcasts are fixed offsets from one pointer) or by rows, `ars` units apart (kp for a block
 * packed per call, ⌈k/2⌉ for a weight packed once). */
#define BF16_TILE(NAME, ARS, APS)                                                                  \
__attribute__((target("avx512f,avx512bf16")))                                                      \
static void NAME(size_t kp, const uint32_t *ap, size_t ars, const uint32_t *bp, float *c,          \
                 size_t ldc, size_t mr, size_t nr, int mode, float alpha, float beta,              \
                 const float *brow, const float *bcol) {                                           \
    __m512 acc[MR][2];                                                                             \
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();                      \
    for (size_t p = 0; p < kp; p++) {                                                              \
        __m512bh b0 = (__m512bh)_mm512_loadu_si512((const void *)(bp + p * NR));                   \
        __m512bh b1 = (__m512bh)_mm512_loadu_si512((const void *)(bp + p * NR + 16));              \
        _Pragma("clang loop unroll(full)")                                                         \
        for (int r = 0; r < MR; r++) {                                                             \
            __m512bh ar = (__m512bh)_mm512_set1_epi32((int)ap[r * (ARS) + p * (APS)]);             \
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], ar, b0);                                       \
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], ar, b1);                                       \
        }                                                                                          \
    }                                                                                              \
    if (mr == MR && nr == NR) {                                                                    \
        __m512 vb = _mm512_set1_ps(beta), va = _mm512_set1_ps(alpha);                              \
        for (int r = 0; r < MR; r++) {                                                             \
            float *d = c + r * ldc;                                                                \
            for (int h = 0; h < 2; h++) {                                                          \
                __m512 v = alpha == 1 ? acc[r][h] : _mm512_mul_ps(va, acc[r][h]);                  \
                if (brow) v = _mm512_add_ps(v, _mm512_set1_ps(brow[r]));                           \
                if (bcol) v = _mm512_add_ps(v, _mm512_loadu_ps(bcol + 16 * h));                    \
                if (mode == 1) v = _mm512_add_ps(v, _mm512_loadu_ps(d + 16 * h));                  \
                else if (mode == 2) v = _mm512_fmadd_ps(vb, _mm512_loadu_ps(d + 16 * h), v);       \
                _mm512_storeu_ps(d + 16 * h, v);                                                   \
            }                                                                                      \
        }                                                                                          \
        return;                                                                                    \
    }                                                                                              \
    float t[MR * NR];                                                                              \
    for (int r = 0; r < MR; r++) {                                                                 \
        _mm512_storeu_ps(t + r * NR, acc[r][0]);                                                   \
        _mm512_storeu_ps(t + r * NR + 16, acc[r][1]);                                              \
    }                                                                                              \
    merge(t, mr, nr, c, ldc, mode, alpha, beta, brow, bcol);                                       \
}
BF16_TILE(tile_avx512bf16, 1, MR)
BF16_TILE(tile_avx512bf16_rows, ars, 1)
#undef BF16_TILE
#endif

/* Per-thread packing buffers, grown to the largest block once and kept (no allocation per call
 * once a model's shapes have been seen). */
static _Thread_local uint32_t *packA, *packB;
static _Thread_local size_t capA, capB;

static int reserve(uint32_t **buf, size_t *cap, size_t units) {
    if (units <= *cap) return 1;
    void *p = NULL;
    if (posix_memalign(&p, 64, units * sizeof(uint32_t)) != 0) return 0;
    free(*buf);
    *buf = p;
    *cap = units;
    return 1;
}

size_t diffedit_bf16_packed_units(int role, size_t rows, size_t k) {
    size_t h = role == 0 ? MR : NR;
    return (rows + h - 1) / h * h * ((k + 1) / 2);
}

void diffedit_bf16_pack_weight(int role, const float *w, size_t ldw, size_t rows, size_t k, size_t r0, size_t r1,
                               uint32_t *out) {
    size_t h = role == 0 ? MR : NR, kp = (k + 1) / 2;
    if (r1 <= r0) return;
    pack(w, ldw, 1, r1 - r0, k, h, role == 0, out + r0 / h * h * kp);
    (void)rows;
}

int diffedit_gemm_bf16(size_t m, size_t n, size_t k, float alpha, const float *a, size_t ars, size_t acs,
                       const float *b, size_t brs, size_t bcs, float beta, float *c, size_t ldc, int emulate) {
    return diffedit_gemm_bf16_packed(m, n, k, alpha, a, ars, acs, NULL, b, brs, bcs, NULL, beta, c, ldc, NULL, 0,
                                     emulate);
}

int diffedit_gemm_bf16_packed(size_t m, size_t n, size_t k, float alpha, const float *a, size_t ars, size_t acs,
                              const uint32_t *pa, const float *b, size_t brs, size_t bcs, const uint32_t *pb,
                              float beta, float *c, size_t ldc, const float *bias, int bias_per_column,
                              int emulate) {
    if (m == 0 || n == 0) return 0;
    if (k == 0) {
        for (size_t i = 0; i < m; i++)
            for (size_t j = 0; j < n; j++) {
                float v = beta == 0 ? 0 : beta * c[i * ldc + j];
                c[i * ldc + j] = bias ? v + bias[bias_per_column ? j : i] : v;
            }
        return 0;
    }
    int fast = !emulate && diffedit_has_avx512bf16();
    size_t kcMax = k < KC ? k : KC, kpMax = (kcMax + 1) / 2, kFull = (k + 1) / 2;
    size_t ncMax = n < NC ? n : NC, mcMax = m < MC ? m : MC;
    if (!pb && !reserve(&packB, &capB, kpMax * ((ncMax + NR - 1) / NR) * NR)) return -1;
    if (!pa && !reserve(&packA, &capA, kpMax * ((mcMax + MR - 1) / MR) * MR)) return -1;
    float t[MR * NR];
    /* A along K (its rows contiguous), or packed once, is read by rows: no scatter. */
    int by_rows = pa || acs == 1;
    for (size_t jc = 0; jc < n; jc += NC) {
        size_t nc = n - jc < NC ? n - jc : NC;
        for (size_t pc = 0; pc < k; pc += KC) {
            size_t kc = k - pc < KC ? k - pc : KC, kp = (kc + 1) / 2;
            int mode = pc > 0 ? 1 : beta == 0 ? 0 : beta == 1 ? 1 : 2;
            /* B(k, j) = b[k·brs + j·bcs]: rows of the packed block are columns j. A weight packed
             * once holds whole K per panel: the block starts pc/2 units into each. */
            size_t bstride = pb ? kFull * NR : kp * NR;
            const uint32_t *bblock = pb ? pb + jc / NR * bstride + pc / 2 * NR : packB;
            if (!pb) pack(b + pc * brs + jc * bcs, bcs, brs, nc, kc, NR, 0, packB);
            for (size_t ic = 0; ic < m; ic += MC) {
                size_t mc = m - ic < MC ? m - ic : MC;
                size_t arow = pa ? kFull : kp;    /* units between rows of A, by rows */
                const uint32_t *ablock = pa ? pa + ic * kFull + pc / 2 : packA;
                if (!pa) pack(a + ic * ars + pc * acs, ars, acs, mc, kc, MR, by_rows, packA);
                for (size_t jr = 0; jr < nc; jr += NR) {
                    size_t nr = nc - jr < NR ? nc - jr : NR;
                    const uint32_t *bp = bblock + (jr / NR) * bstride;
                    for (size_t ir = 0; ir < mc; ir += MR) {
                        size_t mr = mc - ir < MR ? mc - ir : MR;
                        const uint32_t *ap = by_rows ? ablock + ir * arow : ablock + (ir / MR) * kp * MR;
                        float *cp = c + (ic + ir) * ldc + jc + jr;
                        /* The bias with the first K block only. */
                        const float *brow = bias && pc == 0 && !bias_per_column ? bias + ic + ir : NULL;
                        const float *bcol = bias && pc == 0 && bias_per_column ? bias + jc + jr : NULL;
#if defined(__x86_64__)
                        if (fast) {
                            if (by_rows)
                                tile_avx512bf16_rows(kp, ap, arow, bp, cp, ldc, mr, nr, mode, alpha, beta, brow, bcol);
                            else tile_avx512bf16(kp, ap, 0, bp, cp, ldc, mr, nr, mode, alpha, beta, brow, bcol);
                            continue;
                        }
#endif
                        tile_scalar(kp, ap, by_rows ? arow : 1, by_rows ? 1 : MR, bp, t);
                        merge(t, mr, nr, cp, ldc, mode, alpha, beta, brow, bcol);
                    }
                }
            }
        }
    }
    return 0;
}

/* Each register tile of 12 rows × one panel (16 value and 16 gate columns) runs over K in the
 * blocks of diffedit_gemm_bf16_packed, summed in an f32 tile that rounds as that C does, bias
 * with the first block; then value · gelu(gate) into C. A is packed for the whole of K, once per
 * block of MC rows. */
int diffedit_gemm_bf16_geglu(size_t m, size_t n, size_t k, const float *a, size_t ars, size_t acs, const uint32_t *pb,
                             float *c, size_t ldc, const float *bias_h, const float *bias_g, int emulate) {
    if (n % NR != 0 || !pb) return -1;
    if (m == 0 || n == 0) return 0;
    int fast = !emulate && diffedit_has_avx512bf16();
    size_t kFull = (k + 1) / 2, mcMax = m < MC ? m : MC;
    if (k > 0 && !reserve(&packA, &capA, kFull * ((mcMax + MR - 1) / MR) * MR)) return -1;
    int by_rows = acs == 1, biased = bias_h || bias_g;
    float t[MR * NR], u[MR * NR], bias[NR];
    for (size_t ic = 0; ic < m; ic += MC) {
        size_t mc = m - ic < MC ? m - ic : MC;
        if (k > 0) pack(a + ic * ars, ars, acs, mc, k, MR, by_rows, packA);
        for (size_t jr = 0; jr < n; jr += NR) {
            const uint32_t *panel = pb + jr / NR * kFull * NR;
            size_t q = jr / 2;
            for (size_t x = 0; x < NR / 2; x++) {
                bias[x] = bias_h ? bias_h[q + x] : 0;
                bias[NR / 2 + x] = bias_g ? bias_g[q + x] : 0;
            }
            for (size_t ir = 0; ir < mc; ir += MR) {
                size_t mr = mc - ir < MR ? mc - ir : MR;
                const uint32_t *ap = by_rows ? packA + ir * kFull : packA + (ir / MR) * kFull * MR;
                if (k == 0)
                    for (size_t i = 0; i < MR * NR; i++) t[i] = biased ? bias[i % NR] : 0;
                for (size_t pc = 0; pc < k; pc += KC) {
                    size_t kp = ((k - pc < KC ? k - pc : KC) + 1) / 2;
                    const uint32_t *apk = by_rows ? ap + pc / 2 : ap + pc / 2 * MR, *bpk = panel + pc / 2 * NR;
                    const float *bcol = pc == 0 && biased ? bias : NULL;
#if defined(__x86_64__)
                    if (fast) {
                        if (by_rows) tile_avx512bf16_rows(kp, apk, kFull, bpk, t, NR, mr, NR, pc > 0, 1, 0, NULL, bcol);
                        else tile_avx512bf16(kp, apk, 0, bpk, t, NR, mr, NR, pc > 0, 1, 0, NULL, bcol);
                        continue;
                    }
#endif
                    tile_scalar(kp, apk, by_rows ? kFull : 1, by_rows ? 1 : MR, bpk, u);
                    merge(u, mr, NR, t, NR, pc > 0, 1, 0, NULL, bcol);
                }
                diffedit_geglu_bias(t, NR, mr, NR / 2, NULL, NULL, c + (ic + ir) * ldc + q, ldc);
            }
        }
    }
    return 0;
}

/* The unfolded images' value B(l, j) (as Conv2D.unfold writes it), 0 outside the image. */
static inline float im2col_value(const float *x, size_t c, size_t h, size_t w, size_t kh, size_t kw, size_t stride,
                                 size_t pt, size_t pl, size_t oh, size_t ow, size_t l, size_t j) {
    size_t taps = kh * kw, ci = l / taps, ky = l % taps / kw, kx = l % kw;
    size_t img = j / (oh * ow), q = j % (oh * ow);
    long iy = (long)(q / ow * stride + ky) - (long)pt, ix = (long)(q % ow * stride + kx) - (long)pl;
    if (iy < 0 || ix < 0 || iy >= (long)h || ix >= (long)w) return 0;
    return x[((img * c + ci) * h + (size_t)iy) * w + (size_t)ix];
}

#if defined(__x86_64__)
/* Panels of 32 columns at once: per tap, the 32 columns' element offsets and which lie inside the
 * image; then per pair of K rows two 16-lane gathers each, rounded as `pack` rounds. */
__attribute__((target("avx512f")))
static void pack_im2col_avx512(const float *x, size_t c, size_t h, size_t w, size_t kh, size_t kw, size_t stride,
                               size_t pt, size_t pl, size_t oh, size_t ow, size_t columns, size_t j0, size_t j1,
                               uint32_t *out) {
    size_t taps = kh * kw, k = c * taps, kp = (k + 1) / 2, plane = oh * ow;
    for (size_t j = j0; j < j1; j += NR) {
        uint32_t *o = out + j / NR * kp * NR;
        int32_t base[NR], iy0[NR], ix0[NR];
        for (size_t r = 0; r < NR; r++) {
            size_t jj = j + r < columns ? j + r : columns - 1, img = jj / plane, q = jj % plane;
            base[r] = (int32_t)(img * c * h * w);
            iy0[r] = j + r < columns ? (int32_t)(q / ow * stride) - (int32_t)pt : -(1 << 20);  /* never inside */
            ix0[r] = (int32_t)(q % ow * stride) - (int32_t)pl;
        }
        __m512i vb[2], vy[2], vx[2];
        for (int g = 0; g < 2; g++) {
            vb[g] = _mm512_loadu_si512(base + 16 * g);
            vy[g] = _mm512_loadu_si512(iy0 + 16 * g);
            vx[g] = _mm512_loadu_si512(ix0 + 16 * g);
        }
        for (size_t p = 0; p < kp; p++) {
            bf16_vu32 half[2][2];    /* [lo/hi][16 lanes] */
            for (int e = 0; e < 2; e++) {
                size_t l = 2 * p + e;
                for (int g = 0; g < 2; g++) {
                    __m512 v = _mm512_setzero_ps();
                    if (l < k) {
                        size_t ci = l / taps, ky = l % taps / kw, kx = l % kw;
                        __m512i iy = _mm512_add_epi32(vy[g], _mm512_set1_epi32((int32_t)ky));
                        __m512i ix = _mm512_add_epi32(vx[g], _mm512_set1_epi32((int32_t)kx));
                        __mmask16 in = _mm512_cmpge_epi32_mask(iy, _mm512_setzero_si512())
                                     & _mm512_cmplt_epi32_mask(iy, _mm512_set1_epi32((int32_t)h))
                                     & _mm512_cmpge_epi32_mask(ix, _mm512_setzero_si512())
                                     & _mm512_cmplt_epi32_mask(ix, _mm512_set1_epi32((int32_t)w));
                        __m512i off = _mm512_add_epi32(_mm512_add_epi32(vb[g], _mm512_set1_epi32((int32_t)(ci * h * w))),
                                                       _mm512_add_epi32(_mm512_mullo_epi32(iy, _mm512_set1_epi32((int32_t)w)), ix));
                        v = _mm512_mask_i32gather_ps(v, in, off, x, 4);
                    }
                    memcpy(&half[e][g], &v, sizeof v);
                }
            }
            for (int g = 0; g < 2; g++) {
                bf16_vu32 u = bf16_rne16(half[0][g]) | (bf16_rne16(half[1][g]) << 16);
                memcpy(o + p * NR + 16 * g, &u, sizeof u);
            }
        }
    }
}
#endif

void diffedit_bf16_pack_im2col(const float *x, size_t images, size_t c, size_t h, size_t w, size_t kh, size_t kw,
                               size_t stride, size_t pt, size_t pl, size_t oh, size_t ow, size_t j0, size_t j1,
                               uint32_t *out) {
    size_t columns = images * oh * ow, k = c * kh * kw, kp = (k + 1) / 2;
    if (j1 > columns) j1 = columns;
#if defined(__x86_64__)
    /* Offsets as 32-bit lanes: the images' elements must fit. */
    if (__builtin_cpu_supports("avx512f") && images * c * h * w < (size_t)1 << 31) {
        pack_im2col_avx512(x, c, h, w, kh, kw, stride, pt, pl, oh, ow, columns, j0, j1, out);
        return;
    }
#endif
    for (size_t j = j0; j < j1; j += NR) {
        uint32_t *o = out + j / NR * kp * NR;
        for (size_t p = 0; p < kp; p++)
            for (size_t r = 0; r < NR; r++) {
                size_t jj = j + r;
                float lo = jj < columns ? im2col_value(x, c, h, w, kh, kw, stride, pt, pl, oh, ow, 2 * p, jj) : 0;
                float hi = jj < columns && 2 * p + 1 < k
                               ? im2col_value(x, c, h, w, kh, kw, stride, pt, pl, oh, ow, 2 * p + 1, jj) : 0;
                o[p * NR + r] = bf16_pair(lo, hi);
            }
    }
}
