/* Python binding of the kernels: quantize(type_id, src, n_per_row, dst, imatrix, threads, isa=None, widen=-1,
 * row_order=None).
 *
 * The GIL is released for the whole call. The threads take rows from a shared counter a few at a time (about
 * QC_GRAB_VALUES values per take) instead of one fixed share each: on a machine where the read-ahead and
 * write-behind threads (or other processes) take a core for a while, a fixed share leaves the other threads
 * idle at the end of every tensor waiting for the one that was held up; taking rows as they go, every thread
 * works until the tensor is done. With widen
 * 0 (F16) or 1 (BF16) src holds 16-bit rows, and each thread widens one row at a time into a buffer of its own
 * before quantizing it: no float32 copy of the tensor is made, and widening runs on every thread. Such a call
 * also scans the rows it widens (as scan() does) and returns what it found, so the caller need not read the
 * tensor once more to check it.
 * row_order (int64, one per row) makes output row r the quantized source row row_order[r]: a transform that only
 * reorders rows (llama's Q/K rope permutation) is then an index, not a copy of the tensor.
 * Each row is quantized independently, so the bytes do not depend on the thread count. isa names the
 * instruction-set variant (dispatch.c); None takes the best one this machine runs. Every variant gives the
 * same bytes, so the choice only matters for speed and for tests that compare the variants. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include "dispatch.h"
#include "parallel.h"

/* The variants this machine runs, best first; found once at import. */
static const qc_variant *qc_usable[QC_MAX_VARIANTS];
static int qc_nusable;

/* The variant named by a Python str, or the best one for None; NULL with ValueError set when it is not usable. */
static const qc_variant *qc_variant_arg(PyObject *isa) {
    if (isa == NULL || isa == Py_None) return qc_usable[0];
    const char *name = PyUnicode_AsUTF8(isa);
    if (name == NULL) return NULL;
    const qc_variant *v = qc_find_variant(name);
    if (v == NULL) PyErr_Format(PyExc_ValueError, "instruction-set variant %R is not available on this machine", isa);
    return v;
}

/* NaN/Inf count and largest magnitude bits of n 16-bit values whose exponent is all ones from `exp` up (F16
 * 0x7C00, BF16 0x7F80); scan() and the widening quantizer share it. */
static inline void qc_scan16(const uint16_t *x, int64_t n, uint16_t exp, int64_t *bad, uint16_t *top) {
    int64_t b = 0;
    uint16_t t = *top;
    for (int64_t i = 0; i < n; i++) {
        const uint16_t m = (uint16_t)(x[i] & 0x7FFFu);
        b += (m >= exp);
        t = m > t ? m : t;
    }
    *bad += b;
    *top = t;
}

/* Rows a thread takes at a time: enough values that the counter is touched every few tens of microseconds, few
 * enough that the last take of a tensor is short. */
#define QC_GRAB_VALUES 65536

typedef struct {
    qc_row_quantizer fn;
    qc_converter widen;          /* NULL: src holds float32 rows */
    uint16_t exp;                /* with widen: the stored type's all-ones exponent, for the scan */
    int64_t nonfinite;           /* with widen: what the scan of this job's rows found */
    uint16_t max_bits;
    const uint8_t *src;
    uint8_t *dst;
    const float *qw;
    int64_t n_per_row;
    int64_t src_row_bytes;
    int64_t row_bytes;
    int64_t nrows;
    int64_t grab;                /* rows per take from `next` */
    _Atomic int64_t *next;       /* the first row no thread has taken yet, shared by the jobs of one call */
    const int64_t *order;        /* NULL, or the source row of each output row */
    int failed;                  /* set when the row buffer could not be allocated */
} qc_job;

