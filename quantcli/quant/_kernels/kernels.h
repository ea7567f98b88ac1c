/* Shared declarations of quantcli's C kernels.
 *
 * Every block type implements one row quantizer with this signature. It reads n_per_row floats from x
 * (n_per_row is a multiple of the type's block size), writes n_per_row / block_size blocks to y, and uses
 * the importance weights qw (length n_per_row) when they are not NULL. Rows are independent, which is what
 * lets module.c split them across threads and still give the same bytes for any thread count.
 *
 * The kernels must agree bit for bit with the NumPy reference classes in quantcli/quant/types/ and with
 * llama.cpp's reference quantizer, so: no FMA contraction (setup.py passes -ffp-contract=off), sums in
 * the order the reference uses, and float (not double) wherever the reference uses float.
 */
#ifndef QUANTCLI_KERNELS_H
#define QUANTCLI_KERNELS_H

#include <stddef.h>
#include <stdint.h>

typedef void (*qc_row_quantizer)(const float *x, void *y, int64_t n_per_row, const float *qw);

/* ggml type ids (gguf.GGMLQuantizationType); the Python side passes them in. */
enum qc_type {
    QC_Q4_0 = 2, QC_Q4_1 = 3, QC_Q5_0 = 6, QC_Q5_1 = 7, QC_Q8_0 = 8,
    QC_Q2_K = 10, QC_Q3_K = 11, QC_Q4_K = 12, QC_Q5_K = 13, QC_Q6_K = 14,
    QC_IQ4_NL = 20, QC_IQ4_XS = 23, QC_TQ1_0 = 34, QC_TQ2_0 = 35,
};

/* fp16 <-> fp32 with round-to-nearest-even, as ggml's reference converts (fp16.c). */
uint16_t qc_fp32_to_fp16(float f);
float qc_fp16_to_fp32(uint16_t h);

/* Element conversions (convert.c); n is the element count. f32_to_f16 writes uint16 bit patterns. */
typedef void (*qc_converter)(const void *src, float *dst, int64_t n);
void qc_f16_to_f32(const void *src, float *dst, int64_t n);
void qc_bf16_to_f32(const void *src, float *dst, int64_t n);
void qc_f32_to_f16(const void *src, float *dst, int64_t n);

/* Returns the row quantizer for a ggml type id, or NULL when the type has no C kernel. */
qc_row_quantizer qc_find_quantizer(int type_id);

#endif
