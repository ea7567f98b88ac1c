/* Q3_K row quantizer, the C twin of quant/types/q3_k.py (layout: formats/Q3_K.md).
 *
 * Block (110 bytes): hmask (32 bytes; bit k of byte l = high bit of value 32k + l), 64 bytes of low 2-bit
 * quants (as Q2_K), 12 bytes of 6-bit scales biased by 32, d (fp16). Each super-block is two groups of 8
 * sub-blocks of 16; with an imatrix the 16 scales of up to 8 super-blocks are then quantized side by side. */
#include "kquant_common.h"

#define Q3_K_NMAX 4
#define Q3_K_BYTES 110

typedef struct {
    qc_vi L[2][16];
    float scales[16], sw[16];
    int l6[16];
    uint16_t d16;
} q3_k_work;

static void q3_k_search(const float *x, const float *qw, q3_k_work *wk) {
    qc_vf xt[2][16], s[2];
    for (int g = 0; g < 2; g++) qc_load_lanes(x + 128 * g, 16, QC_LANES, 16, xt[g]);
    if (qw) {
        float w[QC_QK_K];
        qc_kq_imatrix_weights(x, qw, qc_kq_sigma2(x, 2.0f), w);
        for (int g = 0; g < 2; g++) {
            qc_vf wt[16], sw = qc_vf_set(0.0f);
            qc_load_lanes(w + 128 * g, 16, QC_LANES, 16, wt);
            for (int i = 0; i < 16; i++) sw += wt[i];
            for (int k = 0; k < QC_LANES; k++) wk->sw[8 * g + k] = sw[k];
            s[g] = qc_make_qx_quants(16, Q3_K_NMAX, xt[g], wt, wk->L[g]);
        }
    } else {
        qc_kq_make_q3_quants(Q3_K_NMAX, (const qc_vf (*)[16])xt, wk->L, s);
    }
    for (int g = 0; g < 2; g++)
        for (int k = 0; k < QC_LANES; k++) wk->scales[8 * g + k] = s[g][k];
}

/* The imatrix-free path rounds the 16 scales against the one of largest magnitude. */
static void q3_k_scales_ref(q3_k_work *wk) {
    float max_scale = 0.0f, amax = 0.0f;
    for (int j = 0; j < 16; j++) {
        const float a = fabsf(wk->scales[j]);
        if (a > amax) {
            amax = a;
            max_scale = wk->scales[j];
        }
    }
    if (max_scale != 0.0f) {
        const float iscale = -(float)QC_KQ_SCALE6_OFFSET / max_scale;
        for (int j = 0; j < 16; j++) {
            int l = (int8_t)qc_nearest_int(iscale * wk->scales[j]);   /* through an int8 store, then clamped */
            l = l < -QC_KQ_SCALE6_OFFSET ? -QC_KQ_SCALE6_OFFSET : l > QC_KQ_SCALE6_OFFSET - 1 ? QC_KQ_SCALE6_OFFSET - 1 : l;
            wk->l6[j] = l + QC_KQ_SCALE6_OFFSET;
        }
        wk->d16 = qc_fp16(1.0f / iscale);
    } else {
        for (int j = 0; j < 16; j++) wk->l6[j] = 0;
        wk->d16 = qc_fp16(0.0f);
    }
}

static void q3_k_finish(const float *x, q3_k_work *wk, uint8_t *out) {
    uint8_t *hmask = out, *qs = out + 32, *scales = out + 96;
    qc_kq_pack_q3_scales(wk->l6, scales);
    const float d = qc_fp16_to_fp32(wk->d16);
    uint8_t Lv[QC_QK_K];
    for (int g = 0; g < 2; g++) {
        qc_vf xt[16], dv;
        qc_load_lanes(x + 128 * g, 16, QC_LANES, 16, xt);
        for (int k = 0; k < QC_LANES; k++) dv[k] = d * (float)qc_kq_q3_scale(8 * g + k, scales);
        const qc_vi keep = dv == qc_vf_set(0.0f);   /* a zero scale keeps the search's levels */
        for (int i = 0; i < 16; i++) {
            const qc_vi q = qc_vi_clamp(qc_vnearest_int(xt[i] / dv), -Q3_K_NMAX, Q3_K_NMAX - 1) + Q3_K_NMAX;
            wk->L[g][i] = qc_vi_sel(keep, wk->L[g][i], q);
        }
        qc_kq_store_lanes(wk->L[g], 16, QC_LANES, Lv + 128 * g);
    }
    /* levels 4..7 set their bit in hmask and keep L - 4 (= L & 3); branch-free, the bits are random */
    for (int l = 0; l < 32; l++) {
        int h = 0;
        for (int k = 0; k < 8; k++) h |= (Lv[32 * k + l] > 3) << k;
        hmask[l] = (uint8_t)h;
    }
    for (int j = 0; j < QC_QK_K; j++) Lv[j] &= 3;
    qc_kq_pack_2bit(Lv, qs);
    qc_kq_put_fp16(out + 108, wk->d16);
}

void qc_quantize_row_q3_k(const float *x, void *vy, int64_t n_per_row, const float *qw) {
    uint8_t *y = (uint8_t *)vy;
    const int64_t nb = n_per_row / QC_QK_K;
    q3_k_work wk[QC_LANES];
    for (int64_t b0 = 0; b0 < nb; b0 += QC_LANES) {
        const int count = (int)(nb - b0 < QC_LANES ? nb - b0 : QC_LANES);
        for (int b = 0; b < count; b++)
            q3_k_search(x + (b0 + b) * QC_QK_K, qw ? qw + (b0 + b) * QC_QK_K : NULL, &wk[b]);
        if (qw) {
            /* second level, one super-block per lane: the 16 scales by make_qx_quants under the weight sums */
            qc_vf xs[16], ws[16];
            qc_vi Ls[16];
            for (int j = 0; j < 16; j++) {
                xs[j] = ws[j] = qc_vf_set(0.0f);
                for (int b = 0; b < count; b++) {
                    xs[j][b] = wk[b].scales[j];
                    ws[j][b] = wk[b].sw[j];
                }
            }
            const qc_vf d = qc_make_qx_quants(16, QC_KQ_SCALE6_OFFSET, xs, ws, Ls);
            for (int b = 0; b < count; b++) {
                for (int j = 0; j < 16; j++) wk[b].l6[j] = Ls[j][b];
                wk[b].d16 = qc_fp16(d[b]);
            }
        } else {
            for (int b = 0; b < count; b++) q3_k_scales_ref(&wk[b]);
        }
        for (int b = 0; b < count; b++) q3_k_finish(x + (b0 + b) * QC_QK_K, &wk[b], y + (b0 + b) * Q3_K_BYTES);
    }
}

const qc_kernel qc_kernel_q3_k = {qc_quantize_row_q3_k, QC_QK_K, Q3_K_BYTES};
