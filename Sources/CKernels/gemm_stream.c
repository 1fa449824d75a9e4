/* C = beta·C + W·Xᵀ for a weight W with many rows and few columns of X (n up to a few hundred):
 * the products of SD's UNet at its smallest levels (a 3×3 convolution over 4×4 latents of two
 * images is 1280 × 32 × 11520), where a BLAS spends its time packing the weight: it widens the
 * checkpoint's 16-bit matrix to f32, copies it into panels and then reads the panels, three
 * passes over 4 bytes per weight against 2·n multiply–adds. Here every weight is read once, in
 * its own row-major layout and bits (f32, f16, bf16), converted in registers, and multiplied as
 * dot products along K with the n rows of Xᵀ, which are packed (n × a K chunk, small) and stay
 * in L2. A tile of MR weight rows × NR columns keeps MR·NR vector sums over K; each is reduced
 * across its lanes at the end of the chunk and added into C.
 *
 * Exact arithmetic but for the order of the sums (lanes hold every VL-th term, then the lanes
 * and the chunks are added), as any blocked GEMM reorders them. */
#include "ckernels.h"
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

enum { SK_MR = 8, SK_NR = 4 };  /* the largest tile of any level */

static size_t element_size(int bits) { return bits == 0 ? 4 : 2; }

/* Row `row` of W over the chunk [l0, l0 + kc), as floats. */
static void widen(const void *w, size_t ldw, int bits, size_t row, size_t l0, size_t kc, float *out) {
    const char *p = (const char *)w + (row * ldw + l0) * element_size(bits);
    if (bits == 1) diffedit_f16_to_f32((const uint16_t *)p, out, kc);
    else if (bits == 2) diffedit_bf16_to_f32((const uint16_t *)p, out, kc);
    else memcpy(out, p, kc * sizeof(float));
}

#if defined(__x86_64__)
#define SK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define SK_AVX2 __attribute__((target("avx2,fma")))

SK_AVX2 static inline __attribute__((always_inline)) float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* sums[r][j] = Σ_{l < kv} W(r, l)·Xt(j, l) over the vector part kv of the chunk: W's rows
 * widened in wr (f32, from L1), Xᵀ's rows xr[j] (from L2). */
#define SK_TILE(NAME, TARGET, VEC, VL, FMA, ZERO, LOAD, REDUCE, MR_, NR_)                           \
TARGET static void NAME(const float *const *wr, const float *const *xr, size_t kv,                  \
                        float sums[SK_MR][SK_NR]) {                                                 \
    VEC acc[MR_][NR_];                                                                              \
    _Pragma("clang loop unroll(full)")                                                              \
    for (int r = 0; r < MR_; r++)                                                                   \
        _Pragma("clang loop unroll(full)")                                                          \
        for (int j = 0; j < NR_; j++) acc[r][j] = ZERO();                                           \
    for (size_t l = 0; l < kv; l += VL) {                                                           \
        VEC x[NR_];                                                                                 \
        _Pragma("clang loop unroll(full)")                                                          \
        for (int j = 0; j < NR_; j++) x[j] = LOAD(xr[j] + l);                                       \
        _Pragma("clang loop unroll(full)")                                                          \
        for (int r = 0; r < MR_; r++) {                                                             \
            VEC a = LOAD(wr[r] + l);                                                                \
            _Pragma("clang loop unroll(full)")                                                      \
            for (int j = 0; j < NR_; j++) acc[r][j] = FMA(a, x[j], acc[r][j]);                      \
        }                                                                                           \
    }                                                                                               \
    _Pragma("clang loop unroll(full)")                                                              \
    for (int r = 0; r < MR_; r++)                                                                   \
        _Pragma("clang loop unroll(full)")                                                          \
        for (int j = 0; j < NR_; j++) sums[r][j] = REDUCE(acc[r][j]);                               \
}

/* AVX-512: 6 rows × 4 columns (24 sums, 4 rows of Xᵀ, one of W; measured against 8 × 3, 4 × 6
 * and 12 × 2 on one core: 118 against 101, 105 and 81 GFLOP/s at 1280 × 32 × 11520). AVX2 has
 * 16 registers: 3 × 4. */
SK_TILE(tile512, SK_AVX512, __m512, 16, _mm512_fmadd_ps, _mm512_setzero_ps, _mm512_loadu_ps,
        _mm512_reduce_add_ps, 6, 4)
