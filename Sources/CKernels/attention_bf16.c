/* Fused attention at the opt-in bf16 precision (KernelPolicy.precision = .bf16): the f32 form's
 * blocks (attention.c) with both products on vdpbf16ps. It rounds what the bf16 path through
 * diffedit_gemm_bf16 rounds — Q, K, the unnormalised probabilities e^{s − max} and V — and
 * accumulates in f32; the softmax itself stays f32 (diffedit_exp_rows, by the caller).
 *
 * Layouts, in pair units (bf16_round.h; two values along the summed index per 32-bit word):
 *   keys    kt[(j / 32)·dp·32 + p·32 + j % 32] = pair(K(j, 2p), K(j, 2p + 1)), dp = ⌈d/2⌉
 *   values  vp[q·ldv + c] = pair(V(2q, c), V(2q + 1, c)), ldv = d rounded up to 16
 *   P       row r's units overwrite the first half of its own f32 row (in place, walking forward)
 * Tiles: scores 12 query rows × 32 keys (24 accumulators), values 6 rows × 48 columns, summing
 * runs of 128 key pairs before adding them (as the f32 tiles do, for a blocked rounding).
 * Without AVX512-BF16, or with emulate set, the same arithmetic runs as scalar loops: the tests'
 * reference everywhere, not a compute path. */
#include "ckernels.h"
#include "bf16_round.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

enum { KP = 32, MQ = 12, MV = 6, CV = 3, PAIR_RUN = 128, MAX_PAIRS = 128 };

size_t diffedit_attention_bf16_keys_units(size_t lk, size_t d) { return (lk + KP - 1) / KP * KP * ((d + 1) / 2); }

size_t diffedit_attention_bf16_values_units(size_t lk, size_t d) { return (lk + 1) / 2 * ((d + 15) / 16 * 16); }

/* out[p] = pair(x[2p], x[2p + 1]) for p < ⌈n/2⌉, a missing last value 0. out may be x itself:
 * each chunk is read whole before its units are written, at or before where it was read. */
#define BF16_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
BF16_CLONES
static void adjacent_pairs(const float *x, size_t n, uint32_t *out) {
    size_t p = 0;
    for (; 2 * p + 32 <= n; p += 16) {
        bf16_vu32h u0 = bf16_adjacent8(x + 2 * p), u1 = bf16_adjacent8(x + 2 * p + 16);
        memcpy(out + p, &u0, sizeof u0);
        memcpy(out + p + 8, &u1, sizeof u1);
    }
    for (; 2 * p + 1 < n; p++) out[p] = bf16_pair(x[2 * p], x[2 * p + 1]);
    if (2 * p < n) out[p] = bf16_pair(x[2 * p], 0.0f);
}

BF16_CLONES
int diffedit_attention_bf16_pack(const float *k, size_t ldk, const float *v, size_t ldv, size_t lk, size_t d,
                                 uint32_t *kt, uint32_t *vp) {
    size_t dp = (d + 1) / 2;
    if (dp > MAX_PAIRS) return -1;
    uint32_t row[MAX_PAIRS];
    for (size_t j0 = 0; j0 < lk; j0 += KP) {
        uint32_t *panel = kt + (j0 / KP) * dp * KP;
        size_t n = lk - j0 < KP ? lk - j0 : KP;
        for (size_t c = 0; c < KP; c++) {
            if (c < n) adjacent_pairs(k + (j0 + c) * ldk, d, row);
            for (size_t p = 0; p < dp; p++) panel[p * KP + c] = c < n ? row[p] : 0;
        }
    }
    size_t ld = (d + 15) / 16 * 16;
    static const float zeros[16];
    for (size_t q = 0; 2 * q < lk; q++) {
        const float *v0 = v + 2 * q * ldv, *v1 = 2 * q + 1 < lk ? v0 + ldv : NULL;
        uint32_t *o = vp + q * ld;
        size_t c = 0;
        for (; c + 16 <= d; c += 16) {
            bf16_vu32 u = bf16_pairs16(v0 + c, v1 ? v1 + c : zeros);
            memcpy(o + c, &u, sizeof u);
        }
        for (; c < d; c++) o[c] = bf16_pair(v0[c], v1 ? v1[c] : 0.0f);
        for (; c < ld; c++) o[c] = 0;
    }
    return 0;
}

/* Scalar forms: the same roundings, products of rounded values summed in f32. */
static void scores_scalar(const uint32_t *qt, size_t rows, const uint32_t *panel, size_t dp, float scale,
                          float *s, size_t lds, size_t n) {
    for (size_t r = 0; r < rows; r++)
        for (size_t j = 0; j < n; j++) {
            float acc = 0;
            for (size_t p = 0; p < dp; p++) {
                uint32_t a = qt[p * MQ + r], b = panel[p * KP + j];
                acc += bf16_value(a & 0xFFFFu) * bf16_value(b & 0xFFFFu) + bf16_value(a >> 16) * bf16_value(b >> 16);
            }
            s[r * lds + j] = acc * scale;
        }
}

