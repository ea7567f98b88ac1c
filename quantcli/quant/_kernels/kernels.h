/* Shared declarations of quantcli's C kernels.
 *
 * Every block type implements one row quantizer with this signature. It reads n_per_row floats from x
 * (n_per_row is a multiple of the type's block size), writes n_per_row / block_size blocks to y, and uses
 * the importance weights qw (length n_per_row) when they are not NULL. Rows are independent, which is what
 * lets module.c split them across threads and still give the same bytes for any thread count.
 *
 * The kernels must agree bit for bit with the NumPy reference classes in quantcli/quant/types/ and with
 * llama.cpp's reference quantizer, so: no FMA contraction (setup.py passes -ffp-contract=off to every
 * variant), sums in the order the reference uses, and float (not double) wherever the reference uses float.
 * The same rules make the instruction-set variants give the same bytes as one another.
 */
#ifndef QUANTCLI_KERNELS_H
#define QUANTCLI_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* Every kernel file is compiled once per instruction-set variant (setup.py: default, and on x86-64 also avx2 and
 * avx512), each with -DQC_ISA=<variant> and its own -m flags; dispatch.c picks one variant at run time. So that
 * the variants can live in one extension, each global symbol of the kernels gets the variant's suffix here
 * (qc_find_kernel -> qc_find_kernel_avx2). A new global function must be added to this list, or the link
 * fails with a duplicate symbol. module.c and dispatch.c are compiled once, without QC_ISA. */
#if defined(QC_ISA)
#define QC_ISA_CAT2(name, isa) name##_##isa
#define QC_ISA_CAT(name, isa) QC_ISA_CAT2(name, isa)
#define qc_fp32_to_fp16 QC_ISA_CAT(qc_fp32_to_fp16, QC_ISA)
#define qc_fp16_to_fp32 QC_ISA_CAT(qc_fp16_to_fp32, QC_ISA)
#define qc_f16_to_f32 QC_ISA_CAT(qc_f16_to_f32, QC_ISA)
#define qc_bf16_to_f32 QC_ISA_CAT(qc_bf16_to_f32, QC_ISA)
#define qc_f32_to_f16 QC_ISA_CAT(qc_f32_to_f16, QC_ISA)
#define qc_find_kernel QC_ISA_CAT(qc_find_kernel, QC_ISA)
#define qc_kq_encode_scale_min_32 QC_ISA_CAT(qc_kq_encode_scale_min_32, QC_ISA)
#define qc_kq_make_q3_quants QC_ISA_CAT(qc_kq_make_q3_quants, QC_ISA)
#define qc_kq_make_qp_quants QC_ISA_CAT(qc_kq_make_qp_quants, QC_ISA)
#define qc_kq_pack_2bit QC_ISA_CAT(qc_kq_pack_2bit, QC_ISA)
#define qc_kq_pack_q3_scales QC_ISA_CAT(qc_kq_pack_q3_scales, QC_ISA)
#define qc_kq_pack_scale_min QC_ISA_CAT(qc_kq_pack_scale_min, QC_ISA)
#define qc_kernel_q4_0 QC_ISA_CAT(qc_kernel_q4_0, QC_ISA)
#define qc_kernel_q4_1 QC_ISA_CAT(qc_kernel_q4_1, QC_ISA)
#define qc_kernel_q5_0 QC_ISA_CAT(qc_kernel_q5_0, QC_ISA)
#define qc_kernel_q5_1 QC_ISA_CAT(qc_kernel_q5_1, QC_ISA)
#define qc_kernel_q8_0 QC_ISA_CAT(qc_kernel_q8_0, QC_ISA)
#define qc_kernel_q2_k QC_ISA_CAT(qc_kernel_q2_k, QC_ISA)
#define qc_kernel_q3_k QC_ISA_CAT(qc_kernel_q3_k, QC_ISA)
#define qc_kernel_q4_k QC_ISA_CAT(qc_kernel_q4_k, QC_ISA)
#define qc_kernel_q5_k QC_ISA_CAT(qc_kernel_q5_k, QC_ISA)
#define qc_kernel_q6_k QC_ISA_CAT(qc_kernel_q6_k, QC_ISA)
#define qc_kernel_iq4_nl QC_ISA_CAT(qc_kernel_iq4_nl, QC_ISA)
#define qc_kernel_iq4_xs QC_ISA_CAT(qc_kernel_iq4_xs, QC_ISA)
#define qc_kernel_tq1_0 QC_ISA_CAT(qc_kernel_tq1_0, QC_ISA)
#define qc_kernel_tq2_0 QC_ISA_CAT(qc_kernel_tq2_0, QC_ISA)
#define qc_quantize_row_q4_0 QC_ISA_CAT(qc_quantize_row_q4_0, QC_ISA)
#define qc_quantize_row_q4_1 QC_ISA_CAT(qc_quantize_row_q4_1, QC_ISA)
#define qc_quantize_row_q5_0 QC_ISA_CAT(qc_quantize_row_q5_0, QC_ISA)
#define qc_quantize_row_q5_1 QC_ISA_CAT(qc_quantize_row_q5_1, QC_ISA)
#define qc_quantize_row_q8_0 QC_ISA_CAT(qc_quantize_row_q8_0, QC_ISA)
#define qc_quantize_row_q2_k QC_ISA_CAT(qc_quantize_row_q2_k, QC_ISA)
#define qc_quantize_row_q3_k QC_ISA_CAT(qc_quantize_row_q3_k, QC_ISA)
#define qc_quantize_row_q4_k QC_ISA_CAT(qc_quantize_row_q4_k, QC_ISA)
#define qc_quantize_row_q5_k QC_ISA_CAT(qc_quantize_row_q5_k, QC_ISA)
#define qc_quantize_row_q6_k QC_ISA_CAT(qc_quantize_row_q6_k, QC_ISA)
#define qc_quantize_row_iq4_nl QC_ISA_CAT(qc_quantize_row_iq4_nl, QC_ISA)
#define qc_quantize_row_iq4_xs QC_ISA_CAT(qc_quantize_row_iq4_xs, QC_ISA)
#define qc_quantize_row_tq1_0 QC_ISA_CAT(qc_quantize_row_tq1_0, QC_ISA)
#define qc_quantize_row_tq2_0 QC_ISA_CAT(qc_quantize_row_tq2_0, QC_ISA)
#endif

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

/* A type's C kernel and its block layout: n_per_row must be a multiple of block_values, and a row takes
 * n_per_row / block_values * block_bytes bytes. module.c checks both before it calls fn. */
typedef struct {
    qc_row_quantizer fn;
    int block_values;
    int block_bytes;
} qc_kernel;

/* The kernel of a ggml type id, or NULL when the type has no C kernel (registry.c). */
const qc_kernel *qc_find_kernel(int type_id);

#endif
