/* bfloat16 rounding shared by the bf16 kernels (gemm_bf16.c, attention_bf16.c): one rounding,
 * round to nearest even with NaN kept a quiet NaN, in scalar and in 16-lane GNU-vector form (one
 * AVX-512 register, two AVX2 or four SSE ones, as the including function's target says). A pair
 * unit is one 32-bit word holding two bf16 values, the first in the low half: the operand
 * vdpbf16ps multiplies pairwise and sums into an f32 lane. */
#ifndef DIFFEDIT_BF16_ROUND_H
#define DIFFEDIT_BF16_ROUND_H
#include <stdint.h>
#include <string.h>

static inline uint16_t bf16_rne(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline uint32_t bf16_pair(float lo, float hi) {
    return (uint32_t)bf16_rne(lo) | ((uint32_t)bf16_rne(hi) << 16);
}

/* The float a bf16 value (the low 16 bits of `bits16`) stands for. */
static inline float bf16_value(uint32_t bits16) {
    uint32_t u = bits16 << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

typedef uint32_t bf16_vu32 __attribute__((vector_size(64), aligned(4)));
typedef int32_t bf16_vi32 __attribute__((vector_size(64), aligned(4)));
typedef uint64_t bf16_vu64 __attribute__((vector_size(64), aligned(4)));
typedef uint32_t bf16_vu32h __attribute__((vector_size(32), aligned(4)));

/* Helpers as macros (GNU statement expressions): a function taking a 64-byte vector would have
 * a different ABI in each instruction set it is compiled for. */

/* bf16_rne of 16 float bit patterns at once, lane by lane, in the low half of each lane. */
#define bf16_rne16(u_) ({                                                                     \
    bf16_vu32 x_ = (u_);                                                                      \
    bf16_vu32 r_ = (x_ + 0x7FFFu + ((x_ >> 16) & 1u)) >> 16;                                  \
    bf16_vu32 n_ = (bf16_vu32)((bf16_vi32)((x_ & 0x7FFFFFFFu) > 0x7F800000u)); /* NaN lanes */ \
    (r_ & ~n_) | (((x_ >> 16) | 0x40u) & n_);                                                 \
})

/* bf16_pair(lo[i], hi[i]) for 16 contiguous floats of each. */
#define bf16_pairs16(lo_, hi_) ({                                                             \
    bf16_vu32 a_, b_;                                                                         \
    memcpy(&a_, (lo_), sizeof a_);                                                            \
    memcpy(&b_, (hi_), sizeof b_);                                                            \
    bf16_rne16(a_) | (bf16_rne16(b_) << 16);                                                  \
})

/* The 8 units bf16_pair(x[2i], x[2i+1]) of 16 contiguous floats (adjacent pairs), as a 32-byte
 * vector: round, then join each 64-bit lane's two halves and narrow. */
#define bf16_adjacent8(x_) ({                                                                 \
    bf16_vu32 w_;                                                                             \
    memcpy(&w_, (x_), sizeof w_);                                                             \
    bf16_vu64 v_ = (bf16_vu64)bf16_rne16(w_);                                                 \
    __builtin_convertvector((v_ & 0xFFFFu) | ((v_ >> 16) & 0xFFFF0000u), bf16_vu32h);         \
})

#endif