static void *qc_run_job(void *arg) {
    qc_job *job = (qc_job *)arg;
    float *row = NULL;
    if (job->widen != NULL) {
        /* one row stays in L1/L2 between widening and quantizing, so the float32 values never reach memory */
        row = (float *)malloc((size_t)job->n_per_row * sizeof(float));
        if (row == NULL) {
            /* the rows are left to the other jobs; the caller reports the failure once they are done */
            job->failed = 1;
            return NULL;
        }
    }
    for (;;) {
        const int64_t begin = atomic_fetch_add_explicit(job->next, job->grab, memory_order_relaxed);
        if (begin >= job->nrows) break;
        const int64_t end = begin + job->grab < job->nrows ? begin + job->grab : job->nrows;
        for (int64_t r = begin; r < end; r++) {
            const uint8_t *src = job->src + (job->order != NULL ? job->order[r] : r) * job->src_row_bytes;
            if (row != NULL) {
                /* the row is in L1 here, so checking it costs a few instructions per value, not a pass over memory */
                qc_scan16((const uint16_t *)src, job->n_per_row, job->exp, &job->nonfinite, &job->max_bits);
                job->widen(src, row, job->n_per_row);
            }
            job->fn(row != NULL ? row : (const float *)src, job->dst + r * job->row_bytes, job->n_per_row, job->qw);
        }
    }
    free(row);
    return NULL;
}

/* Declared in parallel.h, which says what it promises; int_rtn.c and nf4.c share it. */
void qc_parallel(void *(*fn)(void *), void *jobs, size_t job_size, int n) {
    pthread_t tids[QC_MAX_THREADS];
    int started = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int t = 1; t < n; t++) {
        if (pthread_create(&tids[t], NULL, fn, (char *)jobs + t * job_size) != 0) break;
        started = t;
    }
    fn(jobs);
    for (int t = started + 1; t < n; t++) fn((char *)jobs + t * job_size);
    for (int t = 1; t <= started; t++) pthread_join(tids[t], NULL);
    Py_END_ALLOW_THREADS
}

