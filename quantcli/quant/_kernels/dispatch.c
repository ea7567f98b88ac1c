/* Run-time choice of the instruction-set variant of the kernels.
 *
 * setup.py compiles every kernel file once per variant: "default" for the baseline of the target (SSE2 on
 * x86-64, the scalar fallbacks of common.h), and on x86-64 also "avx2" (AVX2, FMA, F16C, BMI1/2) and
 * "avx512" (the avx2 set plus AVX-512 F/BW/DQ/VL/CD). All of them keep -ffp-contract=off and the same operation
 * order, so every variant gives the same bytes; only the speed differs. A wheel built on one machine therefore
 * runs on any x86-64 machine and still uses the wide paths where they exist.
 *
 * A variant is usable only when the CPU has its instructions and the operating system saves the register state
 * they need (XCR0 via XGETBV): a CPU can list AVX-512 while the kernel does not enable the ZMM state, and then
 * the first AVX-512 instruction dies with SIGILL. That is the check __builtin_cpu_supports leaves implicit, so
 * it is written out here. */
#include <string.h>
#include "dispatch.h"

#if defined(QC_X86_VARIANTS) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
#define QC_HAVE_X86_VARIANTS 1
#else
#define QC_HAVE_X86_VARIANTS 0
#endif

/* The per-variant entry points (kernels.h appends the variant's name to every global symbol). */
#define QC_VARIANT_DECLS(isa)                                                  \
    const qc_kernel *qc_find_kernel_##isa(int type_id);                        \
    void qc_f16_to_f32_##isa(const void *src, float *dst, int64_t n);          \
    void qc_bf16_to_f32_##isa(const void *src, float *dst, int64_t n);         \
    void qc_f32_to_f16_##isa(const void *src, float *dst, int64_t n);
#define QC_VARIANT(name, isa) \
    {name, qc_find_kernel_##isa, {qc_f16_to_f32_##isa, qc_bf16_to_f32_##isa, qc_f32_to_f16_##isa}}

QC_VARIANT_DECLS(default)
#if QC_HAVE_X86_VARIANTS
QC_VARIANT_DECLS(avx2)
QC_VARIANT_DECLS(avx512)
#endif

/* Best first: qc_default_variant() returns the first usable one. */
static const qc_variant qc_variants[] = {
#if QC_HAVE_X86_VARIANTS
    QC_VARIANT("avx512", avx512),
    QC_VARIANT("avx2", avx2),
#endif
    QC_VARIANT("default", default),
};
#define QC_NVARIANTS ((int)(sizeof qc_variants / sizeof qc_variants[0]))

#if QC_HAVE_X86_VARIANTS
/* CPUID feature bits the variants need (leaf 1 ECX, leaf 7 EBX) and the XCR0 state bits. */
#define QC_CPUID1_FMA (1u << 12)
#define QC_CPUID1_POPCNT (1u << 23)
#define QC_CPUID1_OSXSAVE (1u << 27)
#define QC_CPUID1_AVX (1u << 28)
#define QC_CPUID1_F16C (1u << 29)
#define QC_CPUID7_BMI1 (1u << 3)
#define QC_CPUID7_AVX2 (1u << 5)
#define QC_CPUID7_BMI2 (1u << 8)
#define QC_CPUID7_AVX512F (1u << 16)
#define QC_CPUID7_AVX512DQ (1u << 17)
#define QC_CPUID7_AVX512CD (1u << 28)
#define QC_CPUID7_AVX512BW (1u << 30)
#define QC_CPUID7_AVX512VL (1u << 31)
#define QC_XCR0_YMM 0x06u      /* SSE and AVX state */
#define QC_XCR0_ZMM 0xe6u      /* plus opmask, ZMM_Hi256 and Hi16_ZMM state */

static uint64_t qc_xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* Whether the variant named isa runs on this CPU and operating system. */
static int qc_x86_usable(const char *isa) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const unsigned ecx1 = c;
    const unsigned need1 = QC_CPUID1_FMA | QC_CPUID1_POPCNT | QC_CPUID1_OSXSAVE | QC_CPUID1_AVX | QC_CPUID1_F16C;
    if ((ecx1 & need1) != need1) return 0;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    const unsigned ebx7 = b;
    const unsigned need7 = QC_CPUID7_BMI1 | QC_CPUID7_AVX2 | QC_CPUID7_BMI2;
    const uint64_t xcr0 = qc_xcr0();
    if ((ebx7 & need7) != need7 || (xcr0 & QC_XCR0_YMM) != QC_XCR0_YMM) return 0;
    if (strcmp(isa, "avx2") == 0) return 1;
    const unsigned need512 = QC_CPUID7_AVX512F | QC_CPUID7_AVX512DQ | QC_CPUID7_AVX512CD | QC_CPUID7_AVX512BW |
                             QC_CPUID7_AVX512VL;
    return strcmp(isa, "avx512") == 0 && (ebx7 & need512) == need512 && (xcr0 & QC_XCR0_ZMM) == QC_XCR0_ZMM;
}
#endif

static int qc_usable(const qc_variant *v) {
    if (strcmp(v->name, "default") == 0) return 1;
#if QC_HAVE_X86_VARIANTS
    return qc_x86_usable(v->name);
#else
    return 0;
#endif
}

int qc_usable_variants(const qc_variant **out, int cap) {
    int n = 0;
    for (int i = 0; i < QC_NVARIANTS && n < cap; i++) {
        if (qc_usable(&qc_variants[i])) out[n++] = &qc_variants[i];
    }
    return n;
}

const qc_variant *qc_find_variant(const char *name) {
    for (int i = 0; i < QC_NVARIANTS; i++) {
        if (strcmp(qc_variants[i].name, name) == 0) return qc_usable(&qc_variants[i]) ? &qc_variants[i] : NULL;
    }
    return NULL;
}
