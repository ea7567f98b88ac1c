/* GPTQ's per-column loop inside one block of columns: the C twin of _block_reference in
 * quantcli/quant/algorithms/gptq.py.
 *
 * For each row and each column i of the block: when i starts a scale group, the group's scale (and zero point)
 * from the row's error-updated values w[i..i+g) by quant/int/rtn.py's min-max rule; the code of w[i]; the
 * dequantized value rounded to the scale dtype; the error e = (w[i] - dq) / U[i][i]; and w[j] -= e * U[i][j]
 * for the block's later columns. Rows never read one another, so they are split across threads and the
 * result does not depend on the thread count. Every step is float32 in the reference's order (division,
 * zero-point addition, rintf for NumPy's rint, the product e * U[i][j] rounded before the subtraction), and
 * setup.py's -ffp-contract=off keeps the compiler from fusing it into an FMA, so the bits equal NumPy's. */
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

enum { GPTQ_F32 = 0, GPTQ_F16 = 1, GPTQ_BF16 = 2 };

/* v rounded to the scale dtype, as its float32 value (rtn.py's round_to). */
static float gptq_round(float v, int dtype) {
    if (dtype == GPTQ_F16) return qc_fp16_to_fp32(qc_fp32_to_fp16(v));
    if (dtype == GPTQ_BF16) {
        uint32_t x;
        memcpy(&x, &v, 4);
        x = ((x + (((x >> 16) & 1u) + 0x7fffu)) >> 16) << 16;
        float out;
        memcpy(&out, &x, 4);
        return out;
    }
    return v;
}

typedef struct {
    float *w;                   /* rows x cols, the block starts at column i1 */
    const float *u;             /* count x count */
    const int32_t *group_of;    /* count */
    const uint8_t *fresh;       /* count */
    float *scale, *zp;          /* rows x ngroups */
    int8_t *q;                  /* rows x cols */
    float *err;                 /* rows x count */
    int64_t cols, i1, count, g, ngroups, row_begin, row_end;
    int sym, dtype, qmin, qmax;
} gptq_job;

/* Scale and zero point of a group whose range [lo, hi] holds 0 (rtn.py's _params). */
static void gptq_params(const gptq_job *j, float lo, float hi, float *scale, float *zp) {
    float raw;
    if (j->sym) {
        const float amax = -lo > hi ? -lo : hi;
        raw = amax / (float)((double)(j->qmax - j->qmin) / 2.0);
    } else {
        raw = (hi - lo) / (float)(j->qmax - j->qmin);
    }
    float s = gptq_round(raw, j->dtype);
    if (s == 0.0f) s = gptq_round(j->dtype == GPTQ_F16 ? 6.103515625e-05f : 1.17549435e-38f, j->dtype);
    *scale = s;
    *zp = 0.0f;
    if (!j->sym) {
        float z = rintf((float)j->qmin - lo / s);
        if (z < (float)j->qmin) z = (float)j->qmin;
        if (z > (float)j->qmax) z = (float)j->qmax;
        *zp = z;
    }
}

static void *gptq_run(void *arg) {
    const gptq_job *j = (const gptq_job *)arg;
    const int64_t count = j->count;
    for (int64_t r = j->row_begin; r < j->row_end; r++) {
        float *w = j->w + r * j->cols + j->i1;
        float *sc = j->scale + r * j->ngroups;
        float *zr = j->zp + r * j->ngroups;
        int8_t *qr = j->q + r * j->cols + j->i1;
        float *er = j->err + r * count;
        for (int64_t i = 0; i < count; i++) {
            const int32_t gi = j->group_of[i];
            if (j->fresh[i]) {
                float lo = w[i], hi = w[i];
                for (int64_t k = i + 1; k < i + j->g; k++) {
                    if (w[k] < lo) lo = w[k];
                    if (w[k] > hi) hi = w[k];
                }
                if (lo > 0.0f) lo = 0.0f;
                if (hi < 0.0f) hi = 0.0f;
                gptq_params(j, lo, hi, &sc[gi], &zr[gi]);
            }
            const float s = sc[gi], z = zr[gi];
            float x = w[i] / s;
            if (!j->sym) x = x + z;
            float c = rintf(x);
            if (c < (float)j->qmin) c = (float)j->qmin;
            if (c > (float)j->qmax) c = (float)j->qmax;
            const float dq = gptq_round(j->sym ? c * s : (c - z) * s, j->dtype);
            const float e = (w[i] - dq) / j->u[i * count + i];
            qr[i] = (int8_t)c;
            er[i] = e;
            const float *ui = j->u + i * count;
            for (int64_t k = i + 1; k < count; k++) {
                const float t = e * ui[k];
                w[k] = w[k] - t;
            }
        }
    }
    return NULL;
}