static PyObject *qc_quantize(PyObject *self, PyObject *args) {
    int type_id, threads, widen = -1;
    Py_buffer src, dst, qw, order;
    PyObject *qw_obj, *isa = NULL, *order_obj = Py_None;
    Py_ssize_t n_per_row;
    (void)self;
    if (!PyArg_ParseTuple(args, "iy*nw*Oi|OiO", &type_id, &src, &n_per_row, &dst, &qw_obj, &threads, &isa, &widen,
                          &order_obj)) {
        return NULL;
    }
    qw.buf = NULL;
    order.buf = NULL;
    PyObject *result = NULL;
    const qc_variant *variant = qc_variant_arg(isa);
    if (variant == NULL) goto done;
    const qc_kernel *kernel = variant->find_kernel(type_id);
    if (kernel == NULL) {
        PyErr_Format(PyExc_NotImplementedError, "no C kernel for ggml type %d", type_id);
        goto done;
    }
    if (widen < -1 || widen > 1) {
        PyErr_SetString(PyExc_ValueError, "widen must be -1 (float32 rows), 0 (F16) or 1 (BF16)");
        goto done;
    }
    /* The kernels trust their arguments: every size is checked here, before any byte is written. */
    if (n_per_row <= 0 || n_per_row % kernel->block_values != 0 ||
        n_per_row > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(float)) {
        PyErr_Format(PyExc_ValueError, "n_per_row=%zd is not a positive multiple of the block size %d of ggml type %d",
                     n_per_row, kernel->block_values, type_id);
        goto done;
    }
    const Py_ssize_t src_row = n_per_row * (Py_ssize_t)(widen < 0 ? sizeof(float) : sizeof(uint16_t));
    const Py_ssize_t qw_len = n_per_row * (Py_ssize_t)sizeof(float);
    if (src.len % src_row != 0) {
        PyErr_Format(PyExc_ValueError, "src holds %zd bytes, not a whole number of %s rows of %zd values",
                     src.len, widen < 0 ? "float32" : "16-bit", n_per_row);
        goto done;
    }
    const int64_t nrows = src.len / src_row;
    const int64_t row_bytes = (int64_t)(n_per_row / kernel->block_values) * kernel->block_bytes;
    if ((int64_t)dst.len != nrows * row_bytes) {
        PyErr_Format(PyExc_ValueError, "dst holds %zd bytes but %lld rows of ggml type %d need %lld",
                     dst.len, (long long)nrows, type_id, (long long)(nrows * row_bytes));
        goto done;
    }
    if (qw_obj != Py_None) {
        if (PyObject_GetBuffer(qw_obj, &qw, PyBUF_SIMPLE) < 0) goto done;
        if (qw.len != qw_len) {
            PyErr_SetString(PyExc_ValueError, "imatrix must hold one float32 per column");
            goto done;
        }
    }
    if (order_obj != Py_None) {
        if (PyObject_GetBuffer(order_obj, &order, PyBUF_SIMPLE) < 0) goto done;
        if (order.len != nrows * (Py_ssize_t)sizeof(int64_t)) {
            PyErr_SetString(PyExc_ValueError, "row_order must hold one int64 per row");
            goto done;
        }
        const int64_t *o = (const int64_t *)order.buf;
        for (int64_t r = 0; r < nrows; r++) {
            if (o[r] < 0 || o[r] >= nrows) {
                PyErr_Format(PyExc_ValueError, "row_order[%lld] = %lld is not a row", (long long)r, (long long)o[r]);
                goto done;
            }
        }
    }
    if (threads < 1) threads = 1;
    if (threads > nrows) threads = (int)nrows;
    if (threads > QC_MAX_THREADS) threads = QC_MAX_THREADS;

    qc_job jobs[QC_MAX_THREADS];
    _Atomic int64_t next_row = 0;
    int64_t grab = QC_GRAB_VALUES / n_per_row;
    /* at least four takes per thread, so a thread that starts late still gets rows of a small tensor */
    const int64_t fair = threads > 0 ? nrows / (4 * (int64_t)threads) : 0;
    if (grab > fair) grab = fair;
    if (grab < 1) grab = 1;
    for (int t = 0; t < threads; t++) {
        jobs[t] = (qc_job){kernel->fn, widen < 0 ? NULL : variant->convert[widen], widen == 0 ? 0x7C00 : 0x7F80, 0, 0,
                           (const uint8_t *)src.buf,
                           (uint8_t *)dst.buf, (const float *)qw.buf, n_per_row, src_row, row_bytes, nrows, grab,
                           &next_row, (const int64_t *)order.buf, 0};
    }
    if (nrows > 0) qc_parallel(qc_run_job, jobs, sizeof(qc_job), threads);
    int64_t bad = 0;
    uint16_t top = 0;
    for (int t = 0; t < threads; t++) {
        if (jobs[t].failed) {
            PyErr_NoMemory();
            goto done;
        }
        bad += jobs[t].nonfinite;
        top = jobs[t].max_bits > top ? jobs[t].max_bits : top;
    }
    if (widen >= 0) {
        result = Py_BuildValue("(LI)", (long long)bad, (unsigned int)top);
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    if (qw.buf != NULL) PyBuffer_Release(&qw);
    if (order.buf != NULL) PyBuffer_Release(&order);
    return result;
}

typedef struct {
    qc_converter fn;
    const uint8_t *src;
    uint8_t *dst;
    int64_t src_size, dst_size, begin, end;
} qc_conv_job;

static void *qc_run_conv(void *arg) {
    const qc_conv_job *job = (const qc_conv_job *)arg;
    job->fn(job->src + job->begin * job->src_size, (float *)(job->dst + job->begin * job->dst_size), job->end - job->begin);
    return NULL;
}

/* convert(kind, src, dst, threads, isa=None): kind 0 f16->f32, 1 bf16->f32, 2 f32->f16; element-wise, split
 * across threads. */
static PyObject *qc_convert(PyObject *self, PyObject *args) {
    int kind, threads;
    Py_buffer src, dst;
    PyObject *isa = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "iy*w*i|O", &kind, &src, &dst, &threads, &isa)) return NULL;
    static const int64_t sizes[3][2] = {{2, 4}, {2, 4}, {4, 2}};
    PyObject *result = NULL;
    const qc_variant *variant = qc_variant_arg(isa);
    if (variant == NULL) goto done;
    if (kind < 0 || kind > 2) {
        PyErr_SetString(PyExc_ValueError, "unknown conversion kind");
        goto done;
    }
    const int64_t n = src.len / sizes[kind][0];
    if (src.len % sizes[kind][0] != 0 || dst.len != n * sizes[kind][1]) {
        PyErr_SetString(PyExc_ValueError, "src and dst sizes do not match the conversion");
        goto done;
    }
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    if (n < (1 << 16)) threads = 1;  /* not worth a thread for small tensors */
    qc_conv_job jobs[64];
    for (int t = 0; t < threads; t++) {
        jobs[t] = (qc_conv_job){variant->convert[kind], (const uint8_t *)src.buf, (uint8_t *)dst.buf, sizes[kind][0],
                                sizes[kind][1], n * t / threads, n * (t + 1) / threads};
    }
    qc_parallel(qc_run_conv, jobs, sizeof(qc_conv_job), threads);
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

