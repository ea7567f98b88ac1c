/* Q4_K row quantizer, the C twin of quant/types/q4_k.py (layout: formats/Q4_K.md).
 *
 * Block (144 bytes): d, dmin (fp16), 12 bytes of 6-bit scales and mins, 128 bytes of 4-bit quants where
 * byte 32c + l holds value 64c + l (low nibble) and value 64c + 32 + l (high nibble). */
#include "kquant_common.h"

#define Q4_K_NMAX 15
#define Q4_K_BYTES 144

static const qc_kq_search q4_k_ref_search = {-1.0f, 0.1f, 20, 0};

void qc_quantize_row_q4_k(const float *x, void *vy, int64_t n_per_row, const float *qw) {
    uint8_t *y = (uint8_t *)vy;
    const int64_t nb = n_per_row / QC_QK_K;
    qc_kq_scale_min_block blk[QC_LANES];
    for (int64_t b0 = 0; b0 < nb; b0 += QC_LANES) {
        const int count = (int)(nb - b0 < QC_LANES ? nb - b0 : QC_LANES);
        qc_kq_encode_scale_min_32(x + b0 * QC_QK_K, qw ? qw + b0 * QC_QK_K : NULL, count, Q4_K_NMAX,
                                  q4_k_ref_search, 0, blk);
        for (int b = 0; b < count; b++) {
            uint8_t *out = y + (b0 + b) * Q4_K_BYTES;
            qc_kq_put_fp16(out, blk[b].d);
            qc_kq_put_fp16(out + 2, blk[b].dmin);
            memcpy(out + 4, blk[b].scales, QC_KQ_SCALE_BYTES);
            uint8_t *qs = out + 4 + QC_KQ_SCALE_BYTES;
            for (int c = 0; c < 4; c++)
                for (int l = 0; l < 32; l++)
                    qs[32 * c + l] = (uint8_t)(blk[b].L[64 * c + l] | (blk[b].L[64 * c + 32 + l] << 4));
        }
    }
}

const qc_kernel qc_kernel_q4_k = {qc_quantize_row_q4_k, QC_QK_K, Q4_K_BYTES};
