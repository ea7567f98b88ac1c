/* Numeric building blocks shared by the C block encoders; the C twin of quant/types/_common.py.
 *
 * Bit-exactness with llama.cpp's reference quantizer rests on the same rules as the Python side: float32
 * operations in source order and never fused (setup.py passes -ffp-contract=off), sums accumulated one
 * element after another, and C's conversions reproduced where the encoders rely on them (see qc_trunc_i32).
 *
 * The searching encoders (IQ4, make_qx_quants, make_qkx3_quants) run QC_LANES blocks at once, one block
 * per vector lane, with GCC vector extensions: lane b follows exactly the scalar algorithm for block b, so a
 * sequential sum stays sequential. Vectors come as arrays xt[j] = element j of every lane's block.
 */
#ifndef QUANTCLI_COMMON_H
#define QUANTCLI_COMMON_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "kernels.h"

#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

#if defined(__GNUC__) && !defined(__AVX__)
/* Without AVX, GCC warns that 32-byte lane vectors are passed differently; every function using them here is
 * static inline, so no ABI is involved. */
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

/* ---- constants of ggml's reference encoders (the C half of _common.py's table) ---- */
#define QC_BLOCK 32                     /* values per block of the 32-value types and of IQ4 sub-blocks */
#define QC_QK_K 256                     /* values per super-block (ggml's QK_K) */
#define QC_NEAREST_INT_MAGIC 12582912.0f /* 1.5 * 2^23: adding it leaves round(x) in the low mantissa bits */
#define QC_NEAREST_INT_MANTISSA 0x007fffff
#define QC_NEAREST_INT_OFFSET 0x00400000
#define QC_GROUP_MAX_EPS 1e-15f         /* a group whose largest magnitude is below this is all zero */
#define QC_IQ4_SCALE_STEPS 7            /* IQ4 tries inverse scales (grid[0] + k) / max, k = -7..7 */
#define QC_QX_STEPS 9                   /* make_qx_quants tries -(nmax + 0.1 k) / max, k = -9..9, k != 0 */
#define QC_QX_STEP 0.1f
#define QC_QKX3_RMIN (-0.9f)            /* make_qkx3_quants' search as the imatrix paths call it */
#define QC_QKX3_RDELTA 0.05f
#define QC_QKX3_NSTEP 36
#define QC_LANES 8                      /* blocks processed side by side by the searching encoders */

/* The 16 levels of the IQ4 non-linear grid (ggml's kvalues_iq4nl), ascending. */
static const int8_t qc_iq4_grid[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* ---- scalar helpers ---- */

/* ggml's nearest_int: ties to even through the magic number, bit for bit also out of range. */
static inline int qc_nearest_int(float v) {
    const float biased = v + QC_NEAREST_INT_MAGIC;
    int32_t bits;
    memcpy(&bits, &biased, sizeof bits);
    return (bits & QC_NEAREST_INT_MANTISSA) - QC_NEAREST_INT_OFFSET;
}

/* C's (int)f on x86-64 (cvttss2si): truncation, and INT32_MIN for NaN or out-of-range values. Written out
 * so the result does not depend on the compiler (the conversion is undefined behaviour in ISO C). */
static inline int32_t qc_trunc_i32(float v) {
    if (!(fabsf(v) < 2147483648.0f)) return INT32_MIN;
    return (int32_t)v;
}

/* roundf: halves away from zero (NaN and Inf unchanged). */
static inline float qc_roundf(float v) {
    const float t = truncf(v);
    const float frac = v - t;                 /* exact */
    if (fabsf(frac) >= 0.5f) return t + copysignf(1.0f, v);
    return t;
}

/* (int)lroundf(v) as glibc computes it on x86-64: NaN, Inf and huge values give LONG_MIN, whose low 32 bits
 * are 0. (|v| >= 2^31 finite never occurs for the types using it.) */
static inline int32_t qc_lroundf_i32(float v) {
    if (!(fabsf(v) < 2147483648.0f)) return 0;
    return (int32_t)qc_roundf(v);
}

/* fp32 -> fp16 bits, round to nearest even; uses F16C when the CPU has it (same bits for every non-NaN). */
static inline uint16_t qc_fp16(float f) {
#if defined(__F16C__)
    if (f == f) return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#endif
    return qc_fp32_to_fp16(f);
}

/* Little-endian fp16 store of a block scale. */
static inline void qc_put_fp16(uint8_t *dst, float f) {
    const uint16_t h = qc_fp16(f);
    dst[0] = (uint8_t)(h & 0xff);
    dst[1] = (uint8_t)(h >> 8);
}

#if defined(__AVX2__)
/* ---- AVX2 pieces of the non-searching encoders ---- */

/* Largest lane of v. */
static inline float qc_hmax_ps(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

static inline float qc_hmin_ps(__m256 v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

/* Lane b of the result = min (or max) over the 8 lanes of v[b]; no NaN may be present. */
#define QC_HOP(op, a, b) op(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)), _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)))
#define QC_TRANSPOSE_REDUCE(name, op)                                                                  \
    static inline __m256 name(const __m256 *v) {                                                       \
        const __m256 s01 = QC_HOP(op, v[0], v[1]), s23 = QC_HOP(op, v[2], v[3]);                       \
        const __m256 s45 = QC_HOP(op, v[4], v[5]), s67 = QC_HOP(op, v[6], v[7]);                       \
        const __m256 lo = QC_HOP(op, s01, s23), hi = QC_HOP(op, s45, s67);                             \
        return op(_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31));          \
    }
QC_TRANSPOSE_REDUCE(qc_transpose_min8, _mm256_min_ps)
QC_TRANSPOSE_REDUCE(qc_transpose_max8, _mm256_max_ps)

/* roundf per lane: halves away from zero, NaN and Inf unchanged (qc_roundf). */
static inline __m256 qc_round_away_ps(__m256 v) {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 frac = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(v, t));
    const __m256 one = _mm256_or_ps(_mm256_and_ps(v, _mm256_set1_ps(-0.0f)), _mm256_set1_ps(1.0f));
    return _mm256_add_ps(t, _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ), one));
}

