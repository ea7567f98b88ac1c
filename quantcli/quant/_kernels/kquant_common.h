/* Pieces shared by the K-quant kernels (q2_k.c .. q6_k.c); the C twin of quant/types/_kquant.py.
 *
 * A K-quant super-block holds 256 values in 16 sub-blocks of 16 (Q2_K, Q3_K, Q6_K) or 8 of 32 (Q4_K, Q5_K).
 * The scale searches run on lane vectors (common.h): one sub-block per lane, so a super-block is one or two
 * groups of QC_LANES sub-blocks, and every lane follows the scalar algorithm of ggml-quants.c exactly.
 * The second-level searches of the imatrix paths (the sub-block scales quantized by make_qp_quants or
 * make_qx_quants) run one super-block per lane over a group of up to QC_LANES super-blocks of a row.
 */
#ifndef QUANTCLI_KQUANT_COMMON_H
#define QUANTCLI_KQUANT_COMMON_H

#include "common.h"

#define QC_KQ_SCALE_BYTES 12   /* Q3_K .. Q5_K pack their 6-bit sub-block scales into 12 bytes */
#define QC_KQ_SCALE6_MAX 63    /* largest 6-bit scale / min (Q4_K, Q5_K); Q3_K stores scale + 32 */
#define QC_KQ_SCALE6_OFFSET 32
#define QC_KQ_QP_STEPS 4       /* make_qp_quants tries (nmax + 0.1 k) / max, k = -4..4, k != 0 */
#define QC_KQ_QP_STEP 0.1f
#define QC_KQ_REFINE_PASSES 5  /* make_qp_quants / make_q3_quants revisit each element at most 5 times */

/* The search of the imatrix-free path of a scale+min type (make_qkx2_quants' rmin, rdelta, nstep, use_mad). */
typedef struct {
    float rmin, rdelta;
    int nstep, use_mad;
} qc_kq_search;

/* One encoded super-block of Q4_K / Q5_K before the type packs its quants. */
typedef struct {
    uint16_t d, dmin;                   /* fp16 bits */
    uint8_t scales[QC_KQ_SCALE_BYTES];  /* 6-bit scales and mins, packed as both types store them */
    uint8_t L[QC_QK_K];                 /* final levels 0..nmax in value order */
} qc_kq_scale_min_block;

/* Encode up to QC_LANES consecutive super-blocks (x: count * 256 values; qw: their importance weights or
 * NULL) as Q4_K (nmax 15) or Q5_K (nmax 31). `ref` is the imatrix-free search; clamp_qp_levels says whether
 * the imatrix path clamps the 6-bit levels to 63 (Q5_K does, Q4_K does not). */
void qc_kq_encode_scale_min_32(const float *x, const float *qw, int count, int nmax, qc_kq_search ref,
                               int clamp_qp_levels, qc_kq_scale_min_block *out);

/* ggml's make_qp_quants per lane: non-negative x[0..n) onto 0..nmax with weights w; L as C's uint8 stores
 * keep it (negative levels wrap). Returns the scale (0 and L 0 where max < QC_GROUP_MAX_EPS). */
qc_vf qc_kq_make_qp_quants(int n, int nmax, const qc_vf *x, const qc_vf *w, qc_vi *L);

/* ggml's make_q3_quants with do_rmse per lane (weights x*x) on the 16 sub-blocks of 16 of one super-block,
 * given as two lane groups: L = l + nmax, l in [-nmax, nmax-1]; scale[g] per lane. */
void qc_kq_make_q3_quants(int nmax, const qc_vf x[2][16], qc_vi L[2][16], qc_vf scale[2]);

/* 6-bit scales and mins of Q4_K / Q5_K: pack 8 of each (taken modulo 256 like C's uint8 stores) into 12 bytes,
 * and read sub-block j back (ggml's get_scale_min_k4). */
void qc_kq_pack_scale_min(const int *ls, const int *lm, uint8_t *out);
static inline void qc_kq_scale_min(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* Q3_K's 16 biased 6-bit scales: pack into 12 bytes / read scale j back as a signed value (-32..31). */
void qc_kq_pack_q3_scales(const int *l6, uint8_t *out);
static inline int qc_kq_q3_scale(int j, const uint8_t *q) {
    const int low = j < 8 ? q[j] & 0xF : q[j - 8] >> 4;
    return (low | (((q[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - QC_KQ_SCALE6_OFFSET;
}

/* 256 levels 0..3 -> 64 bytes (Q2_K, and Q3_K's low bits): byte 32h + l holds levels 128h + 32k + l at bits 2k. */
void qc_kq_pack_2bit(const uint8_t *L, uint8_t *qs);

/* Transpose helpers: lanes of sub-block vectors <-> values in order. */
static inline void qc_kq_store_lanes(const qc_vi *L, int n, int count, uint8_t *dst) {
    for (int b = 0; b < count; b++)
        for (int i = 0; i < n; i++) dst[b * n + i] = (uint8_t)L[i][b];
}

/* `m = 0; for each v: if (v > m) m = v;` (NaN and non-positive values never win). */
static inline float qc_kq_max_from_zero(const float *v, int n) {
    float m = 0.0f;
    for (int j = 0; j < n; j++)
        if (v[j] > m) m = v[j];
    return m;
}

/* `factor * sum(x*x) / 256` over a super-block in value order: the imatrix paths' sigma2. */
static inline float qc_kq_sigma2(const float *x, float factor) {
    float sum = 0.0f;
    for (int j = 0; j < QC_QK_K; j++) sum += x[j] * x[j];
    return factor * sum / (float)QC_QK_K;
}

/* The imatrix paths' per-value weights qw * sqrt(sigma2 + x*x) for one super-block. */
static inline void qc_kq_imatrix_weights(const float *x, const float *qw, float sigma2, float *w) {
    for (int j = 0; j < QC_QK_K; j++) w[j] = qw[j] * sqrtf(sigma2 + x[j] * x[j]);
}

static inline void qc_kq_put_fp16(uint8_t *dst, uint16_t h) {
    dst[0] = (uint8_t)(h & 0xFF);
    dst[1] = (uint8_t)(h >> 8);
}

#endif
