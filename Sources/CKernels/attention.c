/* Fused attention of one (batch, head) pair, a block of query rows at a time: the scores of the
 * block against every key stay in cache (the caller keeps blocks of a few rows), the softmax runs
 * on them in place (diffedit_exp_rows), and the block's output is their product with V, scaled by
 * 1/Σ. Keys and values are packed once per pair, so that the two products run on register tiles
 * that read them with unit stride, with no per-call packing as a BLAS does and no [Lq, Lk] score
 * matrix (Dao et al. 2022 keep a running max to avoid even the block; exact softmax over a whole
 * row of scores is what diffusers computes, so the row is kept).
 *
 * The tiles (attention_tiles.h) are compiled for AVX-512, AVX2+FMA and the baseline; the caller
 * picks a level no higher than diffedit_attention_level() and passes it to every call, so tests
 * can run each level the CPU has. */
#include "ckernels.h"
#include <math.h>
#include <string.h>

/* The widest head the tiles take (their transposed rows of Q live on the stack); wider heads
 * stay on the BLAS path (Attention.fusedMaxHeadDim). */
#define AT_MAX_HEAD_DIM 256

#if defined(__x86_64__)
#define AT_VL 16
#define AT_MQ 12
#define AT_MV 6
#define AT_CV 3
#define AT_TARGET __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma")))
#define AT_NAME(x) x##_avx512
#include "attention_tiles.h"

#define AT_VL 8
#define AT_MQ 6
#define AT_MV 6
#define AT_CV 2
#define AT_TARGET __attribute__((target("avx2,fma")))
#define AT_NAME(x) x##_avx2
#include "attention_tiles.h"
#endif

#define AT_VL 4
#define AT_MQ 4
#define AT_MV 4
#define AT_CV 2
#define AT_TARGET
#define AT_NAME(x) x##_base
#include "attention_tiles.h"

int diffedit_attention_level(void) {
#if defined(__x86_64__)
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
                         && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")
                     ? 2
                 : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1
                                                                                   : 0;
    }
    return cached;
#else
    return 0;
#endif
}

static size_t vector_floats(int level) { return level >= 2 ? 16 : level == 1 ? 8 : 4; }

size_t diffedit_attention_tile_rows(int level) { return level >= 2 ? 12 : level == 1 ? 6 : 4; }

size_t diffedit_attention_keys_floats(int level, size_t lk, size_t d) {
    size_t p = 2 * vector_floats(level);
    return (lk + p - 1) / p * p * d;
}

size_t diffedit_attention_values_floats(int level, size_t lk, size_t d) {
    size_t vl = vector_floats(level);
    return lk * ((d + vl - 1) / vl * vl);
}

void diffedit_attention_pack(int level, const float *k, size_t ldk, const float *v, size_t ldv, size_t lk,
                             size_t d, float *kt, float *vp) {
    size_t vl = vector_floats(level), p = 2 * vl;
    /* Keys in panels of p: kt[(j / p)·d·p + dd·p + j % p] = K(j, dd), zero beyond lk. */
    for (size_t j0 = 0; j0 < lk; j0 += p) {
        float *panel = kt + (j0 / p) * d * p;
        size_t n = lk - j0 < p ? lk - j0 : p;
        for (size_t c = 0; c < n; c++) {
            const float *row = k + (j0 + c) * ldk;
            for (size_t dd = 0; dd < d; dd++) panel[dd * p + c] = row[dd];
        }
        for (size_t c = n; c < p; c++)
            for (size_t dd = 0; dd < d; dd++) panel[dd * p + c] = 0;
    }
    /* Values as rows of d padded with zeros to whole vectors. */
    size_t ld = (d + vl - 1) / vl * vl;
    for (size_t j = 0; j < lk; j++) {
        memcpy(vp + j * ld, v + j * ldv, d * sizeof(float));
        memset(vp + j * ld + d, 0, (ld - d) * sizeof(float));
    }
}

void diffedit_attention_scores(int level, const float *q, size_t ldq, size_t rows, const float *kt, size_t lk,
                               size_t d, float scale, float *s, size_t lds) {
    if (d > AT_MAX_HEAD_DIM) {  /* the tiles' stack holds no wider head: plain loops, same sums */
        size_t p = 2 * vector_floats(level);
        for (size_t r = 0; r < rows; r++)
            for (size_t j = 0; j < lk; j++) {
                const float *kp = kt + (j / p) * d * p + j % p;
                float acc = 0;
                for (size_t dd = 0; dd < d; dd++) acc = fmaf(q[r * ldq + dd], kp[dd * p], acc);
                s[r * lds + j] = acc * scale;
            }
        return;
    }
#if defined(__x86_64__)
    if (level >= 2) { scores_avx512(q, ldq, rows, kt, lk, d, scale, s, lds); return; }
    if (level == 1) { scores_avx2(q, ldq, rows, kt, lk, d, scale, s, lds); return; }
#endif
    scores_base(q, ldq, rows, kt, lk, d, scale, s, lds);
}

void diffedit_attention_values(int level, const float *p, size_t ldp, size_t rows, const float *vp, size_t lk,
                               size_t d, const float *inv, float *out, size_t ldo) {
#if defined(__x86_64__)
    if (level >= 2) { values_avx512(p, ldp, rows, vp, lk, d, inv, out, ldo); return; }
    if (level == 1) { values_avx2(p, ldp, rows, vp, lk, d, inv, out, ldo); return; }
#endif
    values_base(p, ldp, rows, vp, lk, d, inv, out, ldo);
}
