/* TQ1_0 encoder, the C twin of quant/types/tq1_0.py (formats/TQ1_0.md): per super-block of 256, d = amax and
 * trits lroundf(x / d) + 1 packed five per byte in base 3 (the first trit most significant), each base-3 number
 * n stored as ceil(n * 256 / 243). qs[0:32]: values m + 32k; qs[32:48]: 160 + m + 16k; qh[0:4]: 240 + j + 4k
 * (four trits and a zero). Bytes: 48 qs, 4 qh, d (fp16). The imatrix is ignored, as in llama.cpp. */
#include "common.h"

#define TQ1_0_TRITS 5
#define TQ1_0_POW3 243                /* 3^5 numbers per byte */
#define TQ1_0_QS 48
#define TQ1_0_QH 4
#define TQ1_0_BYTES (TQ1_0_QS + TQ1_0_QH + 2)

/* nbytes bytes from trits t[m + stride * k], k < trits (padded with zero trits to five). */
static void tq1_0_region(const int32_t *t, int nbytes, int stride, int trits, uint8_t *out) {
    for (int m = 0; m < nbytes; m++) {
        unsigned q = 0;                       /* uint8_t arithmetic in ggml: reduced modulo 256 below */
        for (int k = 0; k < trits; k++) q = q * 3 + (unsigned)t[m + stride * k];
        for (int k = trits; k < TQ1_0_TRITS; k++) q *= 3;
        q &= 0xff;
        out[m] = (uint8_t)((q * 256 + (TQ1_0_POW3 - 1)) / TQ1_0_POW3);
    }
}

static void tq1_0_block(const float *x, uint8_t *out) {
    int32_t t[QC_QK_K];
    const float d = qc_ternary_trits(x, t);
    tq1_0_region(t, 32, 32, TQ1_0_TRITS, out);
    tq1_0_region(t + 160, 16, 16, TQ1_0_TRITS, out + 32);
    tq1_0_region(t + 240, TQ1_0_QH, TQ1_0_QH, TQ1_0_TRITS - 1, out + TQ1_0_QS);
    qc_put_fp16(out + TQ1_0_QS + TQ1_0_QH, d);
}

void qc_quantize_row_tq1_0(const float *x, void *vy, int64_t n, const float *qw) {
    (void)qw;
    uint8_t *y = (uint8_t *)vy;
    for (int64_t s = 0; s < n / QC_QK_K; s++) tq1_0_block(x + s * QC_QK_K, y + s * TQ1_0_BYTES);
}

const qc_kernel qc_kernel_tq1_0 = {qc_quantize_row_tq1_0, QC_QK_K, TQ1_0_BYTES};
