/* Q2_K row quantizer, the C twin of quant/types/q2_k.py (layout: formats/Q2_K.md).
 *
 * Block (84 bytes): 16 scale bytes (low nibble scale, high nibble min), 64 bytes of 2-bit quants, d, dmin
 * (fp16). Each super-block is two groups of 8 sub-blocks of 16; with an imatrix the scales and mins of up to
 * 8 super-blocks are then quantized side by side. */
#include "kquant_common.h"

#define Q2_K_NMAX 3
#define Q2_K_SCALE_MAX 15
#define Q2_K_BYTES 84

/* imatrix-free search: weights |x|, minimising the weighted absolute error */
static const qc_kq_search q2_k_ref_search = {-0.5f, 0.1f, 15, 1};

typedef struct {
    qc_vi L[2][16];
    float scales[16], mins[16], sw[16];
    uint8_t packed[16];
    uint16_t d16, dmin16;
} q2_k_work;

static void q2_k_search(const float *x, const float *qw, q2_k_work *wk) {
    float w[QC_QK_K];
    if (qw) qc_kq_imatrix_weights(x, qw, qc_kq_sigma2(x, 1.0f), w);   /* sigma2 is the mean square here */
    for (int g = 0; g < 2; g++) {
        qc_vf xt[16], wt[16], s, m;
        qc_load_lanes(x + 128 * g, 16, QC_LANES, 16, xt);
        if (qw) {
            qc_load_lanes(w + 128 * g, 16, QC_LANES, 16, wt);
            qc_vf sw = qc_vf_set(0.0f);
            for (int i = 0; i < 16; i++) sw += wt[i];
            for (int k = 0; k < QC_LANES; k++) wk->sw[8 * g + k] = sw[k];
            s = qc_make_qkx3_quants(16, Q2_K_NMAX, xt, wt, wk->L[g], &m, QC_QKX3_RMIN, QC_QKX3_RDELTA,
                                    QC_QKX3_NSTEP, 0);
        } else {
            for (int i = 0; i < 16; i++) wt[i] = qc_vf_abs(xt[i]);
            s = qc_make_qkx3_quants(16, Q2_K_NMAX, xt, wt, wk->L[g], &m, q2_k_ref_search.rmin,
                                    q2_k_ref_search.rdelta, q2_k_ref_search.nstep, q2_k_ref_search.use_mad);
        }
        for (int k = 0; k < QC_LANES; k++) {
            wk->scales[8 * g + k] = s[k];
            wk->mins[8 * g + k] = m[k];
        }
    }
}

/* The imatrix-free path rounds scales and mins onto 4 bits against the largest of each. */
static void q2_k_scales_ref(q2_k_work *wk) {
    const float max_scale = qc_kq_max_from_zero(wk->scales, 16), max_min = qc_kq_max_from_zero(wk->mins, 16);
    int packed[16] = {0};
    if (max_scale > 0) {
        const float iscale = (float)Q2_K_SCALE_MAX / max_scale;
        for (int j = 0; j < 16; j++) packed[j] = qc_nearest_int(iscale * wk->scales[j]);
        wk->d16 = qc_fp16(max_scale / (float)Q2_K_SCALE_MAX);
    } else {
        wk->d16 = qc_fp16(0.0f);
    }
    if (max_min > 0) {
        const float iscale = (float)Q2_K_SCALE_MAX / max_min;
        for (int j = 0; j < 16; j++) packed[j] |= qc_nearest_int(iscale * wk->mins[j]) << 4;
        wk->dmin16 = qc_fp16(max_min / (float)Q2_K_SCALE_MAX);
    } else {
        wk->dmin16 = qc_fp16(0.0f);
    }
    for (int j = 0; j < 16; j++) wk->packed[j] = (uint8_t)packed[j];
}

static void q2_k_finish(const float *x, q2_k_work *wk, uint8_t *out) {
    const float d = qc_fp16_to_fp32(wk->d16), dmin = qc_fp16_to_fp32(wk->dmin16);
    uint8_t Lv[QC_QK_K];
    for (int g = 0; g < 2; g++) {
        qc_vf xt[16], dv, mv;
        qc_load_lanes(x + 128 * g, 16, QC_LANES, 16, xt);
        for (int k = 0; k < QC_LANES; k++) {
            dv[k] = d * (float)(wk->packed[8 * g + k] & 0xF);
            mv[k] = dmin * (float)(wk->packed[8 * g + k] >> 4);
        }
        const qc_vi keep = dv == qc_vf_set(0.0f);   /* a zero scale keeps the search's levels */
        for (int i = 0; i < 16; i++) {
            const qc_vi q = qc_vi_clamp(qc_vnearest_int((xt[i] + mv) / dv), 0, Q2_K_NMAX);
            wk->L[g][i] = qc_vi_sel(keep, wk->L[g][i], q);
        }
        qc_kq_store_lanes(wk->L[g], 16, QC_LANES, Lv + 128 * g);
    }
    memcpy(out, wk->packed, 16);
    qc_kq_pack_2bit(Lv, out + 16);
    qc_kq_put_fp16(out + 80, wk->d16);
    qc_kq_put_fp16(out + 82, wk->dmin16);
}

void qc_quantize_row_q2_k(const float *x, void *vy, int64_t n_per_row, const float *qw) {
    uint8_t *y = (uint8_t *)vy;
    const int64_t nb = n_per_row / QC_QK_K;
    q2_k_work wk[QC_LANES];
    for (int64_t b0 = 0; b0 < nb; b0 += QC_LANES) {
        const int count = (int)(nb - b0 < QC_LANES ? nb - b0 : QC_LANES);
        for (int b = 0; b < count; b++)
            q2_k_search(x + (b0 + b) * QC_QK_K, qw ? qw + (b0 + b) * QC_QK_K : NULL, &wk[b]);
        if (qw) {
            /* second level, one super-block per lane: 16 scales, then 16 mins, onto 0..15 */
            qc_vf xs[16], xm[16], ws[16];
            qc_vi Ls[16], Lm[16];
            for (int j = 0; j < 16; j++) {
                xs[j] = xm[j] = ws[j] = qc_vf_set(0.0f);
                for (int b = 0; b < count; b++) {
                    xs[j][b] = wk[b].scales[j];
                    xm[j][b] = wk[b].mins[j];
                    ws[j][b] = wk[b].sw[j];
                }
            }
            const qc_vf dm = qc_kq_make_qp_quants(16, Q2_K_SCALE_MAX, xs, ws, Ls);
            const qc_vf mm = qc_kq_make_qp_quants(16, Q2_K_SCALE_MAX, xm, ws, Lm);
            for (int b = 0; b < count; b++) {
                for (int j = 0; j < 16; j++) wk[b].packed[j] = (uint8_t)(Ls[j][b] | (Lm[j][b] << 4));
                wk[b].d16 = qc_fp16(dm[b]);
                wk[b].dmin16 = qc_fp16(mm[b]);
            }
        } else {
            for (int b = 0; b < count; b++) q2_k_scales_ref(&wk[b]);
        }
        for (int b = 0; b < count; b++) q2_k_finish(x + (b0 + b) * QC_QK_K, &wk[b], y + (b0 + b) * Q2_K_BYTES);
    }
}

const qc_kernel qc_kernel_q2_k = {qc_quantize_row_q2_k, QC_QK_K, Q2_K_BYTES};
