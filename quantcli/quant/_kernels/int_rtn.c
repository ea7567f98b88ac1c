/* C twins of quantcli/quant/int/rtn.py (round-to-nearest with min-max or MSE-searched ranges) and
 * io/int_packing.py (compressed-tensors' int32 bit stream).
 *
 * Bit for bit equal to the NumPy reference: every step in float32 in the reference's order (the scale
 * division, the zero point, the |error|^2.5 summed left to right over a group), rintf for NumPy's rint
 * (both round half to even), and the same rounding of the scale to its stored dtype before codes are made.
 * Rows are independent, so splitting them across threads does not change a byte. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>
/* Compiled once (setup.py ONCE), not per variant: it uses the baseline helpers of kernels.h. */
#ifndef QC_ISA
#define QC_ISA default
#endif
#include "kernels.h"
#include "parallel.h"

enum { INT_F32 = 0, INT_F16 = 1, INT_BF16 = 2 };
enum { INT_MINMAX = 0, INT_MSE = 1 };
#define INT_MSE_GRID 100
#define INT_MSE_STEPS 20
#define INT_MAX_THREADS 64

static float int_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t int_u32(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* Round v to the stored dtype: returns its float value and writes the stored bits to *bits. */
static float int_round_scale(float v, int dtype, uint32_t *bits) {
    if (dtype == INT_F16) {
        const uint16_t h = qc_fp32_to_fp16(v);
        *bits = h;
        return qc_fp16_to_fp32(h);
    }
    if (dtype == INT_BF16) {
        const uint32_t x = int_u32(v);
        const uint32_t b = (x + (((x >> 16) & 1u) + 0x7fffu)) >> 16;
        *bits = b & 0xffffu;
        return int_f32(b << 16);
    }
    *bits = int_u32(v);
    return v;
}

static float int_tiny(int dtype) { return dtype == INT_F16 ? 6.103515625e-05f : 1.17549435e-38f; }

typedef struct {
    int bits, sym, dtype, qmin, qmax;
} int_cfg;

/* Scale (and zero point) of a group whose range [lo, hi] holds 0. */
static void int_params(const int_cfg *c, float lo, float hi, float *scale, uint32_t *stored, float *zp) {
    float raw;
    if (c->sym) {
        const float amax = -lo > hi ? -lo : hi;
        raw = amax / (float)((double)(c->qmax - c->qmin) / 2.0);
    } else {
        raw = (hi - lo) / (float)(c->qmax - c->qmin);
    }
    *scale = int_round_scale(raw, c->dtype, stored);
    if (*scale == 0.0f) *scale = int_round_scale(int_tiny(c->dtype), c->dtype, stored);
    *zp = 0.0f;
    if (!c->sym) {
        float z = rintf((float)c->qmin - lo / *scale);
        if (z < (float)c->qmin) z = (float)c->qmin;
        if (z > (float)c->qmax) z = (float)c->qmax;
        *zp = z;
    }
}

static inline float int_code(const int_cfg *c, float x, float scale, float zp) {
    float s = x / scale;
    if (!c->sym) s = s + zp;
    float q = rintf(s);
    if (q < (float)c->qmin) q = (float)c->qmin;
    if (q > (float)c->qmax) q = (float)c->qmax;
    return q;
}

/* The clip search's loss: sum of |d|^2.5 = d*d*sqrt|d| (rtn.py _clip_error says why; sqrtf is correctly
 * rounded, as NumPy's sqrt is). */
static float int_clip_error(const int_cfg *c, const float *x, int64_t g, float scale, float zp) {
    float err = 0.0f;
    for (int64_t j = 0; j < g; j++) {
        float q = int_code(c, x[j], scale, zp);
        if (!c->sym) q = q - zp;
        const float d = q * scale - x[j];
        err += (d * d) * sqrtf(fabsf(d));
    }
    return err;
}

typedef struct {
    int_cfg cfg;
    int method;
    const float *src;
    int8_t *q;
    void *scale;
    int8_t *zp;
    int64_t n, g, row_begin, row_end;
} int_rtn_job;

static void *int_rtn_run(void *arg) {
    const int_rtn_job *job = (const int_rtn_job *)arg;
    const int_cfg *c = &job->cfg;
    const int64_t groups = job->n / job->g;
    for (int64_t r = job->row_begin; r < job->row_end; r++) {
        for (int64_t k = 0; k < groups; k++) {
            const int64_t at = r * job->n + k * job->g;
            const float *x = job->src + at;
            float lo = x[0], hi = x[0];
            for (int64_t j = 1; j < job->g; j++) {
                if (x[j] < lo) lo = x[j];
                if (x[j] > hi) hi = x[j];
            }
            if (lo > 0.0f) lo = 0.0f;
            if (hi < 0.0f) hi = 0.0f;
            float scale, zp;
            uint32_t stored;
            int_params(c, lo, hi, &scale, &stored, &zp);
            if (job->method == INT_MSE) {
                float best = int_clip_error(c, x, job->g, scale, zp);
                for (int i = 1; i <= INT_MSE_STEPS; i++) {
                    const float p = (float)(1.0 - (double)i / INT_MSE_GRID);
                    float s2, z2;
                    uint32_t st2;
                    int_params(c, lo * p, hi * p, &s2, &st2, &z2);
                    const float err = int_clip_error(c, x, job->g, s2, z2);
                    if (err < best) { best = err; scale = s2; stored = st2; zp = z2; }
                }
            }
            for (int64_t j = 0; j < job->g; j++) job->q[at + j] = (int8_t)int_code(c, x[j], scale, zp);
            const int64_t si = r * groups + k;
            if (c->dtype == INT_F32) ((uint32_t *)job->scale)[si] = stored;
            else ((uint16_t *)job->scale)[si] = (uint16_t)stored;
            if (job->zp != NULL) job->zp[si] = (int8_t)zp;
        }
    }
    return NULL;
}

static int int_threads(int threads, int64_t rows) {
    if (threads < 1) threads = 1;
    if (threads > INT_MAX_THREADS) threads = INT_MAX_THREADS;
    if (threads > rows) threads = (int)(rows > 0 ? rows : 1);
    return threads;
}

/* int_rtn(src, n, group, bits, sym, dtype, method, q, scale, zp_or_None, threads) */
PyObject *qc_int_rtn(PyObject *self, PyObject *args) {
    Py_buffer src, q, scale, zp;
    PyObject *zp_obj;
    Py_ssize_t n, g;
    int bits, sym, dtype, method, threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nniiiiw*w*Oi", &src, &n, &g, &bits, &sym, &dtype, &method, &q, &scale, &zp_obj,
                          &threads)) return NULL;
    zp.buf = NULL;
    PyObject *result = NULL;
    const Py_ssize_t ssize = dtype == INT_F32 ? 4 : 2;
    if (bits < 2 || bits > 8 || dtype < 0 || dtype > 2 || method < 0 || method > 1 || n <= 0 || g <= 0 || n % g) {
        PyErr_SetString(PyExc_ValueError, "int_rtn: bad bits, dtype, method or group size");
        goto done;
    }
    const int64_t rows = src.len / (Py_ssize_t)(n * sizeof(float));
    if (src.len != rows * n * (Py_ssize_t)sizeof(float) || q.len != rows * n || scale.len != rows * (n / g) * ssize) {
        PyErr_SetString(PyExc_ValueError, "int_rtn: buffer sizes do not match the rows");
        goto done;
    }
    if (zp_obj != Py_None) {
        if (PyObject_GetBuffer(zp_obj, &zp, PyBUF_WRITABLE) < 0) goto done;
        if (zp.len != rows * (n / g)) {
            PyErr_SetString(PyExc_ValueError, "int_rtn: zero point buffer size does not match");
            goto done;
        }
    }
    threads = int_threads(threads, rows);
    int_rtn_job jobs[INT_MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        jobs[t] = (int_rtn_job){{bits, sym, dtype, -(1 << (bits - 1)), (1 << (bits - 1)) - 1}, method,
                                (const float *)src.buf, (int8_t *)q.buf, scale.buf, (int8_t *)zp.buf,
                                n, g, rows * t / threads, rows * (t + 1) / threads};
    }
    if (rows > 0) qc_parallel(int_rtn_run, jobs, sizeof(int_rtn_job), threads);
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&q);
    PyBuffer_Release(&scale);
    if (zp.buf != NULL) PyBuffer_Release(&zp);
    return result;
}