/* The low byte of a C int8_t conversion, sign-extended again (what `(int8_t)(int)f` leaves). */
static inline __m256i qc_low_byte_signed(__m256i i) { return _mm256_srai_epi32(_mm256_slli_epi32(i, 24), 24); }

/* Store the low bytes of 16 int32 lanes (a, then b) as 16 consecutive bytes. */
static inline void qc_store_low_bytes16(uint8_t *dst, __m256i a, __m256i b) {
    const __m256i m = _mm256_set1_epi32(0xff);
    const __m256i p = _mm256_packus_epi32(_mm256_and_si256(a, m), _mm256_and_si256(b, m));
    const __m256i q = _mm256_packus_epi16(p, _mm256_setzero_si256());
    const __m256i r = _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm_storeu_si128((__m128i *)dst, _mm256_castsi256_si128(r));
}

/* Store the low bytes of 32 int32 lanes (a, b, c, d) as 32 consecutive bytes. */
static inline void qc_store_low_bytes32(uint8_t *dst, __m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i m = _mm256_set1_epi32(0xff);
    const __m256i p = _mm256_packus_epi32(_mm256_and_si256(a, m), _mm256_and_si256(b, m));
    const __m256i q = _mm256_packus_epi32(_mm256_and_si256(c, m), _mm256_and_si256(d, m));
    const __m256i r = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(p, q), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)dst, r);
}

/* The value x[j] of the first lane whose magnitude a (= |x|, 4 vectors of a 32-block) equals amax, or +0 when
 * amax is 0: the `max` of ggml's `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` scan. */
static inline float qc_first_absmax_value(const float *x, const __m256 *a, float amax) {
    if (!(amax > 0.0f)) return 0.0f;
    const __m256 target = _mm256_set1_ps(amax);
    uint32_t hits = 0;
    for (int k = 0; k < 4; k++)
        hits |= (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(a[k], target, _CMP_EQ_OQ)) << (8 * k);
    return x[__builtin_ctz(hits)];
}

/* Bit 4 of each of 32 int32 lanes (a..d) as a little-endian uint32: the fifth bits of Q5_0 / Q5_1. */
static inline void qc_store_bit4_32(uint8_t *dst, __m256i a, __m256i b, __m256i c, __m256i d) {
    const uint32_t bits = (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(a, 27)))
                        | (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(b, 27))) << 8
                        | (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(c, 27))) << 16
                        | (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(d, 27))) << 24;
    for (int k = 0; k < 4; k++) dst[k] = (uint8_t)(bits >> (8 * k));
}
#endif

