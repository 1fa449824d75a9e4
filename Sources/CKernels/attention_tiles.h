/* The register tiles of the fused attention (attention.c), written once and included once per
 * instruction set with:
 *   AT_VL      floats per vector
 *   AT_MQ      query rows of a score tile (its accumulators: AT_MQ × 2 vectors)
 *   AT_MV      query rows of an output tile (AT_MV × AT_CV vectors)
 *   AT_CV      vectors of output columns per tile
 *   AT_TARGET  the function attribute that selects the instruction set
 *   AT_NAME(x) x with the set's suffix
 * (all undefined again at the end, for the next inclusion)
 * The accumulators are local arrays of constant size, indexed by fully unrolled loops, so that
 * the compiler keeps them in registers; the sums run in the order of one FMA chain per output,
 * as a BLAS micro-kernel does. */

/* Keys summed in registers before a run is added to the tile's total (see the value tile). */
#ifndef AT_KEYS
#define AT_KEYS 256
#endif

typedef float AT_NAME(vec) __attribute__((vector_size(AT_VL * 4), aligned(4)));

/* x in every lane, as one broadcast load (`(V){0} + x` would add 0 first: not x for −0). */
#undef AT_SPLAT
#if AT_VL == 16
#define AT_SPLAT(x) ({ float s_ = (x); (V){s_, s_, s_, s_, s_, s_, s_, s_, s_, s_, s_, s_, s_, s_, s_, s_}; })
#elif AT_VL == 8
#define AT_SPLAT(x) ({ float s_ = (x); (V){s_, s_, s_, s_, s_, s_, s_, s_}; })
#else
#define AT_SPLAT(x) ({ float s_ = (x); (V){s_, s_, s_, s_}; })
#endif

/* s[r·lds + j] = scale · Σ_dd q[r·ldq + dd] · K(j, dd) for the tile's rows r < rows (at most
 * AT_MQ) and the panel's keys j < n (at most 2·AT_VL); rows beyond `rows` repeat the last one
 * and are not stored. */
AT_TARGET static inline __attribute__((always_inline)) void
AT_NAME(score_tile)(const float *qt, size_t rows, const float *panel, size_t d, float scale,
                    float *s, size_t lds, size_t n) {
    typedef AT_NAME(vec) V;
    V acc[AT_MQ][2];
#pragma clang loop unroll(full)
    for (int r = 0; r < AT_MQ; r++) acc[r][0] = acc[r][1] = (V){0};
    for (size_t dd = 0; dd < d; dd++) {
        V b0, b1;
        memcpy(&b0, panel + dd * 2 * AT_VL, sizeof b0);
        memcpy(&b1, panel + dd * 2 * AT_VL + AT_VL, sizeof b1);
#pragma clang loop unroll(full)
        for (int r = 0; r < AT_MQ; r++) {
            V a = AT_SPLAT(qt[dd * AT_MQ + r]);
            acc[r][0] += a * b0;
            acc[r][1] += a * b1;
        }
    }
#pragma clang loop unroll(full)
    for (int r = 0; r < AT_MQ; r++) {
        if ((size_t)r >= rows) break;
        V x0 = acc[r][0] * scale, x1 = acc[r][1] * scale;
        float *out = s + r * lds;
        if (n == 2 * AT_VL) {
            memcpy(out, &x0, sizeof x0);
            memcpy(out + AT_VL, &x1, sizeof x1);
        } else {
            for (size_t j = 0; j < n; j++) out[j] = j < AT_VL ? x0[j] : x1[j - AT_VL];
        }
    }
}

AT_TARGET static void AT_NAME(scores)(const float *q, size_t ldq, size_t rows, const float *kt, size_t lk,
                                      size_t d, float scale, float *s, size_t lds) {
    /* Per tile of rows, its Q transposed onto the stack (qt[dd·MQ + r]; missing rows repeat the
     * last), so that the broadcasts come from one pointer; then every panel of keys. */
    const size_t P = 2 * AT_VL;
    float qt[AT_MAX_HEAD_DIM * AT_MQ];
    for (size_t i = 0; i < rows; i += AT_MQ) {
        size_t mr = rows - i < AT_MQ ? rows - i : AT_MQ;
        for (size_t r = 0; r < AT_MQ; r++) {
            const float *row = q + (i + (r < mr ? r : mr - 1)) * ldq;
            for (size_t dd = 0; dd < d; dd++) qt[dd * AT_MQ + r] = row[dd];
        }
        for (size_t j = 0; j < lk; j += P)
            AT_NAME(score_tile)(qt, mr, kt + (j / P) * d * P, d, scale, s + i * lds + j, lds, lk - j < P ? lk - j : P);
    }
}

/* out[r·ldo + c0 + c] = inv[r] · Σ_j p[r·ldp + j] · Vp(j, c0 + c) for rows r < rows (at most
 * AT_MV), CV vectors of columns from c0, stored for columns below d. */
