/* C twin of quantcli/quant/algorithms/hqq.py: HQQ's proximal solver for the zero points of an asymmetric integer
 * scheme, with the scale refitted each round, from the min-max encoding that int_rtn computed.
 *
 * Per group: at most HQQ_ITERS rounds of codes, reconstruction, the lp shrinkage (p = 0.5: 1 / sqrtf, correctly
 * rounded like NumPy's sqrt), the mean that updates the zero (rounded and clamped), and the least-squares scale
 * (rounded to its stored dtype), stopping when the summed absolute error stops decreasing; the best pair is kept
 * only when its squared error beats the min-max pair. Every step float32 in the reference's order (sums left to
 * right), so scales, zero points and codes are equal bit for bit. Groups are independent, so the rows split
 * across threads without changing a byte. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Compiled once (setup.py ONCE): it uses the baseline fp16 helpers of kernels.h. */
#ifndef QC_ISA
#define QC_ISA default
#endif
#include "kernels.h"
#include "parallel.h"

enum { HQQ_F32 = 0, HQQ_F16 = 1, HQQ_BF16 = 2 };

#define HQQ_ITERS 20
#define HQQ_BETA 10.0f
#define HQQ_KAPPA 1.01f
#define HQQ_MAX_THREADS 64

typedef struct {
    const float *x;
    void *scale;
    int dtype;
    int8_t *zp;
    int8_t *q;
    int64_t n, g, row_begin, row_end;
    float qmin, qmax;
    int *failed;             /* set when a job cannot get its scratch memory */
} hqq_job;

static inline float hqq_code(const hqq_job *j, float x, float s, float z) {
    float q = rintf(x / s + z);
    if (q < j->qmin) q = j->qmin;
    if (q > j->qmax) q = j->qmax;
    return q;
}

static float hqq_sq_error(const hqq_job *j, const float *x, float s, float z) {
    float acc = 0.0f;
    for (int64_t k = 0; k < j->g; k++) {
        const float d = (hqq_code(j, x[k], s, z) - z) * s - x[k];
        acc += d * d;
    }
    return acc;
}

static float hqq_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* The stored dtype's value of v, and its bits (as int_rtn.c and rtn.round_to round). */
static float hqq_round(float v, int dtype, uint32_t *bits) {
    if (dtype == HQQ_F16) {
        const uint16_t h = qc_fp32_to_fp16(v);
        *bits = h;
        return qc_fp16_to_fp32(h);
    }
    uint32_t x;
    memcpy(&x, &v, 4);
    if (dtype == HQQ_BF16) {
        const uint32_t b = ((x + (((x >> 16) & 1u) + 0x7fffu)) >> 16) & 0xffffu;
        *bits = b;
        return hqq_f32(b << 16);
    }
    *bits = x;
    return v;
}

static float hqq_value(const hqq_job *j, int64_t gi, uint32_t *bits) {
    if (j->dtype == HQQ_F32) {
        *bits = ((const uint32_t *)j->scale)[gi];
        return hqq_f32(*bits);
    }
    *bits = ((const uint16_t *)j->scale)[gi];
    return j->dtype == HQQ_F16 ? qc_fp16_to_fp32((uint16_t)*bits) : hqq_f32(*bits << 16);
}

/* Solves one group in place: *s, *bits and *z enter as the min-max encoding and leave as HQQ's. */
/* qb and yb are scratch rows of g floats: a round's codes and its target x - e, computed once and reused. */
static void hqq_solve(const hqq_job *j, const float *x, float *s0, uint32_t *bits0, float *z0, float *qb, float *yb) {
    float s = *s0, z = *z0, best_s = s, best_z = z, best_err = INFINITY, beta = HQQ_BETA;
    uint32_t st = *bits0, best_st = st;
    for (int it = 0; it < HQQ_ITERS; it++) {
        float err = 0.0f;
        for (int64_t k = 0; k < j->g; k++) {
            qb[k] = hqq_code(j, x[k], s, z);
            const float d = x[k] - (qb[k] - z) * s;
            err += fabsf(d);
        }
        if (!(err < best_err)) break;
        best_err = err;
        best_s = s, best_z = z, best_st = st;
        float acc = 0.0f;
        for (int64_t k = 0; k < j->g; k++) {
            const float d = x[k] - (qb[k] - z) * s;
            const float a = fabsf(d);
            float t = a - (1.0f / sqrtf(a)) / beta;
            if (t < 0.0f) t = 0.0f;
            yb[k] = x[k] - (d < 0.0f ? -t : t);
            acc += qb[k] - yb[k] / s;
        }
        float zn = rintf(acc / (float)j->g);
        if (zn < j->qmin) zn = j->qmin;
        if (zn > j->qmax) zn = j->qmax;
        float num = 0.0f, den = 0.0f;
        for (int64_t k = 0; k < j->g; k++) {
            const float u = qb[k] - zn;
            num += u * yb[k];
            den += u * u;
        }
        uint32_t stn;
        const float sn = hqq_round(num / den, j->dtype, &stn);
        z = zn;
        if (den > 0.0f && sn > 0.0f && isfinite(sn)) s = sn, st = stn;
        beta = beta * HQQ_KAPPA;
    }
    if (hqq_sq_error(j, x, best_s, best_z) < hqq_sq_error(j, x, *s0, *z0)) {
        *s0 = best_s, *z0 = best_z, *bits0 = best_st;
    }
}

