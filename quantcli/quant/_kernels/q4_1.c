/* Q4_1 encoder, the C twin of quant/types/q4_1.py (formats/Q4_1.md).
 * Without an imatrix: m = min, d = (max - min) / 15, q = min(15, (int8_t)((x - min) * (1/d) + 0.5)).
 * With an imatrix: make_qkx3_quants over weights qw * sqrt(sigma2 + x^2). Bytes: d, m (fp16), 16 nibble bytes. */
#include "common.h"

#define Q4_1_QMAX 15
#define Q4_1_BYTES (2 + 2 + QC_BLOCK / 2)

/* Quants of one block from its min and inverse scale. */
static inline __attribute__((always_inline)) void q4_1_quants(const float *x, float min, float id, uint8_t *qs) {
#if defined(__AVX2__)
    const __m256 vmin = _mm256_set1_ps(min), vid = _mm256_set1_ps(id), half = _mm256_set1_ps(0.5f);
    const __m256i qmax = _mm256_set1_epi32(Q4_1_QMAX), byte = _mm256_set1_epi32(0xff);
    __m256i q[4];
    for (int k = 0; k < 4; k++) {
        const __m256 v = _mm256_loadu_ps(x + 8 * k);
        const __m256i t = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v, vmin), vid), half));
        q[k] = _mm256_and_si256(_mm256_min_epi32(qc_low_byte_signed(t), qmax), byte);
    }
    qc_store_low_bytes16(qs, _mm256_or_si256(q[0], _mm256_slli_epi32(q[2], 4)),
                         _mm256_or_si256(q[1], _mm256_slli_epi32(q[3], 4)));
#else
    for (int j = 0; j < QC_BLOCK / 2; j++) {
        int q0 = (int8_t)qc_trunc_i32((x[j] - min) * id + 0.5f);
        int q1 = (int8_t)qc_trunc_i32((x[j + QC_BLOCK / 2] - min) * id + 0.5f);
        q0 = q0 < Q4_1_QMAX ? q0 : Q4_1_QMAX;
        q1 = q1 < Q4_1_QMAX ? q1 : Q4_1_QMAX;
        qs[j] = (uint8_t)((uint8_t)q0 | ((uint8_t)q1 << 4));
    }
#endif
}

/* A group of count <= QC_LANES blocks: all scales first (one vector division), then the quants. */
static void q4_1_group(const float *x, uint8_t *y, int count) {
    qc_vf lo, d;
    qc_affine_scales(x, count, (float)Q4_1_QMAX, &lo, &d);
    const qc_vf id = qc_vinverse_or_zero(d);
    qc_put_fp16_lanes(y, Q4_1_BYTES, count, d);
    qc_put_fp16_lanes(y + 2, Q4_1_BYTES, count, lo);
    for (int b = 0; b < count; b++) q4_1_quants(x + b * QC_BLOCK, lo[b], id[b], y + b * Q4_1_BYTES + 4);
}

static void q4_1_row_weighted(const float *x, uint8_t *y, int64_t n, const float *qw) {
    const float sigma2 = qc_row_sigma2(x, n);
    const int64_t nb = n / QC_BLOCK;
    for (int64_t b0 = 0; b0 < nb; b0 += QC_LANES) {
        const int count = nb - b0 < QC_LANES ? (int)(nb - b0) : QC_LANES;
        qc_vf xt[QC_BLOCK], wt[QC_BLOCK], the_min;
        qc_vi L[QC_BLOCK];
        qc_load_weighted_lanes(x + b0 * QC_BLOCK, qw + b0 * QC_BLOCK, sigma2, count, xt, wt);
        const qc_vf d = qc_make_qkx3_quants(QC_BLOCK, Q4_1_QMAX, xt, wt, L, &the_min, QC_QKX3_RMIN, QC_QKX3_RDELTA,
                                            QC_QKX3_NSTEP, 0);
        for (int b = 0; b < count; b++) {
            uint8_t *out = y + (b0 + b) * Q4_1_BYTES;
            qc_put_fp16(out, d[b]);
            qc_put_fp16(out + 2, -the_min[b]);
            for (int j = 0; j < QC_BLOCK / 2; j++) out[4 + j] = (uint8_t)(L[j][b] | (L[j + QC_BLOCK / 2][b] << 4));
        }
    }
}

void qc_quantize_row_q4_1(const float *x, void *vy, int64_t n, const float *qw) {
    uint8_t *y = (uint8_t *)vy;
    if (qw != NULL) {
        q4_1_row_weighted(x, y, n, qw);
        return;
    }
    const int64_t nb = n / QC_BLOCK;
    for (int64_t b0 = 0; b0 < nb; b0 += QC_LANES)
        q4_1_group(x + b0 * QC_BLOCK, y + b0 * Q4_1_BYTES, nb - b0 < QC_LANES ? (int)(nb - b0) : QC_LANES);
}

const qc_kernel qc_kernel_q4_1 = {qc_quantize_row_q4_1, QC_BLOCK, Q4_1_BYTES};