static void values_scalar(const uint32_t *pp, size_t ldp, size_t rows, const uint32_t *vp, size_t ldv,
                          size_t pairs, size_t d, const float *inv, float *out, size_t ldo) {
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < d; c++) {
            float total = 0;
            for (size_t q0 = 0; q0 < pairs; q0 += PAIR_RUN) {
                float acc = 0;
                for (size_t q = q0; q < pairs && q < q0 + PAIR_RUN; q++) {
                    uint32_t a = pp[r * ldp + q], b = vp[q * ldv + c];
                    acc += bf16_value(a & 0xFFFFu) * bf16_value(b & 0xFFFFu) + bf16_value(a >> 16) * bf16_value(b >> 16);
                }
                total += acc;
            }
            out[r * ldo + c] = total * inv[r];
        }
}

#if defined(__x86_64__)
#define BF_TARGET __attribute__((target("avx512f,avx512bf16,avx512vl,avx512bw")))

BF_TARGET static inline __attribute__((always_inline)) void
score_tile(const uint32_t *qt, size_t rows, const uint32_t *panel, size_t dp, float scale, float *s, size_t lds,
           size_t n) {
    __m512 acc[MQ][2];
#pragma clang loop unroll(full)
    for (int r = 0; r < MQ; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (size_t p = 0; p < dp; p++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512((const void *)(panel + p * KP));
        __m512bh b1 = (__m512bh)_mm512_loadu_si512((const void *)(panel + p * KP + 16));
#pragma clang loop unroll(full)
        for (int r = 0; r < MQ; r++) {
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)qt[p * MQ + r]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
        }
    }
    __m512 vs = _mm512_set1_ps(scale);
#pragma clang loop unroll(full)
    for (int r = 0; r < MQ; r++) {
        if ((size_t)r >= rows) break;
        float *o = s + r * lds;
        __m512 x0 = _mm512_mul_ps(acc[r][0], vs), x1 = _mm512_mul_ps(acc[r][1], vs);
        if (n == KP) {
            _mm512_storeu_ps(o, x0);
            _mm512_storeu_ps(o + 16, x1);
        } else {
            __mmask16 m0 = n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1);
            __mmask16 m1 = n <= 16 ? 0 : (__mmask16)((1u << (n - 16)) - 1);
            _mm512_mask_storeu_ps(o, m0, x0);
            _mm512_mask_storeu_ps(o + 16, m1, x1);
        }
    }
}

#define VALUE_TILE(NV)                                                                                   \
BF_TARGET static inline __attribute__((always_inline)) void                                              \
value_tile_##NV(const uint32_t *pp, size_t ldp, size_t rows, const uint32_t *vp, size_t ldv, size_t pairs, \
                size_t c0, size_t d, const float *inv, float *out, size_t ldo) {                         \
    const uint32_t *pr[MV];                                                                              \
    _Pragma("clang loop unroll(full)")                                                                   \
    for (int r = 0; r < MV; r++) pr[r] = pp + ((size_t)r < rows ? (size_t)r : rows - 1) * ldp;           \
    __m512 total[MV][NV];                                                                                \
    _Pragma("clang loop unroll(full)")                                                                   \
    for (int r = 0; r < MV; r++)                                                                         \
        _Pragma("clang loop unroll(full)")                                                               \
        for (int c = 0; c < NV; c++) total[r][c] = _mm512_setzero_ps();                                  \
    for (size_t q0 = 0; q0 < pairs; q0 += PAIR_RUN) {                                                    \
        size_t q1 = pairs - q0 < PAIR_RUN ? pairs : q0 + PAIR_RUN;                                       \
        __m512 acc[MV][NV];                                                                              \
        _Pragma("clang loop unroll(full)")                                                               \
        for (int r = 0; r < MV; r++)                                                                     \
            _Pragma("clang loop unroll(full)")                                                           \
            for (int c = 0; c < NV; c++) acc[r][c] = _mm512_setzero_ps();                                \
        const uint32_t *col = vp + q0 * ldv + c0;                                                        \
        for (size_t q = q0; q < q1; q++, col += ldv) {                                                   \
            __m512bh b[NV];                                                                              \
            _Pragma("clang loop unroll(full)")                                                           \
            for (int c = 0; c < NV; c++) b[c] = (__m512bh)_mm512_loadu_si512((const void *)(col + 16 * c)); \
            _Pragma("clang loop unroll(full)")                                                           \
            for (int r = 0; r < MV; r++) {                                                               \
                __m512bh a = (__m512bh)_mm512_set1_epi32((int)pr[r][q]);                                 \
                _Pragma("clang loop unroll(full)")                                                       \
                for (int c = 0; c < NV; c++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], a, b[c]);           \
            }                                                                                            \
        }                                                                                                \
        _Pragma("clang loop unroll(full)")                                                               \
        for (int r = 0; r < MV; r++)                                                                     \
            _Pragma("clang loop unroll(full)")                                                           \
            for (int c = 0; c < NV; c++) total[r][c] = _mm512_add_ps(total[r][c], acc[r][c]);            \
    }                                                                                                    \
    size_t width = d - c0 < (size_t)(16 * NV) ? d - c0 : (size_t)(16 * NV);                              \
    _Pragma("clang loop unroll(full)")                                                                   \
    for (int r = 0; r < MV; r++) {                                                                       \
        if ((size_t)r >= rows) break;                                                                    \
        __m512 vi = _mm512_set1_ps(inv[r]);                                                              \
        float *o = out + r * ldo + c0;                                                                   \
        _Pragma("clang loop unroll(full)")                                                               \
        for (int c = 0; c < NV; c++) {                                                                   \
            size_t left = width > 16 * (size_t)c ? width - 16 * (size_t)c : 0;                           \
            __mmask16 m = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);                           \
            _mm512_mask_storeu_ps(o + 16 * c, m, _mm512_mul_ps(total[r][c], vi));                        \
        }                                                                                                \
    }                                                                                                    \
}
VALUE_TILE(1)
VALUE_TILE(2)
VALUE_TILE(3)
#undef VALUE_TILE