/* Q5_0 / Q5_1 quant bytes: 32 quants (bits 0..4 used) -> qh, the fifth bits as a little-endian uint32 (4 bytes),
 * and qs, 16 bytes of low nibbles (element j | element j+16 << 4). */
static inline void qc_pack_q5(const int *q, uint8_t *qh, uint8_t *qs) {
    uint32_t h = 0;
    for (int j = 0; j < QC_BLOCK / 2; j++) {
        const int q0 = q[j], q1 = q[j + QC_BLOCK / 2];
        qs[j] = (uint8_t)((q0 & 0x0f) | ((q1 & 0x0f) << 4));
        h |= (uint32_t)((q0 & 0x10) >> 4) << j;
        h |= (uint32_t)((q1 & 0x10) >> 4) << (j + QC_BLOCK / 2);
    }
    for (int k = 0; k < 4; k++) qh[k] = (uint8_t)(h >> (8 * k));
}

/* min and max of a block of 32 as `if (v < min) min = v; if (v > max) max = v;` from (FLT_MAX, -FLT_MAX) finds
 * them: NaN is skipped and among equal values (+0 / -0) the first one wins. */
static inline void qc_block_min_max(const float *x, float *lo, float *hi) {
#if defined(__AVX2__)
    __m256 vlo = _mm256_set1_ps(FLT_MAX), vhi = _mm256_set1_ps(-FLT_MAX);
    for (int k = 0; k < QC_BLOCK / 8; k++) {
        const __m256 v = _mm256_loadu_ps(x + 8 * k);
        vlo = _mm256_min_ps(v, vlo);          /* a NaN lane of v keeps the running value */
        vhi = _mm256_max_ps(v, vhi);
    }
    float mn = qc_hmin_ps(vlo), mx = qc_hmax_ps(vhi);
    /* the reductions may return either zero; C keeps the first zero it meets */
    if (mn == 0.0f || mx == 0.0f) {
        for (int j = 0; j < QC_BLOCK; j++) {
            if (x[j] == 0.0f) {
                if (mn == 0.0f) mn = x[j];
                if (mx == 0.0f) mx = x[j];
                break;
            }
        }
    }
    *lo = mn;
    *hi = mx;
#else
    float mn = FLT_MAX, mx = -FLT_MAX;
    for (int j = 0; j < QC_BLOCK; j++) {
        if (x[j] < mn) mn = x[j];
        if (x[j] > mx) mx = x[j];
    }
    *lo = mn;
    *hi = mx;
#endif
}

/* The trits of a ternary super-block (TQ1_0, TQ2_0): d = amax (ggml's running MAX), t = (int)lroundf(x * (1/d)) + 1
 * (0, 1, 2 for -1, 0, +1). Returns d. */
static inline float qc_ternary_trits(const float *x, int32_t *t) {
    float amax = 0.0f;
#if defined(__AVX2__)
    __m256 m = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
    for (int j = 0; j < QC_QK_K; j += 8) {
        const __m256 v = _mm256_loadu_ps(x + j);
        m = _mm256_max_ps(m, _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v));
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    if (!_mm256_movemask_ps(nan)) {
        amax = qc_hmax_ps(m);
    } else
#endif
    {
        for (int j = 0; j < QC_QK_K; j++) {
            const float a = fabsf(x[j]);
            amax = amax > a ? amax : a;       /* ggml's MAX: a NaN is taken, then replaced by the next value */
        }
    }
    const float d = amax;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
#if defined(__AVX2__)
    const __m256 vid = _mm256_set1_ps(id), limit = _mm256_set1_ps(2147483648.0f);
    for (int j = 0; j < QC_QK_K; j += 8) {
        const __m256 p = _mm256_mul_ps(_mm256_loadu_ps(x + j), vid);
        const __m256i r = _mm256_cvttps_epi32(qc_round_away_ps(p));
        const __m256 ok = _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), p), limit, _CMP_LT_OQ);
        const __m256i l = _mm256_and_si256(r, _mm256_castps_si256(ok));   /* qc_lroundf_i32 */
        _mm256_storeu_si256((__m256i *)(t + j), _mm256_add_epi32(l, _mm256_set1_epi32(1)));
    }
