/* IQ4_NL encoder, the C twin of quant/types/iq4_nl.py (formats/IQ4_NL.md): per block of 32, the scale search of
 * qc_iq4_block_scales (weights x^2, or qw * sqrt(sigma2 + x^2) with sigma2 = 2 * mean x^2 of the block), then each
 * value takes the grid level nearest x * (1/d). Bytes: d (fp16), 16 nibble bytes (element j | element j+16 << 4). */
#include "common.h"

#define IQ4_NL_BYTES (2 + QC_BLOCK / 2)

void qc_quantize_row_iq4_nl(const float *x, void *vy, int64_t n, const float *qw) {
    uint8_t *y = (uint8_t *)vy;
    const int64_t nb = n / QC_BLOCK;
    for (int64_t b0 = 0; b0 < nb; b0 += QC_LANES) {
        const int count = nb - b0 < QC_LANES ? (int)(nb - b0) : QC_LANES;
        qc_vf xt[QC_BLOCK], wt[QC_BLOCK];
        qc_load_lanes(x + b0 * QC_BLOCK, QC_BLOCK, count, QC_BLOCK, xt);
        if (qw != NULL) {
            qc_vf sigma2 = qc_vf_set(0.0f);
            for (int j = 0; j < QC_BLOCK; j++) sigma2 += xt[j] * xt[j];
            sigma2 *= qc_vf_set(2.0f / QC_BLOCK);
            qc_load_lanes(qw + b0 * QC_BLOCK, QC_BLOCK, count, QC_BLOCK, wt);
            for (int j = 0; j < QC_BLOCK; j++) wt[j] = wt[j] * qc_vsqrt(sigma2 + xt[j] * xt[j]);
        } else {
            for (int j = 0; j < QC_BLOCK; j++) wt[j] = xt[j] * xt[j];
        }
        const qc_vf d = qc_iq4_block_scales(xt, wt, QC_BLOCK, QC_IQ4_SCALE_STEPS);
        const qc_vf id = qc_vinverse_or_zero(d);
        qc_vi L[QC_BLOCK];
        qc_vf level;
        for (int j = 0; j < QC_BLOCK; j++) L[j] = qc_vbest_index_iq4(id * xt[j], &level);
        for (int b = 0; b < count; b++) {
            uint8_t *out = y + (b0 + b) * IQ4_NL_BYTES;
            qc_put_fp16(out, d[b]);
            for (int j = 0; j < QC_BLOCK / 2; j++) out[2 + j] = (uint8_t)(L[j][b] | (L[j + QC_BLOCK / 2][b] << 4));
        }
    }
}

const qc_kernel qc_kernel_iq4_nl = {qc_quantize_row_iq4_nl, QC_BLOCK, IQ4_NL_BYTES};
