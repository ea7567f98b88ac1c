"""The C kernels' instruction-set variants (default, avx2, avx512: quant/_kernels/dispatch.c) give the same bytes
as one another, QUANTCLI_ISA selects among them, and the C entry point refuses sizes the kernels cannot take.

Each variant against llama.cpp and the golden vectors: `make test` runs tests/quant again with QUANTCLI_ISA=default
(the scalar fallbacks); here every variant this machine runs is compared with the others on awkward data.
"""
from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from quantcli.errors import InputError
from quantcli.quant.backend import ISAS, get_backend
from quantcli.quant.base import registered_types

pytestmark = pytest.mark.backend

T = GGMLQuantizationType
KERNEL_TYPES = [t for t in registered_types() if get_backend("c").uses_c(t)]
USABLE = get_backend("c").kernels.isas()  # type: ignore[union-attr]


def variant_input(qtype: GGMLQuantizationType, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows mixing weight-like values with any non-NaN float32 bit pattern (Inf, subnormals, values near 3e38),
    a zero row and a constant row, over a block count that leaves a partial group of 8; and a sparse imatrix.

    No NaN: the pipeline refuses NaN weights before they reach a kernel, and a NaN in a block makes the result
    depend on which operand x86 propagates (the sign of a NaN scale; for the K-quants' searches, more), which
    the compiler is free to order differently per variant, as llama.cpp's own builds do."""
    block = GGML_QUANT_SIZES[qtype][0]
    n = block * (3 if block == 256 else 19)
    rng = np.random.default_rng(seed)
    rows = (rng.standard_normal((24, n)) * 0.02).astype(np.float32)
    bits = rng.integers(0, 2 ** 32, rows.shape, dtype=np.uint64).astype(np.uint32).view(np.float32)
    mask = rng.random(rows.shape) < 0.02
    bits[np.isnan(bits)] = np.float32(np.inf)
    rows[mask] = bits[mask]
    rows[5:8] = bits[5:8]
    rows[9] = 0.0
    rows[10] = np.float32(-1.5)
    rows[11] *= np.float32(1e-39)
    qw = rng.exponential(1.0, n).astype(np.float32)
    qw[rng.random(n) < 0.3] = 0.0
    return rows, qw


def test_the_baseline_variant_always_runs_and_comes_last() -> None:
    assert USABLE[-1] == "default"
    assert set(USABLE) <= set(ISAS)
    assert list(USABLE) == [isa for isa in ISAS if isa in USABLE], "best first"


@pytest.mark.parametrize("qtype", KERNEL_TYPES, ids=lambda t: t.name)
def test_every_variant_gives_the_same_bytes(qtype: GGMLQuantizationType) -> None:
    rows, qw = variant_input(qtype, int(qtype))
    for imatrix in (None, qw):
        results = {isa: get_backend("c", isa).quantize(qtype, rows, imatrix, threads=2) for isa in USABLE}
        for isa, got in results.items():
            np.testing.assert_array_equal(got, results["default"], err_msg=f"{isa} vs default")


def test_every_variant_converts_to_the_same_bits() -> None:
    rng = np.random.default_rng(5)
    words = np.concatenate([np.arange(1 << 16, dtype=np.uint16),
                            rng.integers(0, 1 << 16, 1003, dtype=np.uint16)])    # a tail shorter than a vector
    values = rng.integers(0, 1 << 32, 70_001, dtype=np.uint64).astype(np.uint32).view(np.float32)
    base = get_backend("c", "default")
    for isa in USABLE:
        backend = get_backend("c", isa)
        for dtype in ("F16", "BF16"):
            src = words.view(np.float16) if dtype == "F16" else words
            got, ref = backend.to_float32(src, dtype, 2), base.to_float32(src, dtype, 2)
            # F16C quiets signalling NaNs (test_convert_kernels.py): NaN only has to stay NaN
            nan = np.isnan(ref)
            assert np.array_equal(np.isnan(got), nan), (isa, dtype)
            assert np.array_equal(got.view(np.uint32)[~nan], ref.view(np.uint32)[~nan]), (isa, dtype)
        got16, ref16 = backend.to_float16(values, 2), base.to_float16(values, 2)
        nan = np.isnan(values)
        assert np.array_equal(got16.view(np.uint16)[~nan], ref16.view(np.uint16)[~nan]), isa
        assert np.isnan(got16[nan]).all(), isa


def test_quantcli_isa_selects_a_variant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUANTCLI_ISA", raising=False)
    assert get_backend("c").isa == USABLE[0]
    monkeypatch.setenv("QUANTCLI_ISA", "default")
    assert get_backend("c").isa == "default"
    assert get_backend("reference").isa is None
    monkeypatch.setenv("QUANTCLI_ISA", "neon")
    with pytest.raises(InputError, match="QUANTCLI_ISA"):
        get_backend("c")
    missing = [isa for isa in ISAS if isa not in USABLE]
    if missing:                                   # a variant this machine cannot run is refused, not attempted
        monkeypatch.setenv("QUANTCLI_ISA", missing[0])
        with pytest.raises(InputError, match="does not run on this machine"):
            get_backend("c")


# ---- the C entry point checks sizes before a kernel writes a byte ----
@pytest.fixture(scope="module")
def kernels() -> ModuleType:
    module = get_backend("c").kernels
    assert module is not None
    return module


def test_a_row_length_off_the_block_size_is_refused(kernels: ModuleType) -> None:
    src = np.zeros((2, 48), np.float32)
    dst = np.zeros(2 * 2 * 18, np.uint8)
    with pytest.raises(ValueError, match="n_per_row=48 is not a positive multiple of the block size 32"):
        kernels.quantize(int(T.Q4_0), src, 48, dst, None, 1)
    with pytest.raises(ValueError, match="block size 256"):
        kernels.quantize(int(T.Q4_K), np.zeros(128, np.float32), 128, np.zeros(72, np.uint8), None, 1)
    with pytest.raises(ValueError, match="positive multiple"):
        kernels.quantize(int(T.Q8_0), src, 0, dst, None, 1)


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q6_K, T.IQ4_XS], ids=lambda t: t.name)
def test_a_short_destination_is_refused_and_left_untouched(kernels: ModuleType, qtype: GGMLQuantizationType) -> None:
    block, size = GGML_QUANT_SIZES[qtype]
    src = np.ones((3, 2 * block), np.float32)
    guard = np.full(3 * 2 * size, 0xAB, np.uint8)
    short = guard[: 3 * 2 * size - 1]                 # one byte short: the last row would overrun it
    with pytest.raises(ValueError, match=f"dst holds {short.size} bytes but 3 rows of ggml type {int(qtype)} need"):
        kernels.quantize(int(qtype), src, 2 * block, short, None, 1)
    assert (guard == 0xAB).all()
    with pytest.raises(ValueError, match="dst holds"):
        kernels.quantize(int(qtype), src, 2 * block, np.zeros(3 * 2 * size + 1, np.uint8), None, 1)


def test_src_and_imatrix_sizes_and_unknown_variants_are_refused(kernels: ModuleType) -> None:
    dst = np.zeros(2 * 34, np.uint8)
    with pytest.raises(ValueError, match="not a whole number of float32 rows"):
        kernels.quantize(int(T.Q8_0), np.zeros(65, np.float32), 32, dst, None, 1)
    with pytest.raises(ValueError, match="imatrix"):
        kernels.quantize(int(T.Q4_0), np.zeros(64, np.float32), 64, np.zeros(36, np.uint8), np.ones(32, np.float32), 1)
    with pytest.raises(ValueError, match="not available on this machine"):
        kernels.quantize(int(T.Q8_0), np.zeros(64, np.float32), 32, dst, None, 1, "sse9")
    with pytest.raises(NotImplementedError):
        kernels.quantize(int(T.F16), np.zeros(64, np.float32), 32, dst, None, 1)


def test_no_rows_is_a_no_op(kernels: ModuleType) -> None:
    kernels.quantize(int(T.Q8_0), np.zeros(0, np.float32), 32, np.zeros(0, np.uint8), None, 2)