#else
    for (int j = 0; j < QC_QK_K; j++) t[j] = qc_lroundf_i32(x[j] * id) + 1;
#endif
    return d;
}

/* ---- lane vectors (one block per lane) ---- */
typedef float qc_vf __attribute__((vector_size(QC_LANES * sizeof(float))));
typedef int32_t qc_vi __attribute__((vector_size(QC_LANES * sizeof(int32_t))));

static inline qc_vf qc_vf_set(float v) { return (qc_vf){v, v, v, v, v, v, v, v}; }
static inline qc_vi qc_vi_set(int32_t v) { return (qc_vi){v, v, v, v, v, v, v, v}; }
/* mask ? a : b, with mask lanes all ones or all zeros (what vector comparisons return). */
static inline qc_vf qc_vf_sel(qc_vi mask, qc_vf a, qc_vf b) { return (qc_vf)((mask & (qc_vi)a) | (~mask & (qc_vi)b)); }
static inline qc_vi qc_vi_sel(qc_vi mask, qc_vi a, qc_vi b) { return (mask & a) | (~mask & b); }
static inline qc_vf qc_vf_abs(qc_vf v) { return (qc_vf)((qc_vi)v & qc_vi_set(0x7fffffff)); }
static inline qc_vi qc_vi_clamp(qc_vi v, int lo, int hi) {
    v = qc_vi_sel(v < qc_vi_set(lo), qc_vi_set(lo), v);
    return qc_vi_sel(v > qc_vi_set(hi), qc_vi_set(hi), v);
}
static inline qc_vi qc_vnearest_int(qc_vf v) {
    const qc_vi bits = (qc_vi)(v + qc_vf_set(QC_NEAREST_INT_MAGIC));
    return (bits & QC_NEAREST_INT_MANTISSA) - QC_NEAREST_INT_OFFSET;
}
static inline qc_vf qc_vsqrt(qc_vf v) {
#if defined(__AVX__)
    return (qc_vf)_mm256_sqrt_ps((__m256)v);
#else
    for (int b = 0; b < QC_LANES; b++) v[b] = sqrtf(v[b]);
    return v;
#endif
}
/* d ? 1/d : 0 per lane */
static inline qc_vf qc_vinverse_or_zero(qc_vf d) {
    return qc_vf_sel(d != qc_vf_set(0.0f), qc_vf_set(1.0f) / d, qc_vf_set(0.0f));
}

/* Per lane, the first value of the largest magnitude as `if (fabsf(v) > amax) { amax = fabsf(v); max = v; }`
 * from (0, 0) finds it (NaN never taken). */
static inline void qc_vfirst_absmax(const qc_vf *x, int n, qc_vf *amax, qc_vf *vmax) {
    qc_vf a = qc_vf_set(0.0f), m = qc_vf_set(0.0f);
    for (int j = 0; j < n; j++) {
        const qc_vf ax = qc_vf_abs(x[j]);
        const qc_vi gt = ax > a;
        a = qc_vf_sel(gt, ax, a);
        m = qc_vf_sel(gt, x[j], m);
    }
    *amax = a;
    *vmax = m;
}

/* Gather lanes of x[j] from QC_LANES blocks of n floats each (block b at src + b*stride); count < QC_LANES
 * blocks leaves the remaining lanes zero. */
static inline void qc_load_lanes(const float *src, int64_t stride, int count, int n, qc_vf *x) {
    for (int j = 0; j < n; j++) x[j] = qc_vf_set(0.0f);
    for (int b = 0; b < count; b++)
        for (int j = 0; j < n; j++) x[j][b] = src[b * stride + j];
}

/* IQ4 grid lookups per lane: level index -> level value. */
static inline qc_vf qc_iq4_level(qc_vi idx) {
    const qc_vf lo = {-127, -104, -83, -65, -49, -35, -22, -10};
    const qc_vf hi = {1, 13, 25, 38, 53, 69, 89, 113};
    return __builtin_shuffle(lo, hi, idx);
}

/* ggml's best_index_int8 over the IQ4 grid, per lane: 0 below the grid, 15 above it (and for NaN), else the
 * nearer of the two levels around v, the lower one only when (v - lower) < (upper - v) in float32. *level
 * receives the grid value of the index. */
