/* K-quant searches and packing shared by q2_k.c .. q6_k.c (see kquant_common.h). */
#include "kquant_common.h"

static inline qc_vf qc_vf_of(qc_vi v) { return __builtin_convertvector(v, qc_vf); }

static inline int qc_any(qc_vi m) {
    int any = 0;
    for (int b = 0; b < QC_LANES; b++) any |= m[b];
    return any != 0;
}

qc_vf qc_kq_make_qp_quants(int n, int nmax, const qc_vf *x, const qc_vf *w, qc_vi *L) {
    const qc_vf zero = qc_vf_set(0.0f), fnmax = qc_vf_set((float)nmax);
    qc_vf vmax = zero;
    for (int i = 0; i < n; i++) vmax = qc_vf_sel(vmax > x[i], vmax, x[i]);   /* ggml's MAX(a, b) */
    const qc_vi empty = vmax < qc_vf_set(QC_GROUP_MAX_EPS);

    qc_vf iscale = fnmax / vmax;
    qc_vf scale = qc_vf_set(1.0f) / iscale;
    qc_vf best = zero;
    for (int i = 0; i < n; i++) {
        /* the first guess goes through a uint8 store before its error is measured */
        const qc_vf l = qc_vf_of(qc_vnearest_int(iscale * x[i]) & 0xFF);
        const qc_vf diff = x[i] - scale * l;
        best += (w[i] * diff) * diff;
    }
    for (int is = -QC_KQ_QP_STEPS; is <= QC_KQ_QP_STEPS; is++) {
        if (is == 0) continue;
        const qc_vf iscale_is = (qc_vf_set(QC_KQ_QP_STEP * (float)is) + fnmax) / vmax;
        const qc_vf scale_is = qc_vf_set(1.0f) / iscale_is;
        qc_vf mse = zero;
        for (int i = 0; i < n; i++) {
            qc_vi l = qc_vnearest_int(iscale_is * x[i]);
            l = qc_vi_sel(l > qc_vi_set(nmax), qc_vi_set(nmax), l);
            const qc_vf diff = x[i] - scale_is * qc_vf_of(l);
            mse += (w[i] * diff) * diff;
        }
        const qc_vi better = mse < best;
        best = qc_vf_sel(better, mse, best);
        iscale = qc_vf_sel(better, iscale_is, iscale);
    }

    qc_vf sumlx = zero, suml2 = zero;
    for (int i = 0; i < n; i++) {
        qc_vi l = qc_vnearest_int(iscale * x[i]);
        l = qc_vi_sel(l > qc_vi_set(nmax), qc_vi_set(nmax), l);
        L[i] = l & 0xFF;
        const qc_vf lf = qc_vf_of(l);
        sumlx += (w[i] * x[i]) * lf;
        suml2 += (w[i] * lf) * lf;
    }
    /* A pass that changes no lane leaves every lane as it found it, so stopping when no lane changed gives
     * what ggml's per-block early exit gives. */
    for (int pass = 0; pass < QC_KQ_REFINE_PASSES; pass++) {
        qc_vi changed = qc_vi_set(0);
        for (int i = 0; i < n; i++) {
            const qc_vf wx = w[i] * x[i];
            const qc_vf lf = qc_vf_of(L[i]);
            qc_vf slx = sumlx - wx * lf;
            qc_vf sl2 = suml2 - (w[i] * lf) * lf;
            qc_vi new_l = qc_vnearest_int((x[i] * sl2) / slx);
            new_l = qc_vi_sel(new_l > qc_vi_set(nmax), qc_vi_set(nmax), new_l);
            const qc_vf nf = qc_vf_of(new_l);
            const qc_vf slx_new = slx + wx * nf;
            const qc_vf sl2_new = sl2 + (w[i] * nf) * nf;
            const qc_vi take = (slx > zero) & (sl2 > zero) & (new_l != L[i]) &
                               ((slx_new * slx_new) * suml2 > (sumlx * sumlx) * sl2_new);
            L[i] = qc_vi_sel(take, new_l & 0xFF, L[i]);
            sumlx = qc_vf_sel(take, slx_new, sumlx);
            suml2 = qc_vf_sel(take, sl2_new, suml2);
            changed |= take;
        }
        if (!qc_any(changed)) break;
    }
    for (int i = 0; i < n; i++) L[i] = qc_vi_sel(empty, qc_vi_set(0), L[i]);
    return qc_vf_sel(empty | ~(suml2 > zero), zero, sumlx / suml2);
}

