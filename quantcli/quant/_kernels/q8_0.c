/* Q8_0 encoder, the C twin of quant/types/q8_0.py (formats/Q8_0.md): per block of 32, d = amax / 127 as fp16,
 * then 32 int8 quants roundf(x * (1/d)). The imatrix is ignored, as in llama.cpp. */
#include "common.h"

#define Q8_0_QMAX 127.0f
#define Q8_0_BYTES (2 + QC_BLOCK)

static inline __attribute__((always_inline)) void q8_0_quants(const float *x, float id, uint8_t *qs) {
#if defined(__AVX2__)
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; k++)
        q[k] = _mm256_cvttps_epi32(qc_round_away_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), vid)));
    qc_store_low_bytes32(qs, q[0], q[1], q[2], q[3]);
#else
    for (int j = 0; j < QC_BLOCK; j++) qs[j] = (uint8_t)qc_trunc_i32(qc_roundf(x[j] * id));
#endif
}

/* A group of count <= QC_LANES blocks: all scales first (one vector division), then the quants. */
static void q8_0_group(const float *x, uint8_t *y, int count) {
    const qc_vf d = qc_running_absmax_lanes(x, count) / qc_vf_set(Q8_0_QMAX);
    const qc_vf id = qc_vinverse_or_zero(d);
    qc_put_fp16_lanes(y, Q8_0_BYTES, count, d);
    for (int b = 0; b < count; b++) q8_0_quants(x + b * QC_BLOCK, id[b], y + b * Q8_0_BYTES + 2);
}

void qc_quantize_row_q8_0(const float *x, void *vy, int64_t n, const float *qw) {
    (void)qw;
    uint8_t *y = (uint8_t *)vy;
    const int64_t nb = n / QC_BLOCK;
    for (int64_t b0 = 0; b0 < nb; b0 += QC_LANES)
        q8_0_group(x + b0 * QC_BLOCK, y + b0 * Q8_0_BYTES, nb - b0 < QC_LANES ? (int)(nb - b0) : QC_LANES);
}

const qc_kernel qc_kernel_q8_0 = {qc_quantize_row_q8_0, QC_BLOCK, Q8_0_BYTES};
