/* TQ2_0 encoder, the C twin of quant/types/tq2_0.py (formats/TQ2_0.md): per super-block of 256, d = amax and
 * 2-bit trits lroundf(x / d) + 1; byte m of 32-byte group g holds values 128 g + m + 32 k in bits 2k..2k+1.
 * Bytes: 64 quant bytes, then d (fp16). The imatrix is ignored, as in llama.cpp. */
#include "common.h"

#define TQ2_0_GROUP 32
#define TQ2_0_PER_BYTE 4
#define TQ2_0_QS (QC_QK_K / TQ2_0_PER_BYTE)
#define TQ2_0_BYTES (TQ2_0_QS + 2)

static void tq2_0_block(const float *x, uint8_t *out) {
    int32_t t[QC_QK_K];
    const float d = qc_ternary_trits(x, t);
    for (int g = 0; g < QC_QK_K / (TQ2_0_GROUP * TQ2_0_PER_BYTE); g++) {
        const int32_t *tg = t + g * TQ2_0_GROUP * TQ2_0_PER_BYTE;
        for (int m = 0; m < TQ2_0_GROUP; m++) {
            unsigned q = 0;                   /* uint8_t arithmetic in ggml: wraps modulo 256 */
            for (int k = 0; k < TQ2_0_PER_BYTE; k++) q += (unsigned)(tg[m + k * TQ2_0_GROUP] & 3) << (2 * k);
            out[g * TQ2_0_GROUP + m] = (uint8_t)q;
        }
    }
    qc_put_fp16(out + TQ2_0_QS, d);
}

void qc_quantize_row_tq2_0(const float *x, void *vy, int64_t n, const float *qw) {
    (void)qw;
    uint8_t *y = (uint8_t *)vy;
    for (int64_t s = 0; s < n / QC_QK_K; s++) tq2_0_block(x + s * QC_QK_K, y + s * TQ2_0_BYTES);
}

const qc_kernel qc_kernel_tq2_0 = {qc_quantize_row_tq2_0, QC_QK_K, TQ2_0_BYTES};
