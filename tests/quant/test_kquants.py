"""Q2_K .. Q6_K: both backends give llama.cpp's bytes, with and without an importance matrix.

Sources of truth, in order: the golden vectors in formats/golden/ (made by llama.cpp), llama.cpp itself on
fresh awkward data (tests/ggml_oracle.py), and gguf-py's independent decoders.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

from quantcli.quant.backend import get_backend
from quantcli.quant.base import quant_class
from quantcli.quant.types import _kquant

# the bytes come from the C kernels or the NumPy reference: `make test` runs this module on both, and on the
# kernels' baseline variant (QUANTCLI_ISA=default)
pytestmark = pytest.mark.backend

KQUANTS = [GGMLQuantizationType.Q2_K, GGMLQuantizationType.Q3_K, GGMLQuantizationType.Q4_K,
           GGMLQuantizationType.Q5_K, GGMLQuantizationType.Q6_K]
BACKENDS = ["c", "reference"]
GOLDEN = Path(__file__).resolve().parents[2] / "formats" / "golden"
IMATRIX_KINDS = [None, "dense", "sparse", "zeros"]
ids = [t.name for t in KQUANTS]


def encode(backend: str, qtype: GGMLQuantizationType, rows: np.ndarray, imatrix: np.ndarray | None,
           threads: int = 1) -> np.ndarray:
    return get_backend(backend).quantize(qtype, rows, imatrix, threads=threads)


def awkward_rows(seed: int, n_rows: int, n_per_row: int) -> np.ndarray:
    """Gaussian rows with, cycling over rows: zeros, a constant, huge outliers, subnormals, tiny values,
    one-signed rows, rounding ties, values near float32's limits; plus zeroed and constant 16-value groups."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, n_per_row)).astype(np.float32)
    for r in range(n_rows):
        kind = r % 12
        if kind == 0:
            x[r] = 0.0
        elif kind == 1:
            x[r] = np.float32(rng.standard_normal())
        elif kind == 2:
            x[r, rng.integers(0, n_per_row, 3)] *= np.float32(1e4)
        elif kind == 3:
            x[r] *= np.float32(1e-40)                        # subnormal
        elif kind == 4:
            x[r] *= np.float32(1e-20)                        # tiny: squares underflow
        elif kind == 5:
            x[r] = np.abs(x[r])
        elif kind == 6:
            x[r] = -np.abs(x[r])
        elif kind == 7:
            x[r] = np.round(x[r] * 2) / 2                    # ties
        elif kind == 8:
            x[r] *= np.float32(1e30)                         # squares overflow
        elif kind == 9:
            x[r] = rng.standard_t(2, n_per_row).astype(np.float32)
        else:
            x[r] *= np.float32(10.0 ** rng.uniform(-4, 2))
    groups = x.reshape(n_rows, -1, 16)
    groups[rng.random(groups.shape[:2]) < 0.05] = 0.0
    const = rng.random(groups.shape[:2]) < 0.03
    groups[const] = rng.standard_normal((int(const.sum()), 1)).astype(np.float32)
    return x


def make_imatrix(kind: str | None, seed: int, n_per_row: int) -> np.ndarray | None:
    if kind is None:
        return None
    rng = np.random.default_rng(seed + 1000)
    if kind == "zeros":
        return np.zeros(n_per_row, dtype=np.float32)
    qw = rng.exponential(1.0, n_per_row).astype(np.float32)
    if kind == "sparse":
        qw[rng.random(n_per_row) < 0.3] = 0.0
        qw[:48] = 0.0                                        # whole sub-blocks without weight
    return qw


# ---- golden vectors (no llama.cpp needed) ----
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", KQUANTS, ids=ids)
def test_golden_vectors_are_reproduced(qtype: GGMLQuantizationType, with_imatrix: bool, backend: str) -> None:
    golden = np.load(GOLDEN / f"{qtype.name.lower()}.npz")
    imatrix = golden["imatrix"] if with_imatrix else None
    expected = golden["expected_imatrix"] if with_imatrix else golden["expected"]
    got = encode(backend, qtype, golden["rows"], imatrix)
    mismatched = np.nonzero((got != expected).any(axis=1))[0]
    assert mismatched.size == 0, f"rows {mismatched.tolist()} differ from llama.cpp's golden bytes"


# ---- live llama.cpp (the ggml_quantize fixture lives in tests/conftest.py) ----
@pytest.mark.parametrize("imatrix_kind", IMATRIX_KINDS, ids=lambda k: k or "none")
@pytest.mark.parametrize("qtype", KQUANTS, ids=ids)
def test_reference_matches_llama_cpp_on_awkward_rows(qtype: GGMLQuantizationType, imatrix_kind: str | None,
                                                     ggml_quantize) -> None:
    rows = awkward_rows(seed=int(qtype), n_rows=24, n_per_row=512)
    qw = make_imatrix(imatrix_kind, int(qtype), 512)
    np.testing.assert_array_equal(encode("reference", qtype, rows, qw), ggml_quantize(qtype, rows, qw))


