/* The one table from ggml type id to C kernel. A type's kernel lives in its own file (q4_0.c, q4_k.c, ...),
 * which also states its block layout (qc_kernel), and is listed here; types without an entry fall back to the
 * NumPy reference. */
#include "kernels.h"

extern const qc_kernel qc_kernel_q4_0, qc_kernel_q4_1, qc_kernel_q5_0, qc_kernel_q5_1, qc_kernel_q8_0;
extern const qc_kernel qc_kernel_q2_k, qc_kernel_q3_k, qc_kernel_q4_k, qc_kernel_q5_k, qc_kernel_q6_k;
extern const qc_kernel qc_kernel_iq4_nl, qc_kernel_iq4_xs, qc_kernel_tq1_0, qc_kernel_tq2_0;

const qc_kernel *qc_find_kernel(int type_id) {
    switch (type_id) {
    case QC_Q4_0: return &qc_kernel_q4_0;
    case QC_Q4_1: return &qc_kernel_q4_1;
    case QC_Q5_0: return &qc_kernel_q5_0;
    case QC_Q5_1: return &qc_kernel_q5_1;
    case QC_Q8_0: return &qc_kernel_q8_0;
    case QC_Q2_K: return &qc_kernel_q2_k;
    case QC_Q3_K: return &qc_kernel_q3_k;
    case QC_Q4_K: return &qc_kernel_q4_k;
    case QC_Q5_K: return &qc_kernel_q5_k;
    case QC_Q6_K: return &qc_kernel_q6_k;
    case QC_IQ4_NL: return &qc_kernel_iq4_nl;
    case QC_IQ4_XS: return &qc_kernel_iq4_xs;
    case QC_TQ1_0: return &qc_kernel_tq1_0;
    case QC_TQ2_0: return &qc_kernel_tq2_0;
    default: return NULL;
    }
}