void qc_kq_make_q3_quants(int nmax, const qc_vf x[2][16], qc_vi L[2][16], qc_vf scale[2]) {
    /* The refinement is one long dependency chain per lane (each element's move depends on the sums left by
     * the previous one), so the two lane groups run interleaved: the CPU overlaps their chains. */
    enum { G = 2, N = 16 };
    const qc_vf zero = qc_vf_set(0.0f);
    qc_vi empty[G];
    qc_vf sumlx[G], suml2[G], w[G][N], wx[G][N];
    for (int g = 0; g < G; g++) {
        qc_vf amax, vmax;
        qc_vfirst_absmax(x[g], N, &amax, &vmax);
        empty[g] = amax < qc_vf_set(QC_GROUP_MAX_EPS);
        const qc_vf iscale = qc_vf_set((float)-nmax) / vmax;
        sumlx[g] = suml2[g] = zero;
        for (int i = 0; i < N; i++) {
            L[g][i] = qc_vi_clamp(qc_vnearest_int(iscale * x[g][i]), -nmax, nmax - 1);
            w[g][i] = x[g][i] * x[g][i];
            wx[g][i] = w[g][i] * x[g][i];
            const qc_vf lf = qc_vf_of(L[g][i]);
            sumlx[g] += wx[g][i] * lf;
            suml2[g] += (w[g][i] * lf) * lf;
        }
    }
    for (int pass = 0; pass < QC_KQ_REFINE_PASSES; pass++) {   /* early exit as in qc_kq_make_qp_quants */
        qc_vi changed = qc_vi_set(0);
        for (int i = 0; i < N; i++) {
            for (int g = 0; g < G; g++) {
                const qc_vf lf = qc_vf_of(L[g][i]);
                qc_vf slx = sumlx[g] - wx[g][i] * lf;
                qc_vf sl2 = suml2[g] - (w[g][i] * lf) * lf;
                const qc_vi new_l = qc_vi_clamp(qc_vnearest_int((x[g][i] * sl2) / slx), -nmax, nmax - 1);
                const qc_vf nf = qc_vf_of(new_l);
                const qc_vf slx_new = slx + wx[g][i] * nf;
                const qc_vf sl2_new = sl2 + (w[g][i] * nf) * nf;
                const qc_vi take = (slx > zero) & (new_l != L[g][i]) & (sl2_new > zero) &
                                   ((slx_new * slx_new) * suml2[g] > (sumlx[g] * sumlx[g]) * sl2_new);
                L[g][i] = qc_vi_sel(take, new_l, L[g][i]);
                sumlx[g] = qc_vf_sel(take, slx_new, sumlx[g]);
                suml2[g] = qc_vf_sel(take, sl2_new, suml2[g]);
                changed |= take;
            }
        }
        if (!qc_any(changed)) break;
    }
    for (int g = 0; g < G; g++) {
        for (int i = 0; i < N; i++) L[g][i] = qc_vi_sel(empty[g], qc_vi_set(0), L[g][i] + nmax);
        scale[g] = qc_vf_sel(empty[g] | ~(suml2[g] > zero), zero, sumlx[g] / suml2[g]);
    }
}

void qc_kq_pack_scale_min(const int *ls, const int *lm, uint8_t *out) {
    for (int j = 0; j < 4; j++) {
        out[j] = (uint8_t)ls[j];
        out[j + 4] = (uint8_t)lm[j];
    }
    for (int j = 4; j < 8; j++) {
        const int s = ls[j] & 0xFF, m = lm[j] & 0xFF;
        out[j + 4] = (uint8_t)((s & 0xF) | ((m & 0xF) << 4));
        out[j - 4] |= (uint8_t)((s >> 4) << 6);
        out[j] |= (uint8_t)((m >> 4) << 6);
    }
}