static inline qc_vi qc_vbest_index_iq4(qc_vf v, qc_vf *level) {
    qc_vi below = qc_vi_set(0);                       /* index of the highest level <= v (0 below the grid) */
    for (int k = 1; k < 16; k++) below -= (qc_vi)(v >= qc_vf_set((float)qc_iq4_grid[k]));
    const qc_vi above = qc_vi_sel(below < qc_vi_set(15), below + 1, qc_vi_set(15));
    const qc_vf lo = qc_iq4_level(below), hi = qc_iq4_level(above);
    const qc_vi take_lo = (v - lo) < (hi - v);
    const qc_vi nan = v != v;
    *level = qc_vf_sel(nan, qc_vf_set((float)qc_iq4_grid[15]), qc_vf_sel(take_lo, lo, hi));
    return qc_vi_sel(nan, qc_vi_set(15), qc_vi_sel(take_lo, below, above));
}

/* The scale IQ4 picks for each lane's block of n values (x, weights w): the best of 2*ntry+2 candidates by
 * sum(w*q*x)^2 / sum(w*q*q), where each candidate maps values to their nearest grid level. Blocks below
 * QC_GROUP_MAX_EPS get 0. */
static inline qc_vf qc_iq4_block_scales(const qc_vf *x, const qc_vf *w, int n, int ntry) {
    qc_vf amax, vmax;
    qc_vfirst_absmax(x, n, &amax, &vmax);
    const qc_vf g0 = qc_vf_set((float)qc_iq4_grid[0]);
    qc_vf d = ntry > 0 ? -vmax / g0 : vmax / g0;
    qc_vf id = qc_vf_set(1.0f) / d;
    qc_vf sumqx = qc_vf_set(0.0f), sumq2 = qc_vf_set(0.0f), q;
    for (int j = 0; j < n; j++) {
        qc_vbest_index_iq4(id * x[j], &q);
        const qc_vf wq = w[j] * q;
        sumqx += wq * x[j];
        sumq2 += wq * q;
    }
    d = qc_vf_sel(sumq2 > qc_vf_set(0.0f), sumqx / sumq2, qc_vf_set(0.0f));
    qc_vf best = d * sumqx;
    for (int itry = -ntry; itry <= ntry; itry++) {
        id = qc_vf_set((float)(itry + qc_iq4_grid[0])) / vmax;
        sumqx = qc_vf_set(0.0f);
        sumq2 = qc_vf_set(0.0f);
        for (int j = 0; j < n; j++) {
            qc_vbest_index_iq4(id * x[j], &q);
            const qc_vf wq = w[j] * q;
            sumqx += wq * x[j];
            sumq2 += wq * q;
        }
        const qc_vi better = (sumq2 > qc_vf_set(0.0f)) & (sumqx * sumqx > best * sumq2);
        d = qc_vf_sel(better, sumqx / sumq2, d);
        best = qc_vf_sel(better, d * sumqx, best);
    }
    return qc_vf_sel(amax < qc_vf_set(QC_GROUP_MAX_EPS), qc_vf_set(0.0f), d);
}

/* ggml's make_qx_quants with rmse_type 1 per lane: symmetric quants l in [-nmax, nmax-1] for the inverse
 * scale -nmax/max and 18 nearby ones, keeping the one that maximises sum(w*x*l)^2 / sum(w*l*l). w holds the
 * weights (ggml's default is x*x: pass that). Writes L[i] = l + nmax and returns the scale; an all-zero lane
 * gives scale 0 and L 0. n <= QC_QK_K. */
