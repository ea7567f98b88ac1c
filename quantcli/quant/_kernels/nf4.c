/* C twin of the blockwise part of quantcli/quant/int/nf4.py: per block of 64 values, absmax, the nearest NF4
 * level of x * (1 / absmax) clamped to [-1, 1] (the count of level midpoints strictly below it, as the reference's
 * searchsorted(side="left")), and two indices per byte, the first in the high nibble. Float32 throughout, the
 * same operations in the same order as the reference, so the bytes are equal. The double quantization of the
 * absmax values (a few thousand numbers) stays in NumPy. Blocks are independent: threads split them. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#include "parallel.h"

#define NF4_BLOCK 64
#define NF4_MAX_THREADS 64

static const float nf4_levels[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
    -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
    0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

typedef struct {
    const float *x;
    uint8_t *idx;
    float *absmax;
    int64_t n, block_begin, block_end;
} nf4_job;

static void *nf4_run(void *arg) {
    const nf4_job *job = (const nf4_job *)arg;
    float mids[15];
    for (int i = 0; i < 15; i++) mids[i] = (nf4_levels[i] + nf4_levels[i + 1]) / 2.0f;
    for (int64_t b = job->block_begin; b < job->block_end; b++) {
        const int64_t start = b * NF4_BLOCK;
        const int64_t stop = start + NF4_BLOCK < job->n ? start + NF4_BLOCK : job->n;
        float amax = 0.0f;
        for (int64_t i = start; i < stop; i++) {
            const float a = fabsf(job->x[i]);
            if (a > amax) amax = a;
        }
        job->absmax[b] = amax;
        const float inv = 1.0f / (amax > 1e-38f ? amax : 1e-38f);
        for (int64_t i = start; i < stop; i++) {
            float s = job->x[i] * inv;
            if (s < -1.0f) s = -1.0f;
            if (s > 1.0f) s = 1.0f;
            uint8_t q = 0;
            while (q < 15 && mids[q] < s) q++;
            job->idx[i] = q;
        }
    }
    return NULL;
}

/* nf4_blocks(x, idx, absmax, threads): float32 x (n) -> uint8 level indices (n) and float32 absmax per block. */
PyObject *qc_nf4_blocks(PyObject *self, PyObject *args) {
    Py_buffer x, idx, absmax;
    int threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*w*i", &x, &idx, &absmax, &threads)) return NULL;
    PyObject *result = NULL;
    const int64_t n = x.len / (Py_ssize_t)sizeof(float);
    const int64_t blocks = (n + NF4_BLOCK - 1) / NF4_BLOCK;
    if (x.len != n * (Py_ssize_t)sizeof(float) || idx.len != n || absmax.len != blocks * (Py_ssize_t)sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "nf4_blocks: buffer sizes do not match");
        goto done;
    }
    if (threads < 1) threads = 1;
    if (threads > NF4_MAX_THREADS) threads = NF4_MAX_THREADS;
    if (threads > blocks) threads = (int)(blocks > 0 ? blocks : 1);
    nf4_job jobs[NF4_MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        jobs[t] = (nf4_job){(const float *)x.buf, (uint8_t *)idx.buf, (float *)absmax.buf, n,
                            blocks * t / threads, blocks * (t + 1) / threads};
    }
    if (blocks > 0) qc_parallel(nf4_run, jobs, sizeof(nf4_job), threads);
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&x);
    PyBuffer_Release(&idx);
    PyBuffer_Release(&absmax);
    return result;
}
