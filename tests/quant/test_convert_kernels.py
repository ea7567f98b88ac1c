"""The C element conversions give NumPy's bits on every 16-bit pattern (NaN stays NaN) and awkward float32 values."""
from __future__ import annotations

import numpy as np
import pytest

from quantcli.io.safetensors import to_float32
from quantcli.quant.backend import get_backend

# the bytes come from the C kernels or the NumPy reference: `make test` runs this module on both, and on the
# kernels' baseline variant (QUANTCLI_ISA=default)
pytestmark = pytest.mark.backend


@pytest.fixture(scope="module")
def c_backend():
    return get_backend("c")


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_half_and_bfloat16_pattern_widens_like_numpy(c_backend, threads: int) -> None:
    bits = np.arange(1 << 16, dtype=np.uint16).repeat(2)  # > 64K elements so the threaded path runs
    for dtype, ref in (("F16", bits.view(np.float16).astype(np.float32)), ("BF16", to_float32(bits, "BF16"))):
        src = bits.view(np.float16) if dtype == "F16" else bits
        got = c_backend.to_float32(src, dtype, threads)
        # F16C quiets signalling NaNs where NumPy keeps them; NaN weights are refused before use, so NaN only
        # has to stay NaN.
        nan = np.isnan(ref)
        assert np.array_equal(np.isnan(got), nan), dtype
        assert np.array_equal(got.view(np.uint32)[~nan], ref.view(np.uint32)[~nan]), dtype


@pytest.mark.parametrize("threads", [1, 2])
def test_float32_to_half_rounds_like_numpy(c_backend, threads: int) -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([
        rng.integers(0, 1 << 32, size=300_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        np.array([65504.0, 65519.99, 65520.0, 6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, -0.0, np.inf, -np.inf], np.float32),
        (np.arange(1 << 16, dtype=np.uint32) << 13).view(np.float32),   # exact halves and ties around them
        ((np.arange(1 << 16, dtype=np.uint32) << 13) | 0x1000).view(np.float32),
    ])
    values = values[np.isfinite(values) | np.isinf(values)]
    values = values[~np.isnan(values)]
    with np.errstate(over="ignore"):
        ref = values.astype(np.float16)
    got = c_backend.to_float16(values, threads)
    assert np.array_equal(got.view(np.uint16), ref.view(np.uint16))