BF_TARGET static void values_fast(const uint32_t *pp, size_t ldp, size_t rows, const uint32_t *vp, size_t ldv,
                                  size_t pairs, size_t d, const float *inv, float *out, size_t ldo) {
    for (size_t i = 0; i < rows; i += MV) {
        size_t mr = rows - i < MV ? rows - i : MV;
        for (size_t c0 = 0; c0 < d; c0 += CV * 16) {
            size_t vectors = (d - c0 + 15) / 16;
            const uint32_t *pi = pp + i * ldp;
            float *oi = out + i * ldo;
            if (vectors >= 3) value_tile_3(pi, ldp, mr, vp, ldv, pairs, c0, d, inv + i, oi, ldo);
            else if (vectors == 2) value_tile_2(pi, ldp, mr, vp, ldv, pairs, c0, d, inv + i, oi, ldo);
            else value_tile_1(pi, ldp, mr, vp, ldv, pairs, c0, d, inv + i, oi, ldo);
        }
    }
}

BF_TARGET static void scores_fast(const uint32_t *qt, size_t mr, const uint32_t *kt, size_t lk, size_t dp,
                                  float scale, float *s, size_t lds) {
    for (size_t j = 0; j < lk; j += KP)
        score_tile(qt, mr, kt + (j / KP) * dp * KP, dp, scale, s + j, lds, lk - j < KP ? lk - j : KP);
}
#endif

static int use_fast(int emulate) { return !emulate && diffedit_has_avx512bf16(); }

int diffedit_attention_bf16_scores(const float *q, size_t ldq, size_t rows, const uint32_t *kt, size_t lk, size_t d,
                                   float scale, float *s, size_t lds, int emulate) {
    size_t dp = (d + 1) / 2;
    if (dp > MAX_PAIRS) return -1;
    int fast = use_fast(emulate);
    /* Per tile of rows, its Q as pair units transposed onto the stack (qt[p·MQ + r]; missing rows
     * repeat the last), so that the broadcasts come from one pointer. */
    uint32_t qt[MAX_PAIRS * MQ], row[MAX_PAIRS];
    for (size_t i = 0; i < rows; i += MQ) {
        size_t mr = rows - i < MQ ? rows - i : MQ;
        for (size_t r = 0; r < MQ; r++) {
            adjacent_pairs(q + (i + (r < mr ? r : mr - 1)) * ldq, d, row);
            for (size_t p = 0; p < dp; p++) qt[p * MQ + r] = row[p];
        }
#if defined(__x86_64__)
        if (fast) { scores_fast(qt, mr, kt, lk, dp, scale, s + i * lds, lds); continue; }
#endif
        for (size_t j = 0; j < lk; j += KP)
            scores_scalar(qt, mr, kt + (j / KP) * dp * KP, dp, scale, s + i * lds + j, lds, lk - j < KP ? lk - j : KP);
    }
    return 0;
}

void diffedit_attention_bf16_values(float *p, size_t ldp, size_t rows, const uint32_t *vp, size_t lk, size_t d,
                                    const float *inv, float *out, size_t ldo, int emulate) {
    uint32_t *pp = (uint32_t *)(void *)p;
    for (size_t r = 0; r < rows; r++) adjacent_pairs(p + r * ldp, lk, pp + r * ldp);
    size_t pairs = (lk + 1) / 2, ldv = (d + 15) / 16 * 16;
#if defined(__x86_64__)
    if (use_fast(emulate)) { values_fast(pp, ldp, rows, vp, ldv, pairs, d, inv, out, ldo); return; }
#endif
    values_scalar(pp, ldp, rows, vp, ldv, pairs, d, inv, out, ldo);
}
