/* Q6_K row quantizer, the C twin of quant/types/q6_k.py (layout: formats/Q6_K.md).
 *
 * Block (210 bytes): ql (128 bytes of low nibbles), qh (64 bytes of 2-bit high parts), 16 int8 scales, d.
 * Each super-block is two groups of 8 sub-blocks of 16, one sub-block per lane of the search. */
#include "kquant_common.h"

#define Q6_K_NMAX 32
#define Q6_K_SCALE_LEVELS 128.0f
#define Q6_K_SCALE_CAP 127
#define Q6_K_BYTES 210

static void q6_k_block(const float *x, const float *qw, uint8_t *out) {
    qc_vf xt[2][16];
    qc_vi L[2][16];
    float scales[16];
    for (int g = 0; g < 2; g++) {
        qc_vf wt[16];
        qc_load_lanes(x + 128 * g, 16, QC_LANES, 16, xt[g]);
        if (qw) qc_load_lanes(qw + 128 * g, 16, QC_LANES, 16, wt);
        else for (int i = 0; i < 16; i++) wt[i] = xt[g][i] * xt[g][i];
        /* the imatrix path passes the raw importance weights (no sigma2 term) */
        const qc_vf s = qc_make_qx_quants(16, Q6_K_NMAX, xt[g], wt, L[g]);
        for (int k = 0; k < QC_LANES; k++) scales[8 * g + k] = s[k];
    }
    float max_scale = 0.0f, max_abs_scale = 0.0f;
    for (int j = 0; j < 16; j++) {
        const float a = fabsf(scales[j]);
        if (a > max_abs_scale) {
            max_abs_scale = a;
            max_scale = scales[j];
        }
    }
    if (max_abs_scale < QC_GROUP_MAX_EPS) {   /* ggml writes an all-zero block */
        memset(out, 0, Q6_K_BYTES);
        return;
    }
    const float iscale = -Q6_K_SCALE_LEVELS / max_scale;
    const uint16_t d16 = qc_fp16(1.0f / iscale);
    const float d = qc_fp16_to_fp32(d16);
    int8_t sc[16];
    for (int j = 0; j < 16; j++) {
        const int q = qc_nearest_int(iscale * scales[j]);
        sc[j] = (int8_t)(q < Q6_K_SCALE_CAP ? q : Q6_K_SCALE_CAP);
    }
    uint8_t Lv[QC_QK_K];
    for (int g = 0; g < 2; g++) {
        qc_vf dv;
        for (int k = 0; k < QC_LANES; k++) dv[k] = d * (float)sc[8 * g + k];
        const qc_vi keep = dv == qc_vf_set(0.0f);   /* a zero scale keeps the search's levels */
        for (int i = 0; i < 16; i++) {
            const qc_vi q = qc_vi_clamp(qc_vnearest_int(xt[g][i] / dv), -Q6_K_NMAX, Q6_K_NMAX - 1) + Q6_K_NMAX;
            L[g][i] = qc_vi_sel(keep, L[g][i], q);
        }
        qc_kq_store_lanes(L[g], 16, QC_LANES, Lv + 128 * g);
    }
    uint8_t *ql = out, *qh = out + 128;
    for (int h = 0; h < 2; h++) {
        const uint8_t *src = Lv + 128 * h;
        for (int l = 0; l < 32; l++) {
            ql[64 * h + l] = (uint8_t)((src[l] & 0xF) | ((src[l + 64] & 0xF) << 4));
            ql[64 * h + 32 + l] = (uint8_t)((src[l + 32] & 0xF) | ((src[l + 96] & 0xF) << 4));
            qh[32 * h + l] = (uint8_t)((src[l] >> 4) | ((src[l + 32] >> 4) << 2) | ((src[l + 64] >> 4) << 4) |
                                       ((src[l + 96] >> 4) << 6));
        }
    }
    memcpy(out + 192, sc, 16);
    qc_kq_put_fp16(out + 208, d16);
}

void qc_quantize_row_q6_k(const float *x, void *vy, int64_t n_per_row, const float *qw) {
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n_per_row / QC_QK_K; b++)
        q6_k_block(x + b * QC_QK_K, qw ? qw + b * QC_QK_K : NULL, y + b * Q6_K_BYTES);
}

const qc_kernel qc_kernel_q6_k = {qc_quantize_row_q6_k, QC_QK_K, Q6_K_BYTES};
