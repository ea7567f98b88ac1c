"""QUANTCLI_PORTABLE=1 builds the extension with the baseline variant alone (what a compiler without the x86 -m
flags, or a non-x86 machine, gets): it must compile, offer only `default`, and give the installed build's bytes."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from quantcli.quant.backend import get_backend
from tests.fixtures.paths import REPO_ROOT

T = GGMLQuantizationType


def build_portable(out: Path) -> ModuleType:
    """Build into `out` (not in place: the working build stays as it is) and load it under its own name."""
    env = {**os.environ, "QUANTCLI_PORTABLE": "1"}
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(out / "lib"), "--build-temp",
                    str(out / "tmp"), "--force"], cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=600)
    (path,) = (out / "lib" / "quantcli").glob("_kernels*.so")
    spec = importlib.util.spec_from_file_location("quantcli._kernels", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_portable_build_has_only_the_default_variant_and_the_same_bytes(tmp_path: Path) -> None:
    portable = build_portable(tmp_path)
    assert portable.isas() == ("default",)
    rng = np.random.default_rng(3)
    rows = (rng.standard_normal((9, 512)) * 0.05).astype(np.float32)
    qw = rng.exponential(1.0, 512).astype(np.float32)
    installed = get_backend("c")
    for qtype in (T.Q4_0, T.Q5_1, T.Q8_0, T.IQ4_XS, T.Q3_K, T.Q6_K):
        for imatrix in (None, qw):
            block, size = GGML_QUANT_SIZES[qtype]
            out = np.empty((9, 512 // block * size), np.uint8)
            portable.quantize(int(qtype), rows, 512, out, imatrix, 2)
            np.testing.assert_array_equal(out, installed.quantize(qtype, rows, imatrix, threads=2), err_msg=qtype.name)
