/* Q4_0 encoder, the C twin of quant/types/q4_0.py (formats/Q4_0.md).
 * Without an imatrix: d = max / -8 (max = first value of the largest magnitude), q = min(15, (int8_t)(x/d + 8.5))
 * with x/d computed as x * (1/d). With an imatrix: make_qx_quants over weights qw * sqrt(sigma2 + x^2). */
#include "common.h"

#define Q4_0_NMAX 8
#define Q4_0_QMAX 15
#define Q4_0_OFFSET 8.5f
#define Q4_0_BYTES (2 + QC_BLOCK / 2)

/* The 16 quant bytes of one block from its inverse scale. */
static inline __attribute__((always_inline)) void q4_0_quants(const float *x, float id, uint8_t *qs) {
#if defined(__AVX2__)
    const __m256 vid = _mm256_set1_ps(id), offset = _mm256_set1_ps(Q4_0_OFFSET);
    const __m256i qmax = _mm256_set1_epi32(Q4_0_QMAX), byte = _mm256_set1_epi32(0xff);
    __m256i q[4];
    for (int k = 0; k < 4; k++) {
        const __m256i t = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), vid), offset));
        q[k] = _mm256_and_si256(_mm256_min_epi32(qc_low_byte_signed(t), qmax), byte);
    }
    /* no nibble mask: ggml ORs the whole bytes */
    qc_store_low_bytes16(qs, _mm256_or_si256(q[0], _mm256_slli_epi32(q[2], 4)),
                         _mm256_or_si256(q[1], _mm256_slli_epi32(q[3], 4)));
#else
    for (int j = 0; j < QC_BLOCK / 2; j++) {
        int q0 = (int8_t)qc_trunc_i32(x[j] * id + Q4_0_OFFSET);
        int q1 = (int8_t)qc_trunc_i32(x[j + QC_BLOCK / 2] * id + Q4_0_OFFSET);
        q0 = q0 < Q4_0_QMAX ? q0 : Q4_0_QMAX;
        q1 = q1 < Q4_0_QMAX ? q1 : Q4_0_QMAX;
        qs[j] = (uint8_t)((uint8_t)q0 | ((uint8_t)q1 << 4));
    }
#endif
}

/* A group of count <= QC_LANES blocks: all scales first (one vector division), then the quants. */
static void q4_0_group(const float *x, uint8_t *y, int count) {
    const qc_vf d = qc_first_absmax_lanes(x, count) / qc_vf_set(-(float)Q4_0_NMAX);
    const qc_vf id = qc_vinverse_or_zero(d);
    qc_put_fp16_lanes(y, Q4_0_BYTES, count, d);
    for (int b = 0; b < count; b++) q4_0_quants(x + b * QC_BLOCK, id[b], y + b * Q4_0_BYTES + 2);
}

/* The imatrix path: QC_LANES blocks of the row at a time through make_qx_quants. */
static void q4_0_row_weighted(const float *x, uint8_t *y, int64_t n, const float *qw) {
    const float sigma2 = qc_row_sigma2(x, n);
    const int64_t nb = n / QC_BLOCK;
    for (int64_t b0 = 0; b0 < nb; b0 += QC_LANES) {
        const int count = nb - b0 < QC_LANES ? (int)(nb - b0) : QC_LANES;
        qc_vf xt[QC_BLOCK], wt[QC_BLOCK];
        qc_vi L[QC_BLOCK];
        qc_load_weighted_lanes(x + b0 * QC_BLOCK, qw + b0 * QC_BLOCK, sigma2, count, xt, wt);
        const qc_vf d = qc_make_qx_quants(QC_BLOCK, Q4_0_NMAX, xt, wt, L);
        qc_put_fp16_lanes(y + b0 * Q4_0_BYTES, Q4_0_BYTES, count, d);
        for (int b = 0; b < count; b++) {
            uint8_t *qs = y + (b0 + b) * Q4_0_BYTES + 2;
            for (int j = 0; j < QC_BLOCK / 2; j++) qs[j] = (uint8_t)(L[j][b] | (L[j + QC_BLOCK / 2][b] << 4));
        }
    }
}

void qc_quantize_row_q4_0(const float *x, void *vy, int64_t n, const float *qw) {
    uint8_t *y = (uint8_t *)vy;
    if (qw != NULL) {
        q4_0_row_weighted(x, y, n, qw);
        return;
    }
    const int64_t nb = n / QC_BLOCK;
    for (int64_t b0 = 0; b0 < nb; b0 += QC_LANES)
        q4_0_group(x + b0 * QC_BLOCK, y + b0 * Q4_0_BYTES, nb - b0 < QC_LANES ? (int)(nb - b0) : QC_LANES);
}

const qc_kernel qc_kernel_q4_0 = {qc_quantize_row_q4_0, QC_BLOCK, Q4_0_BYTES};