/* scan(kind, src, threads) -> (nonfinite, max_abs_bits) over F16 (kind 0), BF16 (1) or F32 (2) values: how many
 * are NaN or Inf (an all-ones exponent) and the largest magnitude as a bit pattern without the sign. Magnitude
 * bits order like the magnitudes they encode, so comparing max_abs_bits with a limit's bits tells whether every
 * value is within it (NaN and Inf lie above every finite pattern). One pass, split across threads: it replaces
 * three NumPy passes and their temporaries over every tensor of a conversion (issue 11). */
typedef struct {
    int kind;
    const uint8_t *src;
    int64_t begin, end;
    int64_t nonfinite;
    uint32_t max_bits;
} qc_scan_job;

static void *qc_run_scan(void *arg) {
    qc_scan_job *job = (qc_scan_job *)arg;
    int64_t bad = 0;
    uint32_t top = 0;
    if (job->kind == 2) {
        const uint32_t *x = (const uint32_t *)job->src;
        for (int64_t i = job->begin; i < job->end; i++) {
            const uint32_t m = x[i] & 0x7FFFFFFFu;
            bad += (m >= 0x7F800000u);
            top = m > top ? m : top;
        }
    } else {
        uint16_t top16 = 0;
        qc_scan16((const uint16_t *)job->src + job->begin, job->end - job->begin, job->kind == 0 ? 0x7C00u : 0x7F80u,
                  &bad, &top16);
        top = top16;
    }
    job->nonfinite = bad;
    job->max_bits = top;
    return NULL;
}

static PyObject *qc_scan(PyObject *self, PyObject *args) {
    int kind, threads;
    Py_buffer src;
    (void)self;
    if (!PyArg_ParseTuple(args, "iy*i", &kind, &src, &threads)) return NULL;
    PyObject *result = NULL;
    const int64_t size = kind == 2 ? 4 : 2;
    if (kind < 0 || kind > 2) {
        PyErr_SetString(PyExc_ValueError, "scan kind must be 0 (F16), 1 (BF16) or 2 (F32)");
        goto done;
    }
    if (src.len % size != 0) {
        PyErr_SetString(PyExc_ValueError, "src is not a whole number of values");
        goto done;
    }
    const int64_t n = src.len / size;
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    if (n < (1 << 18)) threads = 1;  /* a thread costs more than scanning a small tensor */
    qc_scan_job jobs[64];
    for (int t = 0; t < threads; t++) {
        jobs[t] = (qc_scan_job){kind, (const uint8_t *)src.buf, n * t / threads, n * (t + 1) / threads, 0, 0};
    }
    qc_parallel(qc_run_scan, jobs, sizeof(qc_scan_job), threads);
    int64_t bad = 0;
    uint32_t top = 0;
    for (int t = 0; t < threads; t++) {
        bad += jobs[t].nonfinite;
        top = jobs[t].max_bits > top ? jobs[t].max_bits : top;
    }
    result = Py_BuildValue("(LI)", (long long)bad, (unsigned int)top);
done:
    PyBuffer_Release(&src);
    return result;
}

static PyObject *qc_has_type(PyObject *self, PyObject *arg) {
    (void)self;
    long type_id = PyLong_AsLong(arg);
    if (type_id == -1 && PyErr_Occurred()) return NULL;
    return PyBool_FromLong(qc_usable[0]->find_kernel((int)type_id) != NULL);
}