@pytest.mark.parametrize("shape", [(5, 256), (30, 768), (6, 2304)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("imatrix_kind", IMATRIX_KINDS, ids=lambda k: k or "none")
@pytest.mark.parametrize("qtype", KQUANTS, ids=ids)
def test_c_matches_llama_cpp_on_awkward_rows(qtype: GGMLQuantizationType, imatrix_kind: str | None,
                                             shape: tuple[int, int], ggml_quantize) -> None:
    # 1, 3 and 9 super-blocks per row: the kernels batch up to 8 super-blocks, so this covers partial groups.
    seed = int(qtype) * 100 + shape[1]
    rows = awkward_rows(seed, *shape)
    qw = make_imatrix(imatrix_kind, seed, shape[1])
    np.testing.assert_array_equal(encode("c", qtype, rows, qw, threads=2), ggml_quantize(qtype, rows, qw))


@pytest.mark.parametrize("qtype", KQUANTS, ids=ids)
def test_c_matches_llama_cpp_on_weight_like_data(qtype: GGMLQuantizationType, ggml_quantize) -> None:
    rng = np.random.default_rng(7)
    rows = (rng.standard_normal((96, 1024)) * 0.02).astype(np.float32)
    qw = rng.exponential(1.0, 1024).astype(np.float32)
    for imatrix in (None, qw):
        np.testing.assert_array_equal(encode("c", qtype, rows, imatrix), ggml_quantize(qtype, rows, imatrix))


# ---- the two backends against each other ----
@pytest.mark.parametrize("imatrix_kind", [None, "sparse"], ids=["none", "sparse"])
@pytest.mark.parametrize("qtype", KQUANTS, ids=ids)
def test_reference_and_c_agree_bit_for_bit(qtype: GGMLQuantizationType, imatrix_kind: str | None) -> None:
    rows = awkward_rows(seed=int(qtype) + 50, n_rows=40, n_per_row=1280)
    qw = make_imatrix(imatrix_kind, 3, 1280)
    np.testing.assert_array_equal(encode("c", qtype, rows, qw), encode("reference", qtype, rows, qw))


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", KQUANTS, ids=ids)
def test_c_bytes_do_not_depend_on_thread_count(qtype: GGMLQuantizationType, with_imatrix: bool) -> None:
    rows = awkward_rows(seed=11, n_rows=37, n_per_row=768)
    qw = make_imatrix("dense", 11, 768) if with_imatrix else None
    one = encode("c", qtype, rows, qw, threads=1)
    np.testing.assert_array_equal(one, encode("c", qtype, rows, qw, threads=2))
    np.testing.assert_array_equal(one, encode("c", qtype, rows, qw, threads=5))


# ---- decoding ----
@pytest.mark.parametrize("qtype", KQUANTS, ids=ids)
def test_decode_matches_gguf_dequantize(qtype: GGMLQuantizationType) -> None:
    golden = np.load(GOLDEN / f"{qtype.name.lower()}.npz")
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    cls = quant_class(qtype)
    # random bytes reach every bit pattern of every field (Inf / NaN scales included: both sides must agree)
    random_blocks = np.random.default_rng(int(qtype)).integers(0, 256, (64, type_size), dtype=np.uint8)
    for data in (golden["expected"], golden["expected_imatrix"], random_blocks):
        with np.errstate(invalid="ignore", over="ignore"):
            ours = cls.dequantize(data, data.shape[1] // type_size * block_size)
            theirs = gguf_quants.dequantize(data, qtype).reshape(ours.shape)
        np.testing.assert_array_equal(ours, theirs)


# Relative RMS error each type must stay under on Gaussian data: about 1.3x what llama.cpp's encoders reach
# on this input (measured: 0.297 Q2_K, 0.151 Q3_K, 0.071 Q4_K, 0.036 Q5_K, 0.018 Q6_K).
RMS_BOUND = {GGMLQuantizationType.Q2_K: 0.39, GGMLQuantizationType.Q3_K: 0.20, GGMLQuantizationType.Q4_K: 0.093,
             GGMLQuantizationType.Q5_K: 0.047, GGMLQuantizationType.Q6_K: 0.023}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", KQUANTS, ids=ids)
def test_decoded_values_approximate_the_input(qtype: GGMLQuantizationType, backend: str) -> None:
    rows = np.random.default_rng(5).standard_normal((16, 512)).astype(np.float32)
    back = quant_class(qtype).dequantize(encode(backend, qtype, rows, None), 512)
    rel_rms = float(np.sqrt(np.mean((back - rows) ** 2) / np.mean(rows ** 2)))
    assert rel_rms < RMS_BOUND[qtype]


# ---- shared packing ----
def test_scale_min_packing_round_trips_and_matches_gguf() -> None:
    rng = np.random.default_rng(0)
    ls = rng.integers(0, 64, (50, 8))
    lm = rng.integers(0, 64, (50, 8))
    packed = _kquant.pack_scale_min_k4(ls, lm)
    sc, mn = _kquant.unpack_scale_min_k4(packed)
    np.testing.assert_array_equal(sc, ls)
    np.testing.assert_array_equal(mn, lm)
    gsc, gmn = gguf_quants.Q4_K.get_scale_min(packed)
    np.testing.assert_array_equal(gsc, ls)
    np.testing.assert_array_equal(gmn, lm)


def test_q3_scale_packing_round_trips() -> None:
    l6 = np.random.default_rng(1).integers(0, 64, (50, 16))
    np.testing.assert_array_equal(_kquant.unpack_q3_scales(_kquant.pack_q3_scales(l6)), l6 - 32)
