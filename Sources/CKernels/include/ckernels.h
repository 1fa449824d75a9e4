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