static PyObject *qc_layout(PyObject *self, PyObject *arg) {
    (void)self;
    long type_id = PyLong_AsLong(arg);
    if (type_id == -1 && PyErr_Occurred()) return NULL;
    const qc_kernel *kernel = qc_usable[0]->find_kernel((int)type_id);
    if (kernel == NULL) Py_RETURN_NONE;
    return Py_BuildValue("(ii)", kernel->block_values, kernel->block_bytes);
}

static PyObject *qc_isas(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    PyObject *names = PyTuple_New(qc_nusable);
    if (names == NULL) return NULL;
    for (int i = 0; i < qc_nusable; i++) {
        PyObject *name = PyUnicode_FromString(qc_usable[i]->name);
        if (name == NULL) {
            Py_DECREF(names);
            return NULL;
        }
        PyTuple_SET_ITEM(names, i, name);
    }
    return names;
}

/* Integer schemes for safetensors folders (int_rtn.c). */
PyObject *qc_int_rtn(PyObject *self, PyObject *args);
PyObject *qc_int_pack(PyObject *self, PyObject *args);
PyObject *qc_nf4_blocks(PyObject *self, PyObject *args);
/* HQQ zero points for asymmetric integer schemes (int_hqq.c). */
PyObject *qc_int_hqq(PyObject *self, PyObject *args);
/* GPTQ's per-column loop (gptq.c). */
PyObject *qc_gptq_block(PyObject *self, PyObject *args);

static PyMethodDef qc_methods[] = {
    {"int_rtn", qc_int_rtn, METH_VARARGS, "int_rtn(src, n, group, bits, sym, dtype, method, q, scale, zp, threads)."},
    {"int_pack", qc_int_pack, METH_VARARGS, "int_pack(q, n, bits, out, threads): int8 codes -> int32 bit stream."},
    {"int_hqq", qc_int_hqq, METH_VARARGS, "int_hqq(src, n, group, bits, dtype, scale, zp, q, threads): HQQ scales, zero points and codes."},
    {"nf4_blocks", qc_nf4_blocks, METH_VARARGS, "nf4_blocks(x, idx, absmax, threads): NF4 level indices and block absmax."},
    {"gptq_block", qc_gptq_block, METH_VARARGS,
     "gptq_block(w, cols, i1, u, group_of, fresh, g, bits, sym, dtype, scale, zp, q, err, threads): GPTQ's column loop."},
    {"quantize", qc_quantize, METH_VARARGS,
     "quantize(type_id, src, n_per_row, dst, imatrix, threads, isa=None, widen=-1, row_order=None): quantize rows "
     "of src into dst (row r from src row row_order[r] when given); src holds float32 rows, or with widen 0/1 "
     "F16/BF16 rows widened one at a time, and then returns scan()'s (nonfinite, max_abs_bits) of them."},
    {"scan", qc_scan, METH_VARARGS,
     "scan(kind, src, threads) -> (nonfinite, max_abs_bits) of F16 (0), BF16 (1) or F32 (2) values."},
    {"convert", qc_convert, METH_VARARGS,
     "convert(kind, src, dst, threads, isa=None): 0 f16->f32, 1 bf16->f32, 2 f32->f16 (round to nearest even)."},
    {"has_type", qc_has_type, METH_O, "has_type(type_id) -> bool: whether a C kernel exists for the type."},
    {"layout", qc_layout, METH_O,
     "layout(type_id) -> (block_values, block_bytes) of the type's C kernel, or None without a kernel."},
    {"isas", qc_isas, METH_NOARGS,
     "isas() -> the instruction-set variants this machine runs, best first (quantize's and convert's isa=)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef qc_module = {PyModuleDef_HEAD_INIT, "_kernels", "quantcli's C quantization kernels.",
                                       -1, qc_methods};

PyMODINIT_FUNC PyInit__kernels(void) {
    qc_nusable = qc_usable_variants(qc_usable, QC_MAX_VARIANTS);
    return PyModule_Create(&qc_module);
}