#define AT_VALUE_TILE(CV)                                                                             \
AT_TARGET static inline __attribute__((always_inline)) void                                           \
AT_NAME(value_tile_##CV)(const float *p, size_t ldp, size_t rows, const float *vp, size_t ldvp,       \
                         size_t lk, size_t c0, size_t d, const float *inv, float *out, size_t ldo) {  \
    typedef AT_NAME(vec) V;                                                                           \
    const float *pr[AT_MV];                                                                           \
    _Pragma("clang loop unroll(full)")                                                                \
    for (int r = 0; r < AT_MV; r++) pr[r] = p + ((size_t)r < rows ? (size_t)r : rows - 1) * ldp;      \
    /* Sums over runs of AT_KEYS keys in registers, added run by run into `total`: a long row of      \
     * keys (4096 at SD's 64² latents) then rounds like a blocked BLAS, not as one long chain. */     \
    V total[AT_MV][CV];                                                                               \
    _Pragma("clang loop unroll(full)")                                                                \
    for (int r = 0; r < AT_MV; r++)                                                                   \
        _Pragma("clang loop unroll(full)")                                                            \
        for (int c = 0; c < CV; c++) total[r][c] = (V){0};                                            \
    for (size_t j0 = 0; j0 < lk; j0 += AT_KEYS) {                                                     \
        size_t j1 = lk - j0 < AT_KEYS ? lk : j0 + AT_KEYS;                                            \
        V acc[AT_MV][CV];                                                                             \
        _Pragma("clang loop unroll(full)")                                                            \
        for (int r = 0; r < AT_MV; r++)                                                               \
            _Pragma("clang loop unroll(full)")                                                        \
            for (int c = 0; c < CV; c++) acc[r][c] = (V){0};                                          \
        const float *col = vp + j0 * ldvp + c0;                                                       \
        for (size_t j = j0; j < j1; j++, col += ldvp) {                                               \
            V b[CV];                                                                                  \
            _Pragma("clang loop unroll(full)")                                                        \
            for (int c = 0; c < CV; c++) memcpy(&b[c], col + c * AT_VL, sizeof b[c]);                 \
            _Pragma("clang loop unroll(full)")                                                        \
            for (int r = 0; r < AT_MV; r++) {                                                         \
                V a = AT_SPLAT(pr[r][j]);                                                             \
                _Pragma("clang loop unroll(full)")                                                    \
                for (int c = 0; c < CV; c++) acc[r][c] += a * b[c];                                   \
            }                                                                                         \
        }                                                                                             \
        _Pragma("clang loop unroll(full)")                                                            \
        for (int r = 0; r < AT_MV; r++)                                                               \
            _Pragma("clang loop unroll(full)")                                                        \
            for (int c = 0; c < CV; c++) total[r][c] += acc[r][c];                                    \
    }                                                                                                 \
    size_t width = d - c0 < (size_t)(CV * AT_VL) ? d - c0 : (size_t)(CV * AT_VL);                     \
    _Pragma("clang loop unroll(full)")                                                                \
    for (int r = 0; r < AT_MV; r++) {                                                                 \
        if ((size_t)r >= rows) break;                                                                 \
        float *o = out + r * ldo + c0;                                                                \
        float t[CV * AT_VL];                                                                          \
        _Pragma("clang loop unroll(full)")                                                            \
        for (int c = 0; c < CV; c++) {                                                                \
            V x = total[r][c] * inv[r];                                                               \
            memcpy(t + c * AT_VL, &x, sizeof x);                                                      \
        }                                                                                             \
        memcpy(o, t, width * sizeof(float));                                                          \
    }                                                                                                 \
}

AT_VALUE_TILE(1)
AT_VALUE_TILE(2)
AT_VALUE_TILE(3)
#undef AT_VALUE_TILE

AT_TARGET static void AT_NAME(values)(const float *p, size_t ldp, size_t rows, const float *vp, size_t lk,
                                      size_t d, const float *inv, float *out, size_t ldo) {
    size_t ldvp = (d + AT_VL - 1) / AT_VL * AT_VL;
    for (size_t i = 0; i < rows; i += AT_MV) {
        size_t mr = rows - i < AT_MV ? rows - i : AT_MV;
        for (size_t c0 = 0; c0 < d; c0 += AT_CV * AT_VL) {
            size_t vectors = (d - c0 + AT_VL - 1) / AT_VL;
            const float *pi = p + i * ldp;
            float *oi = out + i * ldo;
            if (vectors >= 3 && AT_CV >= 3)
                AT_NAME(value_tile_3)(pi, ldp, mr, vp, ldvp, lk, c0, d, inv + i, oi, ldo);
            else if (vectors >= 2)
                AT_NAME(value_tile_2)(pi, ldp, mr, vp, ldvp, lk, c0, d, inv + i, oi, ldo);
            else
                AT_NAME(value_tile_1)(pi, ldp, mr, vp, ldvp, lk, c0, d, inv + i, oi, ldo);
        }
    }
}

#undef AT_VL
#undef AT_MQ
#undef AT_MV
#undef AT_CV
#undef AT_TARGET
#undef AT_NAME