/* gptq_block(w, cols, i1, u, group_of, fresh, g, bits, sym, dtype, scale, zp, q, err, threads) */
PyObject *qc_gptq_block(PyObject *self, PyObject *args) {
    Py_buffer w, u, group_of, fresh, scale, zp, q, err;
    Py_ssize_t cols, i1, g;
    int bits, sym, dtype, threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "w*nny*y*y*niiiw*w*w*w*i", &w, &cols, &i1, &u, &group_of, &fresh, &g, &bits, &sym,
                          &dtype, &scale, &zp, &q, &err, &threads)) return NULL;
    PyObject *result = NULL;
    const int64_t count = (int64_t)(fresh.len);
    const int64_t rows = cols > 0 ? w.len / (Py_ssize_t)(cols * sizeof(float)) : 0;
    const int64_t ngroups = rows > 0 ? scale.len / (Py_ssize_t)(rows * sizeof(float)) : 0;
    if (bits < 2 || bits > 8 || dtype < 0 || dtype > 2 || cols <= 0 || g <= 0 || i1 < 0 || i1 + count > cols ||
        w.len != rows * cols * (Py_ssize_t)sizeof(float) || u.len != count * count * (Py_ssize_t)sizeof(float) ||
        group_of.len != count * 4 || scale.len != rows * ngroups * (Py_ssize_t)sizeof(float) || zp.len != scale.len ||
        q.len != rows * cols || err.len != rows * count * (Py_ssize_t)sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "gptq_block: buffer sizes do not match");
        goto done;
    }
    const int32_t *go = (const int32_t *)group_of.buf;
    const uint8_t *fr = (const uint8_t *)fresh.buf;
    for (int64_t i = 0; i < count; i++) {
        if (go[i] < 0 || go[i] >= ngroups || (fr[i] && i + g > count)) {
            PyErr_SetString(PyExc_ValueError, "gptq_block: a group index is out of range or a group leaves the block");
            goto done;
        }
    }
    if (threads < 1) threads = 1;
    if (threads > QC_MAX_THREADS) threads = QC_MAX_THREADS;
    if (threads > rows) threads = (int)(rows > 0 ? rows : 1);
    gptq_job jobs[QC_MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        jobs[t] = (gptq_job){(float *)w.buf, (const float *)u.buf, go, fr, (float *)scale.buf, (float *)zp.buf,
                             (int8_t *)q.buf, (float *)err.buf, cols, i1, count, g, ngroups,
                             rows * t / threads, rows * (t + 1) / threads,
                             sym, dtype, -(1 << (bits - 1)), (1 << (bits - 1)) - 1};
    }
    if (rows > 0 && count > 0) qc_parallel(gptq_run, jobs, sizeof(gptq_job), threads);
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&w);
    PyBuffer_Release(&u);
    PyBuffer_Release(&group_of);
    PyBuffer_Release(&fresh);
    PyBuffer_Release(&scale);
    PyBuffer_Release(&zp);
    PyBuffer_Release(&q);
    PyBuffer_Release(&err);
    return result;
}