static inline qc_vf qc_make_qx_quants(int n, int nmax, const qc_vf *x, const qc_vf *w, qc_vi *L) {
    qc_vf amax, vmax;
    qc_vfirst_absmax(x, n, &amax, &vmax);
    qc_vf wx[QC_QK_K];
    for (int i = 0; i < n; i++) wx[i] = w[i] * x[i];
    qc_vf iscale = qc_vf_set((float)-nmax) / vmax;
    qc_vf sumlx = qc_vf_set(0.0f), suml2 = qc_vf_set(0.0f);
    for (int i = 0; i < n; i++) {
        const qc_vi l = qc_vi_clamp(qc_vnearest_int(iscale * x[i]), -nmax, nmax - 1);
        const qc_vf lf = __builtin_convertvector(l, qc_vf);
        L[i] = l;
        sumlx += wx[i] * lf;
        suml2 += (w[i] * lf) * lf;
    }
    qc_vf scale = qc_vf_sel(suml2 != qc_vf_set(0.0f), sumlx / suml2, qc_vf_set(0.0f));
    qc_vf best = scale * sumlx;
    for (int is = -QC_QX_STEPS; is <= QC_QX_STEPS; is++) {
        if (is == 0) continue;
        iscale = -(qc_vf_set((float)nmax) + qc_vf_set(QC_QX_STEP) * qc_vf_set((float)is)) / vmax;
        qc_vi l[QC_QK_K];
        sumlx = qc_vf_set(0.0f);
        suml2 = qc_vf_set(0.0f);
        for (int i = 0; i < n; i++) {
            l[i] = qc_vi_clamp(qc_vnearest_int(iscale * x[i]), -nmax, nmax - 1);
            const qc_vf lf = __builtin_convertvector(l[i], qc_vf);
            sumlx += wx[i] * lf;
            suml2 += (w[i] * lf) * lf;
        }
        const qc_vi better = (suml2 > qc_vf_set(0.0f)) & (sumlx * sumlx > best * suml2);
        for (int i = 0; i < n; i++) L[i] = qc_vi_sel(better, l[i], L[i]);
        scale = qc_vf_sel(better, sumlx / suml2, scale);
        best = qc_vf_sel(better, scale * sumlx, best);
    }
    const qc_vi zero = amax < qc_vf_set(QC_GROUP_MAX_EPS);
    for (int i = 0; i < n; i++) L[i] = qc_vi_sel(zero, qc_vi_set(0), L[i] + nmax);
    return qc_vf_sel(zero, qc_vf_set(0.0f), scale);
}

/* ggml's make_qkx3_quants per lane: asymmetric quants 0..nmax. Starts from the min/max grid and tries nstep+1
 * inverse scales (rmin + rdelta*k + nmax) / (max - min), each with the least-squares scale and min, keeping
 * the one of lowest weighted error (|diff| if use_mad, else diff^2). As in ggml, a better candidate replaces
 * `min`, and later candidates are computed from it. w holds the weights (ggml's default is x*x: pass that).
 * Writes L, stores -min in *the_min and returns the scale: a value decodes as scale * L - the_min. */
static inline qc_vf qc_make_qkx3_quants(int n, int nmax, const qc_vf *x, const qc_vf *w, qc_vi *L, qc_vf *the_min,
                                        float rmin, float rdelta, int nstep, int use_mad) {
    qc_vf vmin = x[0], vmax = x[0];
    qc_vf sum_w = w[0];
    qc_vf sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        vmin = qc_vf_sel(x[i] < vmin, x[i], vmin);
        vmax = qc_vf_sel(x[i] > vmax, x[i], vmax);
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    vmin = qc_vf_sel(vmin > qc_vf_set(0.0f), qc_vf_set(0.0f), vmin);
    const qc_vi flat = vmax <= vmin;
    qc_vf iscale = qc_vf_set((float)nmax) / (vmax - vmin);
    qc_vf scale = qc_vf_set(1.0f) / iscale;
    qc_vf best_mad = qc_vf_set(0.0f);
    for (int i = 0; i < n; i++) {
        L[i] = qc_vi_clamp(qc_vnearest_int(iscale * (x[i] - vmin)), 0, nmax);
        qc_vf diff = (scale * __builtin_convertvector(L[i], qc_vf) + vmin) - x[i];
        diff = use_mad ? qc_vf_abs(diff) : diff * diff;
        best_mad += w[i] * diff;
    }
    for (int is = 0; nstep >= 1 && is <= nstep; is++) {
        iscale = ((qc_vf_set(rmin) + qc_vf_set(rdelta) * qc_vf_set((float)is)) + qc_vf_set((float)nmax)) / (vmax - vmin);
        qc_vi l[QC_QK_K];
        qc_vf lf[QC_QK_K];
        qc_vf sum_l = qc_vf_set(0.0f), sum_l2 = qc_vf_set(0.0f), sum_xl = qc_vf_set(0.0f);
        for (int i = 0; i < n; i++) {
            l[i] = qc_vi_clamp(qc_vnearest_int(iscale * (x[i] - vmin)), 0, nmax);
            lf[i] = __builtin_convertvector(l[i], qc_vf);
            const qc_vf wl = w[i] * lf[i];
            sum_l += wl;
            sum_l2 += wl * lf[i];
            sum_xl += wl * x[i];
        }
        const qc_vf D = sum_w * sum_l2 - sum_l * sum_l;
        qc_vf this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        qc_vf this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        const qc_vi clamp = this_min > qc_vf_set(0.0f);
        this_min = qc_vf_sel(clamp, qc_vf_set(0.0f), this_min);
        this_scale = qc_vf_sel(clamp, sum_xl / sum_l2, this_scale);
        qc_vf mad = qc_vf_set(0.0f);
        for (int i = 0; i < n; i++) {
            qc_vf diff = (this_scale * lf[i] + this_min) - x[i];
            diff = use_mad ? qc_vf_abs(diff) : diff * diff;
            mad += w[i] * diff;
        }
        const qc_vi better = (D > qc_vf_set(0.0f)) & (mad < best_mad) & ~flat;
        for (int i = 0; i < n; i++) L[i] = qc_vi_sel(better, l[i], L[i]);
        best_mad = qc_vf_sel(better, mad, best_mad);
        scale = qc_vf_sel(better, this_scale, scale);
        vmin = qc_vf_sel(better, this_min, vmin);
    }
    for (int i = 0; i < n; i++) L[i] = qc_vi_sel(flat, qc_vi_set(0), L[i]);
    *the_min = -vmin;
    return qc_vf_sel(flat, qc_vf_set(0.0f), scale);
}

