"""Build hook for the C extension quantcli._kernels; everything else lives in pyproject.toml.

The extension is portable: nothing is compiled for the building machine's CPU, so a wheel (tagged generic
x86_64) runs on any x86-64 machine. The kernel files are compiled once per instruction-set variant instead, and
quant/_kernels/dispatch.c picks the best variant the running machine supports:

  default  the target's baseline (SSE2 on x86-64): the scalar fallbacks of common.h
  avx2     AVX2, FMA, F16C, BMI1/2 (x86-64 only)
  avx512   the avx2 set plus AVX-512 F/BW/DQ/VL/CD (x86-64 only)

QUANTCLI_PORTABLE=1 builds the default variant alone (for a compiler that lacks the -m flags).
"""
from __future__ import annotations

import glob
import os
import platform

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNEL_DIR = "quantcli/quant/_kernels"
# Compiled once: the Python binding, the run-time dispatcher (they must run on any CPU), and the integer-scheme,
# NF4 and GPTQ entry points, which are Python functions of their own with no per-variant kernels yet.
ONCE = [f"{KERNEL_DIR}/module.c", f"{KERNEL_DIR}/dispatch.c", f"{KERNEL_DIR}/int_rtn.c", f"{KERNEL_DIR}/nf4.c"]
ONCE += [f"{KERNEL_DIR}/gptq.c"]
# Compiled once per variant, each with -DQC_ISA=<variant> (kernels.h gives their symbols the variant's suffix).
PER_VARIANT = sorted(set(glob.glob(f"{KERNEL_DIR}/*.c")) - set(ONCE))

# -ffp-contract=off on every variant: the kernels must give the same bits as the NumPy reference and as
# llama.cpp's reference quantizer, and the variants the same bits as one another, so the compiler may not fuse
# a*b+c into an FMA behind our back (the avx2 and avx512 variants have FMA instructions available).
# -fvisibility=hidden: only PyInit__kernels is exported; the variants' symbols stay inside the extension.
FLAGS = ["-O3", "-std=gnu11", "-pthread", "-ffp-contract=off", "-fno-math-errno", "-Wno-psabi", "-fvisibility=hidden"]
AVX2 = ["-mavx", "-mavx2", "-mfma", "-mf16c", "-mbmi", "-mbmi2", "-mpopcnt"]
AVX512 = AVX2 + ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512cd"]

X86 = platform.machine().lower() in ("x86_64", "amd64") and not os.environ.get("QUANTCLI_PORTABLE")
VARIANTS: dict[str, list[str]] = {"default": []}
if X86:
    VARIANTS.update({"avx2": AVX2, "avx512": AVX512})


class BuildVariants(build_ext):
    """Compiles PER_VARIANT once per entry of VARIANTS into its own folder and links them all in."""

    def build_extension(self, ext: Extension) -> None:
        objects: list[str] = []
        for isa, isa_flags in VARIANTS.items():
            objects += self.compiler.compile(
                PER_VARIANT,
                output_dir=os.path.join(self.build_temp, f"isa-{isa}"),
                macros=[("QC_ISA", isa)],
                include_dirs=ext.include_dirs,
                extra_postargs=FLAGS + isa_flags,
                depends=ext.depends,
            )
        ext.extra_objects = objects
        super().build_extension(ext)


setup(
    ext_modules=[
        Extension(
            "quantcli._kernels",
            sources=ONCE,
            include_dirs=[KERNEL_DIR],
            define_macros=[("QC_X86_VARIANTS", "1")] if X86 else [],
            depends=sorted(glob.glob(f"{KERNEL_DIR}/*.h")),
            extra_compile_args=FLAGS,
            extra_link_args=["-pthread"],
            optional=False,
        )
    ],
    cmdclass={"build_ext": BuildVariants},
)
