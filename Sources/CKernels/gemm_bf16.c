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

#if defined(__x86_64__)
#include <immintrin.h>
#endif

enum { MR = 12, NR = 32, KC = 384, MC = 240, NC = 1024 };

/* float → bfloat16 bits, round to nearest even (as vcvtneps2bf16 on normal numbers); NaN stays
 * a quiet NaN. */
static inline uint16_t bf16_rne(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

uint16_t diffedit_f32_to_bf16(float x) { return bf16_rne(x); }

static inline uint32_t pair(float lo, float hi) {
    return (uint32_t)bf16_rne(lo) | ((uint32_t)bf16_rne(hi) << 16);
}

static inline float bf16_value(uint32_t bits16) {
    uint32_t u = bits16 << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

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

/* Rounding 16 floats at once: the same bits as bf16_rne, lane by lane (GNU vectors: one AVX-512
 * register, two AVX2 or four SSE ones, as the clone the CPU runs was compiled for). */
typedef uint32_t vu32 __attribute__((vector_size(64), aligned(4)));
typedef int32_t vi32 __attribute__((vector_size(64), aligned(4)));

#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

/* Helpers as macros (GNU statement expressions): a function taking a 64-byte vector would have
 * a different ABI in each clone. */
#define rne16(u_) ({                                                                          \
    vu32 x_ = (u_);                                                                           \
    vu32 r_ = (x_ + 0x7FFFu + ((x_ >> 16) & 1u)) >> 16;                                       \
    vu32 n_ = (vu32)((vi32)((x_ & 0x7FFFFFFFu) > 0x7F800000u)); /* all ones where NaN */      \
    (r_ & ~n_) | (((x_ >> 16) | 0x40u) & n_);                                                 \
})

/* pair(lo[i], hi[i]) for 16 contiguous floats of each: the vector form of `pair`. */
#define pairs16(lo_, hi_) ({                                                                  \
    vu32 a_, b_;                                                                              \
    memcpy(&a_, (lo_), sizeof a_);                                                            \
    memcpy(&b_, (hi_), sizeof b_);                                                            \
    rne16(a_) | (rne16(b_) << 16);                                                            \
})

/* Packing. X(j, k) = x[j·js + k·ks]; the packed block holds, per micro-panel of W rows (MR for
 * A, NR for B), kp pairs × W units: out[panel·kp·W + p·W + r] = pair(X(j0 + panel·W + r, 2p),
 * X(…, 2p + 1)), zero beyond `rows` or `kc`. Both walks round 16 units at a time where the
 * floats lie contiguous (29 % of a 2048 × 1280 × 1280 product's time was scalar packing). */
CLONES
static void pack(const float *x, size_t js, size_t ks, size_t rows, size_t kc, size_t W, uint32_t *out) {
    size_t kp = (kc + 1) / 2, panels = (rows + W - 1) / W;
    for (size_t pn = 0; pn < panels; pn++) {
        uint32_t *o = out + pn * kp * W;
        size_t r0 = pn * W, rn = rows - r0 < W ? rows - r0 : W;
        if (ks == 1) {          /* pairs adjacent in memory: walk each row along K */
            for (size_t r = 0; r < rn; r++) {
                const float *row = x + (r0 + r) * js;
                size_t p = 0;
                /* 32 floats are 16 (lo, hi) pairs: the pair's two halves, rounded as 64-bit lanes. */
                for (; 2 * p + 32 <= kc; p += 16) {
                    vu32 w[2];
                    memcpy(w, row + 2 * p, sizeof w);
                    for (int h = 0; h < 2; h++) {
                        vu32 r16 = rne16(w[h]);
                        for (int i = 0; i < 8; i++) o[(p + 8 * h + i) * W + r] = r16[2 * i] | (r16[2 * i + 1] << 16);
                    }
                }
                for (; 2 * p + 1 < kc; p++) o[p * W + r] = pair(row[2 * p], row[2 * p + 1]);
                if (p < kp) o[p * W + r] = pair(row[2 * p], 0.0f);
            }
        } else {                /* rows adjacent (js == 1, say): walk two K rows at once */
            for (size_t p = 0; p < kp; p++) {
                const float *k0 = x + 2 * p * ks, *k1 = k0 + ks;
                int odd = 2 * p + 1 >= kc;
                size_t r = 0;
                if (js == 1 && !odd)
                    for (; r + 16 <= rn; r += 16) {
                        vu32 v = pairs16(k0 + r0 + r, k1 + r0 + r);
                        memcpy(o + p * W + r, &v, sizeof v);
                    }
                for (; r < rn; r++)
                    o[p * W + r] = pair(k0[(r0 + r) * js], odd ? 0.0f : k1[(r0 + r) * js]);
            }
        }
        for (size_t r = rn; r < W; r++)
            for (size_t p = 0; p < kp; p++) o[p * W + r] = 0;
    }
}

/* The tile's result (times alpha, on the first K block; later blocks add alpha·tile too) written
 * into C: mode 0 stores, 1 adds, 2 adds beta·C. */
static inline void merge(const float *t, size_t mr, size_t nr, float *c, size_t ldc, int mode, float alpha,
                         float beta) {
    for (size_t i = 0; i < mr; i++)
        for (size_t j = 0; j < nr; j++) {
            float *d = c + i * ldc + j, v = alpha * t[i * NR + j];
            *d = mode == 0 ? v : mode == 1 ? *d + v : beta * *d + v;
        }
}