typedef struct {
    const int8_t *q;
    uint32_t *out;
    int64_t n, words, bits, row_begin, row_end;
} int_pack_job;

static void *int_pack_run(void *arg) {
    const int_pack_job *job = (const int_pack_job *)arg;
    const uint32_t offset = 1u << (job->bits - 1);
    for (int64_t r = job->row_begin; r < job->row_end; r++) {
        const int8_t *q = job->q + r * job->n;
        uint32_t *w = job->out + r * job->words;
        memset(w, 0, (size_t)job->words * 4);
        for (int64_t i = 0; i < job->n; i++) {
            const uint32_t u = (uint32_t)((int32_t)q[i] + (int32_t)offset);
            const int64_t pos = i * job->bits;
            const int64_t word = pos >> 5;
            const uint32_t o = (uint32_t)(pos & 31);
            w[word] |= u << o;
            if (o + (uint32_t)job->bits > 32u) w[word + 1] |= u >> (32u - o);
        }
    }
    return NULL;
}

/* int_pack(q, n, bits, out, threads): (rows, n) int8 codes -> (rows, ceil(n*bits/32)) int32 words. */
PyObject *qc_int_pack(PyObject *self, PyObject *args) {
    Py_buffer q, out;
    Py_ssize_t n;
    int bits, threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*niw*i", &q, &n, &bits, &out, &threads)) return NULL;
    PyObject *result = NULL;
    const int64_t words = (n * bits + 31) / 32;
    const int64_t rows = n > 0 ? q.len / n : 0;
    if (bits < 1 || bits > 8 || n <= 0 || q.len != rows * n || out.len != rows * words * 4) {
        PyErr_SetString(PyExc_ValueError, "int_pack: buffer sizes do not match");
        goto done;
    }
    threads = int_threads(threads, rows);
    int_pack_job jobs[INT_MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        jobs[t] = (int_pack_job){(const int8_t *)q.buf, (uint32_t *)out.buf, n, words, bits,
                                 rows * t / threads, rows * (t + 1) / threads};
    }
    if (rows > 0) qc_parallel(int_pack_run, jobs, sizeof(int_pack_job), threads);
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&q);
    PyBuffer_Release(&out);
    return result;
}
