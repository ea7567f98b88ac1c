/* Q5_0 encoder, the C twin of quant/types/q5_0.py (formats/Q5_0.md).
 * Without an imatrix: d = max / -16 (max = first value of the largest magnitude), q = min(31, (int8_t)(x/d + 16.5))
 * with x/d computed as x * (1/d). With an imatrix: make_qx_quants over weights qw * sqrt(sigma2 + x^2).
 * Bytes: d, the 32 fifth bits (little-endian uint32), 16 bytes of low nibbles (element j | element j+16 << 4). */
#include "common.h"

#define Q5_0_NMAX 16
#define Q5_0_QMAX 31
#define Q5_0_OFFSET 16.5f
#define Q5_0_BYTES (2 + 4 + QC_BLOCK / 2)

/* The 20 quant bytes (qh, qs) of one block from its inverse scale. */
static inline __attribute__((always_inline)) void q5_0_quants(const float *x, float id, uint8_t *qh) {
#if defined(__AVX2__)
    const __m256 vid = _mm256_set1_ps(id), offset = _mm256_set1_ps(Q5_0_OFFSET);
    const __m256i qmax = _mm256_set1_epi32(Q5_0_QMAX), byte = _mm256_set1_epi32(0xff), nib = _mm256_set1_epi32(0x0f);
    __m256i q[4];
    for (int k = 0; k < 4; k++) {
        const __m256i t = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), vid), offset));
        q[k] = _mm256_and_si256(_mm256_min_epi32(qc_low_byte_signed(t), qmax), byte);
    }
    qc_store_bit4_32(qh, q[0], q[1], q[2], q[3]);
    qc_store_low_bytes16(qh + 4,
                         _mm256_or_si256(_mm256_and_si256(q[0], nib), _mm256_slli_epi32(_mm256_and_si256(q[2], nib), 4)),
                         _mm256_or_si256(_mm256_and_si256(q[1], nib), _mm256_slli_epi32(_mm256_and_si256(q[3], nib), 4)));
#else
    int q[QC_BLOCK];
    for (int j = 0; j < QC_BLOCK; j++) {
        const int t = (int8_t)qc_trunc_i32(x[j] * id + Q5_0_OFFSET);
        q[j] = (uint8_t)(t < Q5_0_QMAX ? t : Q5_0_QMAX);
    }
    qc_pack_q5(q, qh, qh + 4);
#endif
}

/* A group of count <= QC_LANES blocks: all scales first (one vector division), then the quants. */
static void q5_0_group(const float *x, uint8_t *y, int count) {
    const qc_vf d = qc_first_absmax_lanes(x, count) / qc_vf_set(-(float)Q5_0_NMAX);
    const qc_vf id = qc_vinverse_or_zero(d);
    qc_put_fp16_lanes(y, Q5_0_BYTES, count, d);
    for (int b = 0; b < count; b++) q5_0_quants(x + b * QC_BLOCK, id[b], y + b * Q5_0_BYTES + 2);
}

/* The imatrix path: QC_LANES blocks of the row at a time through make_qx_quants. */
static void q5_0_row_weighted(const float *x, uint8_t *y, int64_t n, const float *qw) {
    const float sigma2 = qc_row_sigma2(x, n);
    const int64_t nb = n / QC_BLOCK;
    for (int64_t b0 = 0; b0 < nb; b0 += QC_LANES) {
        const int count = nb - b0 < QC_LANES ? (int)(nb - b0) : QC_LANES;
        qc_vf xt[QC_BLOCK], wt[QC_BLOCK];
        qc_vi L[QC_BLOCK];
        qc_load_weighted_lanes(x + b0 * QC_BLOCK, qw + b0 * QC_BLOCK, sigma2, count, xt, wt);
        const qc_vf d = qc_make_qx_quants(QC_BLOCK, Q5_0_NMAX, xt, wt, L);
        qc_put_fp16_lanes(y + b0 * Q5_0_BYTES, Q5_0_BYTES, count, d);
        for (int b = 0; b < count; b++) {
            int q[QC_BLOCK];
            for (int j = 0; j < QC_BLOCK; j++) q[j] = L[j][b];
            qc_pack_q5(q, y + (b0 + b) * Q5_0_BYTES + 2, y + (b0 + b) * Q5_0_BYTES + 6);
        }
    }
}

void qc_quantize_row_q5_0(const float *x, void *vy, int64_t n, const float *qw) {
    uint8_t *y = (uint8_t *)vy;
    if (qw != NULL) {
        q5_0_row_weighted(x, y, n, qw);
        return;
    }
    const int64_t nb = n / QC_BLOCK;
    for (int64_t b0 = 0; b0 < nb; b0 += QC_LANES)
        q5_0_group(x + b0 * QC_BLOCK, y + b0 * Q5_0_BYTES, nb - b0 < QC_LANES ? (int)(nb - b0) : QC_LANES);
}

const qc_kernel qc_kernel_q5_0 = {qc_quantize_row_q5_0, QC_BLOCK, Q5_0_BYTES};