static void *hqq_run(void *arg) {
    const hqq_job *j = (const hqq_job *)arg;
    const int64_t groups = j->n / j->g;
    float *scratch = (float *)malloc((size_t)j->g * 2 * sizeof(float));
    if (scratch == NULL) {
        *j->failed = 1;
        return NULL;
    }
    for (int64_t r = j->row_begin; r < j->row_end; r++) {
        for (int64_t k = 0; k < groups; k++) {
            const int64_t gi = r * groups + k;
            const float *x = j->x + r * j->n + k * j->g;
            uint32_t bits;
            float s = hqq_value(j, gi, &bits), z = (float)j->zp[gi];
            hqq_solve(j, x, &s, &bits, &z, scratch, scratch + j->g);
            j->zp[gi] = (int8_t)z;
            if (j->dtype == HQQ_F32) ((uint32_t *)j->scale)[gi] = bits;
            else ((uint16_t *)j->scale)[gi] = (uint16_t)bits;
            for (int64_t c = 0; c < j->g; c++) j->q[r * j->n + k * j->g + c] = (int8_t)hqq_code(j, x[c], s, z);
        }
    }
    free(scratch);
    return NULL;
}

/* int_hqq(src, n, group, bits, dtype, scale_inout, zp_inout, q_out, threads): scales in their stored dtype. */
PyObject *qc_int_hqq(PyObject *self, PyObject *args) {
    Py_buffer src, scale, zp, q;
    Py_ssize_t n, g;
    int bits, dtype, threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nniiw*w*w*i", &src, &n, &g, &bits, &dtype, &scale, &zp, &q, &threads)) return NULL;
    PyObject *result = NULL;
    if (bits < 2 || bits > 8 || dtype < 0 || dtype > 2 || n <= 0 || g <= 0 || n % g) {
        PyErr_SetString(PyExc_ValueError, "int_hqq: bad bits, dtype or group size");
        goto done;
    }
    const int64_t rows = src.len / (Py_ssize_t)(n * sizeof(float));
    if (src.len != rows * n * (Py_ssize_t)sizeof(float) || q.len != rows * n || zp.len != rows * (n / g)
        || scale.len != rows * (n / g) * (dtype == HQQ_F32 ? 4 : 2)) {
        PyErr_SetString(PyExc_ValueError, "int_hqq: buffer sizes do not match the rows");
        goto done;
    }
    if (threads < 1) threads = 1;
    if (threads > HQQ_MAX_THREADS) threads = HQQ_MAX_THREADS;
    if (threads > rows) threads = (int)(rows > 0 ? rows : 1);
    hqq_job jobs[HQQ_MAX_THREADS];
    int failed = 0;
    for (int t = 0; t < threads; t++) {
        jobs[t] = (hqq_job){(const float *)src.buf, scale.buf, dtype, (int8_t *)zp.buf, (int8_t *)q.buf, n, g,
                            rows * t / threads, rows * (t + 1) / threads,
                            (float)-(1 << (bits - 1)), (float)((1 << (bits - 1)) - 1), &failed};
    }
    if (rows > 0) qc_parallel(hqq_run, jobs, sizeof(hqq_job), threads);
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&scale);
    PyBuffer_Release(&zp);
    PyBuffer_Release(&q);
    return result;
}