void qc_kq_pack_q3_scales(const int *l6, uint8_t *out) {
    memset(out, 0, QC_KQ_SCALE_BYTES);
    for (int j = 0; j < 16; j++) {
        const int l = l6[j];
        if (j < 8) out[j] = (uint8_t)(l & 0xF);
        else out[j - 8] |= (uint8_t)((l & 0xF) << 4);
        out[8 + j % 4] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
    }
}

void qc_kq_pack_2bit(const uint8_t *L, uint8_t *qs) {
    for (int h = 0; h < 2; h++) {
        const uint8_t *src = L + 128 * h;
        for (int l = 0; l < 32; l++)
            qs[32 * h + l] = (uint8_t)(src[l] | (src[l + 32] << 2) | (src[l + 64] << 4) | (src[l + 96] << 6));
    }
}

/* ---- Q4_K / Q5_K ---- */

/* Search one super-block (8 sub-blocks of 32 = one lane each). Without qw: the imatrix-free path, which
 * also rounds the scales onto 6 bits; with qw: weights, search and the per-sub-block weight sums for the
 * second level. */
static inline void scale_min_search(const float *x, const float *qw, int nmax, qc_kq_search ref, qc_vi *L,
                                    qc_vf *scales, qc_vf *mins, qc_vf *sw) {
    qc_vf xt[32], wt[32];
    qc_load_lanes(x, 32, QC_LANES, 32, xt);
    if (qw == NULL) {
        qc_vf sum_x2 = qc_vf_set(0.0f);
        for (int i = 0; i < 32; i++) sum_x2 += xt[i] * xt[i];
        const qc_vf av_x = qc_vsqrt(sum_x2 / qc_vf_set(32.0f));
        for (int i = 0; i < 32; i++) wt[i] = av_x + qc_vf_abs(xt[i]);
        *scales = qc_make_qkx3_quants(32, nmax, xt, wt, L, mins, ref.rmin, ref.rdelta, ref.nstep, ref.use_mad);
    } else {
        float w[QC_QK_K];
        qc_kq_imatrix_weights(x, qw, qc_kq_sigma2(x, 2.0f), w);
        qc_load_lanes(w, 32, QC_LANES, 32, wt);
        qc_vf s = qc_vf_set(0.0f);
        for (int i = 0; i < 32; i++) s += wt[i];
        *sw = s;
        *scales = qc_make_qkx3_quants(32, nmax, xt, wt, L, mins, QC_QKX3_RMIN, QC_QKX3_RDELTA, QC_QKX3_NSTEP, 0);
    }
}

static inline void scale_min_requantize(const float *x, int nmax, qc_vi *L, qc_kq_scale_min_block *out) {
    const float d = qc_fp16_to_fp32(out->d), dmin = qc_fp16_to_fp32(out->dmin);
    qc_vf dv, mv;
    for (int j = 0; j < 8; j++) {
        int sc, m;
        qc_kq_scale_min(j, out->scales, &sc, &m);
        dv[j] = d * (float)sc;
        mv[j] = dmin * (float)m;
    }
    /* ggml skips a sub-block whose decoded scale is 0: its levels stay those of the search */
    const qc_vi keep = dv == qc_vf_set(0.0f);
    qc_vf xt[32];
    qc_load_lanes(x, 32, QC_LANES, 32, xt);
    for (int i = 0; i < 32; i++) {
        const qc_vi q = qc_vi_clamp(qc_vnearest_int((xt[i] + mv) / dv), 0, nmax);
        L[i] = qc_vi_sel(keep, L[i], q);
    }
    qc_kq_store_lanes(L, 32, 8, out->L);
}

