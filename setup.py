"""Build hook for the C extension quantcli._kernels; everything else lives in pyproject.toml."""
from __future__ import annotations

import glob
import os

from setuptools import Extension, setup

# -ffp-contract=off: the kernels must give the same bits as the NumPy reference and as llama.cpp's
# reference quantizer, so the compiler may not fuse a*b+c into an FMA behind our back.
# -march=native pays off for the row loops; QUANTCLI_PORTABLE=1 builds for the baseline ISA instead.
flags = ["-O3", "-std=gnu11", "-pthread", "-ffp-contract=off", "-fno-math-errno", "-Wno-psabi"]
if not os.environ.get("QUANTCLI_PORTABLE"):
    flags.append("-march=native")

setup(
    ext_modules=[
        Extension(
            "quantcli._kernels",
            sources=sorted(glob.glob("quantcli/quant/_kernels/*.c")),
            include_dirs=["quantcli/quant/_kernels"],
            extra_compile_args=flags,
            extra_link_args=["-pthread"],
            optional=False,
        )
    ]
)