SK_TILE(tile256, SK_AVX2, __m256, 8, _mm256_fmadd_ps, _mm256_setzero_ps, _mm256_loadu_ps, hsum256, 3, 4)
#endif

int diffedit_stream_level(void) {
#if defined(__x86_64__)
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        int f16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
        cached = f16c && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
                         && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
                     ? 2
                 : f16c && __builtin_cpu_supports("avx2") ? 1
                                                          : 0;
    }
    return cached;
#else
    return 0;
#endif
}

/* A chunk of K whose packed Xᵀ (n × kc floats) fits in 256 KiB, in whole vectors. */
static size_t chunk(size_t n, size_t k) {
    size_t kc = (65536 / (n ? n : 1)) / 16 * 16;
    if (kc < 16) kc = 16;
    return kc > k ? k : kc;
}

size_t diffedit_gemm_stream_scratch(size_t n, size_t k) {
    size_t kc = chunk(n, k);
    return (n + SK_MR) * kc;  /* Xᵀ's chunk, and a tile's rows of W widened */
}

void diffedit_gemm_stream(int level, size_t m, size_t n, size_t k, const void *w, size_t ldw, int bits,
                          const float *x, size_t xj, size_t xl, float beta, float *c, size_t ci, size_t cj,
                          float *scratch) {
    if (m == 0 || n == 0) return;
    /* Rows and columns of a tile at this level (the vector part runs on whole vectors of VL). */
    size_t mr = level >= 2 ? 6 : level == 1 ? 3 : 1, nr = level >= 2 ? 4 : level == 1 ? 4 : 1;
    size_t vl = level >= 2 ? 16 : level == 1 ? 8 : 1;
    size_t kcMax = chunk(n, k);
    if (k == 0) {
        for (size_t i = 0; i < m; i++)
            for (size_t j = 0; j < n; j++) c[i * ci + j * cj] = beta == 0 ? 0 : beta * c[i * ci + j * cj];
        return;
    }
    for (size_t l0 = 0; l0 < k; l0 += kcMax) {
        size_t kc = k - l0 < kcMax ? k - l0 : kcMax;
        size_t kv = level > 0 ? kc / vl * vl : 0;
        float *xt = scratch, *wbuf = scratch + n * kcMax;
        for (size_t j = 0; j < n; j++)
            for (size_t l = 0; l < kc; l++) xt[j * kc + l] = x[j * xj + (l0 + l) * xl];
        int first = l0 == 0;
        for (size_t i0 = 0; i0 < m; i0 += mr) {
            size_t rows = m - i0 < mr ? m - i0 : mr;
            /* The tile's rows of W in this chunk, widened once into L1 and read by every column
             * tile; missing rows repeat the last one. */
            const float *wr[SK_MR];
            for (size_t r = 0; r < SK_MR; r++) {
                wr[r] = wbuf + (r < rows ? r : rows - 1) * kc;
                if (r < rows) widen(w, ldw, bits, i0 + r, l0, kc, wbuf + r * kc);
            }
            for (size_t j0 = 0; j0 < n; j0 += nr) {
                size_t cols = n - j0 < nr ? n - j0 : nr;
                const float *xr[SK_NR];
                for (size_t j = 0; j < SK_NR; j++) xr[j] = xt + (j0 + (j < cols ? j : cols - 1)) * kc;
                float sums[SK_MR][SK_NR] = {{0}};
#if defined(__x86_64__)
                if (level >= 2 && kv > 0) tile512(wr, xr, kv, sums);
                else if (level == 1 && kv > 0) tile256(wr, xr, kv, sums);
#endif
                /* The tail of the chunk beyond whole vectors (all of it on the scalar path). */
                for (size_t r = 0; r < rows; r++)
                    for (size_t j = 0; j < cols; j++) {
                        float t = 0;
                        for (size_t l = kv; l < kc; l++) t += wr[r][l] * xr[j][l];
                        sums[r][j] += t;
                    }
                for (size_t r = 0; r < rows; r++)
                    for (size_t j = 0; j < cols; j++) {
                        float *d = c + (i0 + r) * ci + (j0 + j) * cj;
                        *d = first ? (beta == 0 ? sums[r][j] : beta * *d + sums[r][j]) : *d + sums[r][j];
                    }
            }
        }
    }
}