static inline void encode_scale_min_32(const float *x, const float *qw, int count, int nmax, qc_kq_search ref,
                                       int clamp_qp_levels, qc_kq_scale_min_block *out) {
    qc_vi L[QC_LANES][32];
    qc_vf scales[QC_LANES], mins[QC_LANES], sw[QC_LANES];
    for (int b = 0; b < count; b++)
        scale_min_search(x + b * QC_QK_K, qw ? qw + b * QC_QK_K : NULL, nmax, ref, L[b], &scales[b], &mins[b], &sw[b]);

    if (qw == NULL) {
        for (int b = 0; b < count; b++) {
            float sc[8], mn[8];
            for (int j = 0; j < 8; j++) {
                sc[j] = scales[b][j];
                mn[j] = mins[b][j];
            }
            const float max_scale = qc_kq_max_from_zero(sc, 8), max_min = qc_kq_max_from_zero(mn, 8);
            const float inv_scale = max_scale > 0 ? (float)QC_KQ_SCALE6_MAX / max_scale : 0.0f;
            const float inv_min = max_min > 0 ? (float)QC_KQ_SCALE6_MAX / max_min : 0.0f;
            int ls[8], lm[8];
            for (int j = 0; j < 8; j++) {
                /* the level goes through a uint8 store before it is clamped */
                ls[j] = (uint8_t)qc_nearest_int(inv_scale * sc[j]);
                lm[j] = (uint8_t)qc_nearest_int(inv_min * mn[j]);
                if (ls[j] > QC_KQ_SCALE6_MAX) ls[j] = QC_KQ_SCALE6_MAX;
                if (lm[j] > QC_KQ_SCALE6_MAX) lm[j] = QC_KQ_SCALE6_MAX;
            }
            qc_kq_pack_scale_min(ls, lm, out[b].scales);
            out[b].d = qc_fp16(max_scale / (float)QC_KQ_SCALE6_MAX);
            out[b].dmin = qc_fp16(max_min / (float)QC_KQ_SCALE6_MAX);
        }
    } else {
        /* second level, one super-block per lane: the 8 scales (then the 8 mins) onto 0..63 */
        qc_vf xs[8], xm[8], ws[8];
        qc_vi Ls[8], Lm[8];
        for (int j = 0; j < 8; j++) {
            xs[j] = xm[j] = ws[j] = qc_vf_set(0.0f);
            for (int b = 0; b < count; b++) {
                xs[j][b] = scales[b][j];
                xm[j][b] = mins[b][j];
                ws[j][b] = sw[b][j];
            }
        }
        const qc_vf d = qc_kq_make_qp_quants(8, QC_KQ_SCALE6_MAX, xs, ws, Ls);
        const qc_vf m = qc_kq_make_qp_quants(8, QC_KQ_SCALE6_MAX, xm, ws, Lm);
        for (int b = 0; b < count; b++) {
            int ls[8], lm[8];
            for (int j = 0; j < 8; j++) {
                ls[j] = Ls[j][b];
                lm[j] = Lm[j][b];
                if (clamp_qp_levels) {
                    if (ls[j] > QC_KQ_SCALE6_MAX) ls[j] = QC_KQ_SCALE6_MAX;
                    if (lm[j] > QC_KQ_SCALE6_MAX) lm[j] = QC_KQ_SCALE6_MAX;
                }
            }
            qc_kq_pack_scale_min(ls, lm, out[b].scales);
            out[b].d = qc_fp16(d[b]);
            out[b].dmin = qc_fp16(m[b]);
        }
    }
    for (int b = 0; b < count; b++) scale_min_requantize(x + b * QC_QK_K, nmax, L[b], &out[b]);
}

void qc_kq_encode_scale_min_32(const float *x, const float *qw, int count, int nmax, qc_kq_search ref,
                               int clamp_qp_levels, qc_kq_scale_min_block *out) {
    /* two constant-folded copies: the searches unroll far better with nmax known */
    if (nmax == 15) encode_scale_min_32(x, qw, count, 15, ref, clamp_qp_levels, out);
    else encode_scale_min_32(x, qw, count, 31, ref, clamp_qp_levels, out);
}
