/* Q5_1 encoder, the C twin of quant/types/q5_1.py (formats/Q5_1.md).
 * Without an imatrix: m = min, d = (max - min) / 31, q = (uint8_t)((x - min) * (1/d) + 0.5) (no clamp).
 * With an imatrix: make_qkx3_quants over weights qw * sqrt(sigma2 + x^2).
 * Bytes: d, m (fp16), the 32 fifth bits (little-endian uint32), 16 bytes of low nibbles. */
#include "common.h"

#define Q5_1_QMAX 31
#define Q5_1_BYTES (2 + 2 + 4 + QC_BLOCK / 2)

/* Quant bytes (qh, qs) of one block from its min and inverse scale. */
static inline __attribute__((always_inline)) void q5_1_quants(const float *x, float min, float id, uint8_t *qh) {
#if defined(__AVX2__)
    const __m256 vmin = _mm256_set1_ps(min), vid = _mm256_set1_ps(id), half = _mm256_set1_ps(0.5f);
    const __m256i byte = _mm256_set1_epi32(0xff), nib = _mm256_set1_epi32(0x0f);
    __m256i q[4];
    for (int k = 0; k < 4; k++) {
        const __m256 v = _mm256_loadu_ps(x + 8 * k);
        q[k] = _mm256_and_si256(_mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v, vmin), vid), half)), byte);
    }
    qc_store_bit4_32(qh, q[0], q[1], q[2], q[3]);
    qc_store_low_bytes16(qh + 4,
                         _mm256_or_si256(_mm256_and_si256(q[0], nib), _mm256_slli_epi32(_mm256_and_si256(q[2], nib), 4)),
                         _mm256_or_si256(_mm256_and_si256(q[1], nib), _mm256_slli_epi32(_mm256_and_si256(q[3], nib), 4)));
#else
    int q[QC_BLOCK];
    for (int j = 0; j < QC_BLOCK; j++) q[j] = (uint8_t)qc_trunc_i32((x[j] - min) * id + 0.5f);
    qc_pack_q5(q, qh, qh + 4);
#endif
}

/* A group of count <= QC_LANES blocks: all scales first (one vector division), then the quants. */
static void q5_1_group(const float *x, uint8_t *y, int count) {
    qc_vf lo, d;
    qc_affine_scales(x, count, (float)Q5_1_QMAX, &lo, &d);
    const qc_vf id = qc_vinverse_or_zero(d);
    qc_put_fp16_lanes(y, Q5_1_BYTES, count, d);
    qc_put_fp16_lanes(y + 2, Q5_1_BYTES, count, lo);
    for (int b = 0; b < count; b++) q5_1_quants(x + b * QC_BLOCK, lo[b], id[b], y + b * Q5_1_BYTES + 4);
}

static void q5_1_row_weighted(const float *x, uint8_t *y, int64_t n, const float *qw) {
    const float sigma2 = qc_row_sigma2(x, n);
    const int64_t nb = n / QC_BLOCK;
    for (int64_t b0 = 0; b0 < nb; b0 += QC_LANES) {
        const int count = nb - b0 < QC_LANES ? (int)(nb - b0) : QC_LANES;
        qc_vf xt[QC_BLOCK], wt[QC_BLOCK], the_min;
        qc_vi L[QC_BLOCK];
        qc_load_weighted_lanes(x + b0 * QC_BLOCK, qw + b0 * QC_BLOCK, sigma2, count, xt, wt);
        const qc_vf d = qc_make_qkx3_quants(QC_BLOCK, Q5_1_QMAX, xt, wt, L, &the_min, QC_QKX3_RMIN, QC_QKX3_RDELTA,
                                            QC_QKX3_NSTEP, 0);
        for (int b = 0; b < count; b++) {
            uint8_t *out = y + (b0 + b) * Q5_1_BYTES;
            int q[QC_BLOCK];
            for (int j = 0; j < QC_BLOCK; j++) q[j] = L[j][b];
            qc_put_fp16(out, d[b]);
            qc_put_fp16(out + 2, -the_min[b]);
            qc_pack_q5(q, out + 4, out + 8);
        }
    }
}

void qc_quantize_row_q5_1(const float *x, void *vy, int64_t n, const float *qw) {
    uint8_t *y = (uint8_t *)vy;
    if (qw != NULL) {
        q5_1_row_weighted(x, y, n, qw);
        return;
    }
    const int64_t nb = n / QC_BLOCK;
    for (int64_t b0 = 0; b0 < nb; b0 += QC_LANES)
        q5_1_group(x + b0 * QC_BLOCK, y + b0 * Q5_1_BYTES, nb - b0 < QC_LANES ? (int)(nb - b0) : QC_LANES);
}

const qc_kernel qc_kernel_q5_1 = {qc_quantize_row_q5_1, QC_BLOCK, Q5_1_BYTES};
