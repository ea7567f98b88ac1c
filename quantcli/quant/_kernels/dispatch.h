/* The instruction-set variants of the kernels and which of them this machine runs (dispatch.c). */
#ifndef QUANTCLI_DISPATCH_H
#define QUANTCLI_DISPATCH_H

#include "kernels.h"

#define QC_MAX_VARIANTS 3

typedef struct {
    const char *name;                        /* "avx512", "avx2" or "default" */
    const qc_kernel *(*find_kernel)(int type_id);
    qc_converter convert[3];                 /* f16->f32, bf16->f32, f32->f16 */
} qc_variant;

/* The variants this CPU and operating system can run, best first (the last one is always "default"); returns
 * how many were written to out. */
int qc_usable_variants(const qc_variant **out, int cap);

/* The variant of that name if this machine can run it, else NULL. */
const qc_variant *qc_find_variant(const char *name);

#endif
