/* Q5_K row quantizer, the C twin of quant/types/q5_k.py (layout: formats/Q5_K.md).
 *
 * Block (176 bytes): d, dmin (fp16), 12 bytes of 6-bit scales and mins, 32 bytes of high bits (bit 2c of
 * byte l: value 64c + l; bit 2c + 1: value 64c + 32 + l), 128 bytes of low nibbles laid out as Q4_K's. */
#include "kquant_common.h"

#define Q5_K_NMAX 31
#define Q5_K_BYTES 176

static const qc_kq_search q5_k_ref_search = {-0.5f, 0.1f, 15, 0};

void qc_quantize_row_q5_k(const float *x, void *vy, int64_t n_per_row, const float *qw) {
    uint8_t *y = (uint8_t *)vy;
    const int64_t nb = n_per_row / QC_QK_K;
    qc_kq_scale_min_block blk[QC_LANES];
    for (int64_t b0 = 0; b0 < nb; b0 += QC_LANES) {
        const int count = (int)(nb - b0 < QC_LANES ? nb - b0 : QC_LANES);
        /* Q5_K's imatrix path clamps its 6-bit levels to 63 (Q4_K's does not) */
        qc_kq_encode_scale_min_32(x + b0 * QC_QK_K, qw ? qw + b0 * QC_QK_K : NULL, count, Q5_K_NMAX,
                                  q5_k_ref_search, 1, blk);
        for (int b = 0; b < count; b++) {
            uint8_t *out = y + (b0 + b) * Q5_K_BYTES;
            qc_kq_put_fp16(out, blk[b].d);
            qc_kq_put_fp16(out + 2, blk[b].dmin);
            memcpy(out + 4, blk[b].scales, QC_KQ_SCALE_BYTES);
            uint8_t *qh = out + 4 + QC_KQ_SCALE_BYTES, *ql = qh + 32;
            const uint8_t *L = blk[b].L;
            for (int l = 0; l < 32; l++) {
                int h = 0;
                for (int c = 0; c < 4; c++) h |= ((L[64 * c + l] >> 4) << (2 * c)) | ((L[64 * c + 32 + l] >> 4) << (2 * c + 1));
                qh[l] = (uint8_t)h;
            }
            for (int c = 0; c < 4; c++)
                for (int l = 0; l < 32; l++)
                    ql[32 * c + l] = (uint8_t)((L[64 * c + l] & 0xF) | ((L[64 * c + 32 + l] & 0xF) << 4));
        }
    }
}

const qc_kernel qc_kernel_q5_k = {qc_quantize_row_q5_k, QC_QK_K, Q5_K_BYTES};