static void tile_scalar(size_t kp, const uint32_t *ap, const uint32_t *bp, float *t) {
    for (size_t i = 0; i < MR * NR; i++) t[i] = 0;
    for (size_t p = 0; p < kp; p++)
        for (size_t r = 0; r < MR; r++) {
            uint32_t a = ap[p * MR + r];
            float a0 = bf16_value(a & 0xFFFFu), a1 = bf16_value(a >> 16);
            for (size_t j = 0; j < NR; j++) {
                uint32_t b = bp[p * NR + j];
                t[r * NR + j] += a0 * bf16_value(b & 0xFFFFu) + a1 * bf16_value(b >> 16);
            }
        }
}

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bf16")))
static void tile_avx512bf16(size_t kp, const uint32_t *ap, const uint32_t *bp, float *c, size_t ldc,
                            size_t mr, size_t nr, int mode, float alpha, float beta) {
    __m512 acc[MR][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (size_t p = 0; p < kp; p++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512((const void *)(bp + p * NR));
        __m512bh b1 = (__m512bh)_mm512_loadu_si512((const void *)(bp + p * NR + 16));
        const uint32_t *a = ap + p * MR;
#pragma clang loop unroll(full)
        for (int r = 0; r < MR; r++) {
            __m512bh ar = (__m512bh)_mm512_set1_epi32((int)a[r]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], ar, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], ar, b1);
        }
    }
    if (mr == MR && nr == NR) {
        __m512 vb = _mm512_set1_ps(beta), va = _mm512_set1_ps(alpha);
        for (int r = 0; r < MR; r++) {
            float *d = c + r * ldc;
            for (int h = 0; h < 2; h++) {
                __m512 v = alpha == 1 ? acc[r][h] : _mm512_mul_ps(va, acc[r][h]);
                if (mode == 1) v = _mm512_add_ps(v, _mm512_loadu_ps(d + 16 * h));
                else if (mode == 2) v = _mm512_fmadd_ps(vb, _mm512_loadu_ps(d + 16 * h), v);
                _mm512_storeu_ps(d + 16 * h, v);
            }
        }
        return;
    }
    float t[MR * NR];
    for (int r = 0; r < MR; r++) {
        _mm512_storeu_ps(t + r * NR, acc[r][0]);
        _mm512_storeu_ps(t + r * NR + 16, acc[r][1]);
    }
    merge(t, mr, nr, c, ldc, mode, alpha, beta);
}
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

int diffedit_gemm_bf16(size_t m, size_t n, size_t k, float alpha, const float *a, size_t ars, size_t acs,
                       const float *b, size_t brs, size_t bcs, float beta, float *c, size_t ldc, int emulate) {
    if (m == 0 || n == 0) return 0;
    if (k == 0) {
        for (size_t i = 0; i < m; i++)
            for (size_t j = 0; j < n; j++) c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j];
        return 0;
    }
    int fast = !emulate && diffedit_has_avx512bf16();
    size_t kcMax = k < KC ? k : KC, kpMax = (kcMax + 1) / 2;
    size_t ncMax = n < NC ? n : NC, mcMax = m < MC ? m : MC;
    if (!reserve(&packB, &capB, kpMax * ((ncMax + NR - 1) / NR) * NR)) return -1;
    if (!reserve(&packA, &capA, kpMax * ((mcMax + MR - 1) / MR) * MR)) return -1;
    float t[MR * NR];
    for (size_t jc = 0; jc < n; jc += NC) {
        size_t nc = n - jc < NC ? n - jc : NC;
        for (size_t pc = 0; pc < k; pc += KC) {
            size_t kc = k - pc < KC ? k - pc : KC, kp = (kc + 1) / 2;
            int mode = pc > 0 ? 1 : beta == 0 ? 0 : beta == 1 ? 1 : 2;
            /* B(k, j) = b[k·brs + j·bcs]: rows of the packed block are columns j. */
            pack(b + pc * brs + jc * bcs, bcs, brs, nc, kc, NR, packB);
            for (size_t ic = 0; ic < m; ic += MC) {
                size_t mc = m - ic < MC ? m - ic : MC;
                pack(a + ic * ars + pc * acs, ars, acs, mc, kc, MR, packA);
                for (size_t jr = 0; jr < nc; jr += NR) {
                    size_t nr = nc - jr < NR ? nc - jr : NR;
                    const uint32_t *bp = packB + (jr / NR) * kp * NR;
                    for (size_t ir = 0; ir < mc; ir += MR) {
                        size_t mr = mc - ir < MR ? mc - ir : MR;
                        const uint32_t *ap = packA + (ir / MR) * kp * MR;
                        float *cp = c + (ic + ir) * ldc + jc + jr;
#if defined(__x86_64__)
                        if (fast) { tile_avx512bf16(kp, ap, bp, cp, ldc, mr, nr, mode, alpha, beta); continue; }
#endif
                        tile_scalar(kp, ap, bp, t);
                        merge(t, mr, nr, cp, ldc, mode, alpha, beta);
                    }
                }
            }
        }
    }
    return 0;
}