/* Lane-wise fp16 stores of a group: lane b of v goes to dst + b * stride (b < count). */
static inline void qc_put_fp16_lanes(uint8_t *dst, int64_t stride, int count, qc_vf v) {
#if defined(__F16C__) && defined(__AVX__)
    uint16_t h[QC_LANES];
    _mm_storeu_si128((__m128i *)h, _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT));
    for (int b = 0; b < count; b++) {
        const uint16_t hb = v[b] == v[b] ? h[b] : qc_fp32_to_fp16(v[b]);   /* NaN: ggml's canonical bits */
        dst[b * stride] = (uint8_t)(hb & 0xff);
        dst[b * stride + 1] = (uint8_t)(hb >> 8);
    }
#else
    for (int b = 0; b < count; b++) qc_put_fp16(dst + b * stride, v[b]);
#endif
}

/* min and (max - min) / qmax of each block of a group of count <= QC_LANES blocks of 32 (Q4_1, Q5_1 without an
 * imatrix), with qc_block_min_max's semantics. */
static inline void qc_affine_scales(const float *x, int count, float qmax, qc_vf *lo, qc_vf *d) {
    qc_vf mn = qc_vf_set(0.0f), mx = qc_vf_set(0.0f);
#if defined(__AVX2__)
    if (count == QC_LANES) {
        __m256 pmin[QC_LANES], pmax[QC_LANES];
        for (int b = 0; b < QC_LANES; b++) {
            __m256 vlo = _mm256_set1_ps(FLT_MAX), vhi = _mm256_set1_ps(-FLT_MAX);
            for (int k = 0; k < QC_BLOCK / 8; k++) {
                const __m256 v = _mm256_loadu_ps(x + b * QC_BLOCK + 8 * k);
                vlo = _mm256_min_ps(v, vlo);  /* a NaN lane of v keeps the running value */
                vhi = _mm256_max_ps(v, vhi);
            }
            pmin[b] = vlo;
            pmax[b] = vhi;
        }
        mn = (qc_vf)qc_transpose_min8(pmin);
        mx = (qc_vf)qc_transpose_max8(pmax);
        /* the reductions may return either zero; C keeps the first zero of the block */
        const qc_vi zero = (mn == qc_vf_set(0.0f)) | (mx == qc_vf_set(0.0f));
        if (_mm256_movemask_ps((__m256)zero)) {
            for (int b = 0; b < QC_LANES; b++) {
                if (zero[b]) qc_block_min_max(x + b * QC_BLOCK, &mn[b], &mx[b]);
            }
        }
    } else
#endif
    {
        for (int b = 0; b < count; b++) qc_block_min_max(x + b * QC_BLOCK, &mn[b], &mx[b]);
    }
    *lo = mn;
    *d = (mx - mn) / qc_vf_set(qmax);
}

