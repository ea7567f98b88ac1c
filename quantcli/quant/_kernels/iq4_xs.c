/* IQ4_XS encoder, the C twin of quant/types/iq4_xs.py (formats/IQ4_XS.md). A super-block of 256 is 8 blocks of 32,
 * one per vector lane: qc_iq4_block_scales picks a float scale per block (sigma2 from the whole super-block),
 * d = -max_scale / 32, each block's 6-bit scale is clamp(nearest_int(scale / d), -32, 31), and values take the
 * grid level nearest x / (d * ls). Bytes: d (fp16), scales_h (uint16 LE, 2 bits per block), scales_l (4 bytes,
 * 4 bits per block), 128 nibble bytes. */
#include "common.h"

#define IQ4_XS_SUBS (QC_QK_K / QC_BLOCK)
#define IQ4_XS_SCALE_BIAS 32
#define IQ4_XS_BYTES (2 + 2 + IQ4_XS_SUBS / 2 + QC_QK_K / 2)

_Static_assert(IQ4_XS_SUBS == QC_LANES, "IQ4_XS puts the 8 blocks of a super-block in the 8 lanes");

static void iq4_xs_super_block(const float *x, const float *qw, uint8_t *out) {
    qc_vf xt[QC_BLOCK], wt[QC_BLOCK];
    qc_load_lanes(x, QC_BLOCK, IQ4_XS_SUBS, QC_BLOCK, xt);
    if (qw != NULL) {
        float sigma2 = 0.0f;
        for (int j = 0; j < QC_QK_K; j++) sigma2 += x[j] * x[j];
        sigma2 *= 2.0f / QC_QK_K;
        qc_load_lanes(qw, QC_BLOCK, IQ4_XS_SUBS, QC_BLOCK, wt);
        for (int j = 0; j < QC_BLOCK; j++) wt[j] = wt[j] * qc_vsqrt(qc_vf_set(sigma2) + xt[j] * xt[j]);
    } else {
        for (int j = 0; j < QC_BLOCK; j++) wt[j] = xt[j] * xt[j];
    }
    const qc_vf scales = qc_iq4_block_scales(xt, wt, QC_BLOCK, QC_IQ4_SCALE_STEPS);
    float amax_scale = 0.0f, max_scale = 0.0f;
    for (int b = 0; b < IQ4_XS_SUBS; b++) {
        if (fabsf(scales[b]) > amax_scale) { amax_scale = fabsf(scales[b]); max_scale = scales[b]; }
    }
    const float d = -max_scale / (float)IQ4_XS_SCALE_BIAS;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const qc_vi ls = qc_vi_clamp(qc_vnearest_int(qc_vf_set(id) * scales), -IQ4_XS_SCALE_BIAS, IQ4_XS_SCALE_BIAS - 1);
    const qc_vf idl = qc_vinverse_or_zero(qc_vf_set(d) * __builtin_convertvector(ls, qc_vf));
    qc_vi L[QC_BLOCK];
    qc_vf level;
    for (int j = 0; j < QC_BLOCK; j++) L[j] = qc_vbest_index_iq4(idl * xt[j], &level);

    qc_put_fp16(out, d);
    uint16_t scales_h = 0;
    uint8_t *scales_l = out + 4, *qs = out + 4 + IQ4_XS_SUBS / 2;
    for (int b = 0; b < IQ4_XS_SUBS; b++) {
        const int stored = ls[b] + IQ4_XS_SCALE_BIAS;
        if (b % 2 == 0) scales_l[b / 2] = (uint8_t)(stored & 0xf);
        else scales_l[b / 2] |= (uint8_t)((stored & 0xf) << 4);
        scales_h |= (uint16_t)((stored >> 4) << (2 * b));
        for (int j = 0; j < QC_BLOCK / 2; j++) qs[16 * b + j] = (uint8_t)(L[j][b] | (L[j + QC_BLOCK / 2][b] << 4));
    }
    out[2] = (uint8_t)(scales_h & 0xff);
    out[3] = (uint8_t)(scales_h >> 8);
}

void qc_quantize_row_iq4_xs(const float *x, void *vy, int64_t n, const float *qw) {
    uint8_t *y = (uint8_t *)vy;
    for (int64_t s = 0; s < n / QC_QK_K; s++)
        iq4_xs_super_block(x + s * QC_QK_K, qw != NULL ? qw + s * QC_QK_K : NULL, y + s * IQ4_XS_BYTES);
}

const qc_kernel qc_kernel_iq4_xs = {qc_quantize_row_iq4_xs, QC_QK_K, IQ4_XS_BYTES};
