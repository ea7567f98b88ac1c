/* The one table from ggml type id to C row quantizer. A type's kernel lives in its own file (q4_0.c,
 * q4_k.c, ...) and is listed here; types without an entry fall back to the NumPy reference. */
#include "kernels.h"

void qc_quantize_row_q4_0(const float *x, void *y, int64_t n, const float *qw);
void qc_quantize_row_q4_1(const float *x, void *y, int64_t n, const float *qw);
void qc_quantize_row_q5_0(const float *x, void *y, int64_t n, const float *qw);
void qc_quantize_row_q5_1(const float *x, void *y, int64_t n, const float *qw);
void qc_quantize_row_q8_0(const float *x, void *y, int64_t n, const float *qw);
void qc_quantize_row_q2_k(const float *x, void *y, int64_t n, const float *qw);
void qc_quantize_row_q3_k(const float *x, void *y, int64_t n, const float *qw);
void qc_quantize_row_q4_k(const float *x, void *y, int64_t n, const float *qw);
void qc_quantize_row_q5_k(const float *x, void *y, int64_t n, const float *qw);
void qc_quantize_row_q6_k(const float *x, void *y, int64_t n, const float *qw);
void qc_quantize_row_iq4_nl(const float *x, void *y, int64_t n, const float *qw);
void qc_quantize_row_iq4_xs(const float *x, void *y, int64_t n, const float *qw);
void qc_quantize_row_tq1_0(const float *x, void *y, int64_t n, const float *qw);
void qc_quantize_row_tq2_0(const float *x, void *y, int64_t n, const float *qw);

/* Weak stubs: a kernel file that is not there yet leaves its entry NULL instead of breaking the link. */
#define QC_WEAK(name) __attribute__((weak)) void name(const float *x, void *y, int64_t n, const float *qw);
QC_WEAK(qc_quantize_row_q4_0) QC_WEAK(qc_quantize_row_q4_1) QC_WEAK(qc_quantize_row_q5_0)
QC_WEAK(qc_quantize_row_q5_1) QC_WEAK(qc_quantize_row_q8_0) QC_WEAK(qc_quantize_row_q2_k)
QC_WEAK(qc_quantize_row_q3_k) QC_WEAK(qc_quantize_row_q4_k) QC_WEAK(qc_quantize_row_q5_k)
QC_WEAK(qc_quantize_row_q6_k) QC_WEAK(qc_quantize_row_iq4_nl) QC_WEAK(qc_quantize_row_iq4_xs)
QC_WEAK(qc_quantize_row_tq1_0) QC_WEAK(qc_quantize_row_tq2_0)

qc_row_quantizer qc_find_quantizer(int type_id) {
    switch (type_id) {
    case QC_Q4_0: return qc_quantize_row_q4_0;
    case QC_Q4_1: return qc_quantize_row_q4_1;
    case QC_Q5_0: return qc_quantize_row_q5_0;
    case QC_Q5_1: return qc_quantize_row_q5_1;
    case QC_Q8_0: return qc_quantize_row_q8_0;
    case QC_Q2_K: return qc_quantize_row_q2_k;
    case QC_Q3_K: return qc_quantize_row_q3_k;
    case QC_Q4_K: return qc_quantize_row_q4_k;
    case QC_Q5_K: return qc_quantize_row_q5_k;
    case QC_Q6_K: return qc_quantize_row_q6_k;
    case QC_IQ4_NL: return qc_quantize_row_iq4_nl;
    case QC_IQ4_XS: return qc_quantize_row_iq4_xs;
    case QC_TQ1_0: return qc_quantize_row_tq1_0;
    case QC_TQ2_0: return qc_quantize_row_tq2_0;
    default: return NULL;
    }
}
