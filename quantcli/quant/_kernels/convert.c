/* Exact element type conversions used on every tensor: f16 -> f32 and bf16 -> f32 (widening is exact), and
 * f32 -> f16 with round-to-nearest-even (IEEE, the same result as NumPy's astype(float16)).
 * NumPy's float16 casts do not use the F16C instructions; these loops do when the compiler targets them. */
#include <string.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif
#include "kernels.h"

void qc_f16_to_f32(const void *src, float *dst, int64_t n) {
    const uint16_t *s = (const uint16_t *)src;
    int64_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
    }
#endif
    for (; i < n; i++) dst[i] = qc_fp16_to_fp32(s[i]);
}

void qc_bf16_to_f32(const void *src, float *dst, int64_t n) {
    const uint16_t *s = (const uint16_t *)src;
    uint32_t *d = (uint32_t *)dst;
    for (int64_t i = 0; i < n; i++) d[i] = (uint32_t)s[i] << 16;
}

void qc_f32_to_f16(const void *src, float *dst_as_float, int64_t n) {
    const float *s = (const float *)src;
    uint16_t *d = (uint16_t *)dst_as_float;
    int64_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
    for (; i + 8 <= n; i += 8) {
        _mm_storeu_si128((__m128i *)(d + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
#endif
    for (; i < n; i++) d[i] = qc_fp32_to_fp16(s[i]);
}
