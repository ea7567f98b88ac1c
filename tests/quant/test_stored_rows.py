"""The kernels take 16-bit rows as stored (widening a row at a time inside each thread) and scan stored values for
NaN/Inf and F16 range in one pass: both must give what the float32 path and the NumPy reference give."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from quantcli.io.safetensors import to_float32
from quantcli.quant.backend import Scan, _scan_numpy, get_backend
from quantcli.quant.base import registered_types

pytestmark = pytest.mark.backend

T = GGMLQuantizationType
C = get_backend("c")
KERNEL_TYPES = [t for t in registered_types() if C.uses_c(t)]
USABLE = C.kernels.isas()  # type: ignore[union-attr]


def stored_rows(dtype: str, n: int, seed: int) -> np.ndarray:
    """Weight-like 16-bit rows with a zero row, a constant row and large values (no NaN/Inf: those are refused
    before a kernel sees them), as safetensors stores them (BF16 as uint16 bit patterns)."""
    rng = np.random.default_rng(seed)
    values = (rng.standard_normal((13, n)) * 0.03).astype(np.float32)
    values[3] = 0.0
    values[4] = -2.5
    values[5, ::7] = 6e4
    if dtype == "BF16":
        return (values.view(np.uint32) >> 16).astype(np.uint16)
    return values.astype(np.float16)


@pytest.mark.parametrize("qtype", KERNEL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_stored_rows_give_the_bytes_of_widened_rows(qtype: GGMLQuantizationType, dtype: str) -> None:
    block = 256 if qtype.name.endswith("_K") or qtype.name in ("IQ4_XS", "TQ1_0", "TQ2_0") else 32
    rows = stored_rows(dtype, block * 3, int(qtype))
    widened = to_float32(rows, dtype)
    qw = np.random.default_rng(1).exponential(1.0, rows.shape[1]).astype(np.float32)
    for isa in USABLE:
        backend = get_backend("c", isa)
        assert backend.quantizes_stored(qtype, dtype)
        for imatrix in (None, qw):
            for threads in (1, 3):
                want = backend.quantize(qtype, widened, imatrix, threads)
                got, found = backend.quantize_stored(qtype, rows, dtype, imatrix, threads)
                np.testing.assert_array_equal(got, want, err_msg=f"{isa}, {threads} threads, imatrix {imatrix is not None}")
                assert found == _scan_numpy(rows, dtype)


def test_stored_rows_are_checked_before_the_kernels_run() -> None:
    rows = np.zeros((2, 64), np.float16)
    with pytest.raises(ValueError, match="float32"):
        C.quantize_stored(T.Q8_0, rows.astype(np.float32), "F16", None, 1)
    with pytest.raises(ValueError, match="widen"):
        C.kernels.quantize(int(T.Q8_0), rows, 64, np.zeros(2 * 68, np.uint8), None, 1, None, 5)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="16-bit rows"):
        C.kernels.quantize(int(T.Q8_0), rows.ravel()[:-1], 64, np.zeros(2 * 68, np.uint8), None, 1, None, 0)  # type: ignore[union-attr]
    assert not get_backend("reference").quantizes_stored(T.Q8_0, "F16")
    assert not C.quantizes_stored(T.Q8_0, "F32")


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_quantizing_stored_rows_scans_them(dtype: str) -> None:
    rows = stored_rows(dtype, 256, 3)
    bits = rows.view(np.uint16)
    bits[2, 5] = 0x7C00 if dtype == "F16" else 0x7F80           # +Inf
    bits[12, 255] = 0xFE00 if dtype == "F16" else 0xFFC0        # a NaN
    for threads in (1, 4):
        _, found = C.quantize_stored(T.Q8_0, rows, dtype, None, threads)
        assert found == Scan(2, False) == _scan_numpy(rows, dtype)
    if dtype == "BF16":    # finite, but above F16's range: found so the stage can check the blocks for overflow
        big = stored_rows(dtype, 256, 3)
        big[7, 0] = 0x4780                                       # 65536
        assert C.quantize_stored(T.Q8_0, big, dtype, None, 2)[1] == Scan(0, False)


def patterns(dtype: str, n: int, seed: int) -> np.ndarray:
    """Every kind of value: random bit patterns (NaN, Inf, subnormals, huge), in stored form."""
    rng = np.random.default_rng(seed)
    if dtype == "F32":
        return rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    return bits.view(np.float16) if dtype == "F16" else bits


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32"])
@pytest.mark.parametrize("n", [0, 1000, (1 << 18) + 5])     # the last one is split across threads
def test_the_scan_agrees_with_numpy(dtype: str, n: int) -> None:
    values = patterns(dtype, n, n)
    for threads in (1, 2, 3):
        assert C.scan(values, dtype, threads) == _scan_numpy(values, dtype)
    finite = (patterns(dtype, n, 7).view(np.uint32 if dtype == "F32" else np.uint16) & (0x3FFFFFFF if dtype == "F32" else 0x3FFF))
    finite = finite.view(np.float32) if dtype == "F32" else (finite.view(np.float16) if dtype == "F16" else finite)
    assert C.scan(finite, dtype, 2) == Scan(0, True) == _scan_numpy(finite, dtype)


@pytest.mark.parametrize("backend", ["c", "reference"])
def test_the_scan_counts_planted_values_and_finds_the_f16_limit(backend: str) -> None:
    b = get_backend(backend)
    values = np.full(300_000, 0.5, np.float32)
    values[[3, 99, 299_999]] = [np.nan, np.inf, -np.inf]
    assert b.scan(values, "F32", 2) == Scan(3, False)
    assert b.scan(values.astype(np.float16), "F16", 2) == Scan(3, False)
    as_bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)
    assert b.scan(as_bf16, "BF16", 2) == Scan(3, False)
    # the largest F16 value fits, the next float32 above it does not; BF16's 65280 fits, 65536 does not
    assert b.scan(np.array([1.0, -65504.0], np.float32), "F32") == Scan(0, True)
    assert b.scan(np.array([np.nextafter(np.float32(65504), np.float32(np.inf))], np.float32), "F32") == Scan(0, False)
    assert b.scan(np.array([0xC77F, 0x3F80], np.uint16), "BF16") == Scan(0, True)
    assert b.scan(np.array([0x4780], np.uint16), "BF16") == Scan(0, False)
    assert b.scan(np.array([65504.0, -65504.0], np.float16), "F16") == Scan(0, True)


@pytest.mark.parametrize("nrows", [1, 7, 257, 1031])
def test_rows_taken_from_a_shared_counter_give_the_same_bytes_at_any_thread_count(nrows: int) -> None:
    """The threads take rows a few at a time from a shared counter: every row must be quantized exactly once, and
    the scan of a NaN in any row (the last one, taken by whichever thread comes last) must be found."""
    rng = np.random.default_rng(nrows)
    rows = (rng.standard_normal((nrows, 256)) * 0.05).astype(np.float16)
    want = get_backend("reference").quantize(T.Q4_K, rows.astype(np.float32))
    for threads in (1, 2, 4, 7):
        got, found = C.quantize_stored(T.Q4_K, rows, "F16", None, threads)
        np.testing.assert_array_equal(got, want, err_msg=f"{threads} threads")
        assert found.nonfinite == 0
    bad = rows.copy()
    bad[-1, -1] = np.nan
    for threads in (1, 2, 4, 7):
        _, found = C.quantize_stored(T.Q4_K, bad, "F16", None, threads)
        assert found.nonfinite == 1, f"{threads} threads"