/* Per block of a group of count <= QC_LANES blocks of 32, the `max` of ggml's
 * `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` scan from (0, 0): the first value of the largest
 * magnitude, NaN never taken, +0 for an all-zero block (what Q4_0 / Q5_0 scale by). */
static inline qc_vf qc_first_absmax_lanes(const float *x, int count) {
    qc_vf out = qc_vf_set(0.0f);
#if defined(__AVX2__)
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 part[QC_LANES];
    for (int b = 0; b < QC_LANES; b++) {
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; b < count && k < QC_BLOCK / 8; k++)
            m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + b * QC_BLOCK + 8 * k)), m);  /* NaN keeps m */
        part[b] = m;
    }
    const qc_vf amax = (qc_vf)qc_transpose_max8(part);
    for (int b = 0; b < count; b++) {
        __m256 a[QC_BLOCK / 8];
        for (int k = 0; k < QC_BLOCK / 8; k++) a[k] = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + b * QC_BLOCK + 8 * k));
        out[b] = qc_first_absmax_value(x + b * QC_BLOCK, a, amax[b]);
    }
#else
    for (int b = 0; b < count; b++) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QC_BLOCK; j++) {
            const float v = x[b * QC_BLOCK + j];
            if (amax < fabsf(v)) { amax = fabsf(v); max = v; }
        }
        out[b] = max;
    }
#endif
    return out;
}

/* Per block of a group of count <= QC_LANES blocks of 32, ggml's `amax = MAX(amax, fabsf(v))` from 0 (Q8_0):
 * with MAX(a, b) = a > b ? a : b, a NaN is taken and then replaced by the next value. */
static inline qc_vf qc_running_absmax_lanes(const float *x, int count) {
    qc_vf out = qc_vf_set(0.0f);
    int scalar = count < QC_LANES ? (1 << QC_LANES) - 1 : 0;   /* blocks done one value at a time */
#if defined(__AVX2__)
    if (!scalar) {
        const __m256 sign = _mm256_set1_ps(-0.0f);
        __m256 part[QC_LANES];
        for (int b = 0; b < QC_LANES; b++) {
            __m256 m = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
            for (int k = 0; k < QC_BLOCK / 8; k++) {
                const __m256 v = _mm256_loadu_ps(x + b * QC_BLOCK + 8 * k);
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v));
                nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            }
            part[b] = m;
            if (_mm256_movemask_ps(nan)) scalar |= 1 << b;   /* where the NaN sits decides the result */
        }
        out = (qc_vf)qc_transpose_max8(part);
    }
#else
    scalar = (1 << QC_LANES) - 1;
#endif
    for (int b = 0; b < count; b++) {
        if (!(scalar & (1 << b))) continue;
        float amax = 0.0f;
        for (int j = 0; j < QC_BLOCK; j++) {
            const float a = fabsf(x[b * QC_BLOCK + j]);
            amax = amax > a ? amax : a;
        }
        out[b] = amax;
    }
    return out;
}

/* Per-element weights of the imatrix paths of Q4_0..Q5_1: qw * sqrtf(sigma2 + x*x), sigma2 the mean of x*x
 * over the whole row (summed in order). */
static inline float qc_row_sigma2(const float *x, int64_t n) {
    float sum = 0.0f;
    for (int64_t j = 0; j < n; j++) sum += x[j] * x[j];
    return sum / (float)n;
}

/* Lanes of count <= QC_LANES consecutive blocks of 32 (x, imatrix qw) and their weights qw * sqrtf(sigma2 + x*x),
 * as the imatrix paths of Q4_0..Q5_1 weight elements (sigma2: qc_row_sigma2 of the row). */
static inline void qc_load_weighted_lanes(const float *x, const float *qw, float sigma2, int count, qc_vf *xt,
                                          qc_vf *wt) {
    qc_load_lanes(x, QC_BLOCK, count, QC_BLOCK, xt);
    qc_load_lanes(qw, QC_BLOCK, count, QC_BLOCK, wt);
    for (int j = 0; j < QC_BLOCK; j++) wt[j] = wt[j] * qc_vsqrt(qc_vf_set(sigma2) + xt[j] * xt[j]);
}

#endif
