"""Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0: both backends give llama.cpp's bytes.

Sources of truth, in order: the golden vectors in formats/golden/ (made by llama.cpp), llama.cpp itself on
fresh awkward data (tests/ggml_oracle.py), gguf-py's independent encoders (for the types it can encode) and
decoders.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

from quantcli.quant.backend import get_backend
from quantcli.quant.base import quant_class

# the bytes come from the C kernels or the NumPy reference: `make test` runs this module on both, and on the
# kernels' baseline variant (QUANTCLI_ISA=default)
pytestmark = pytest.mark.backend

T = GGMLQuantizationType
TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL, T.IQ4_XS, T.TQ1_0, T.TQ2_0]
#: The types gguf-py can encode too (it has no IQ4 encoder).
GGUF_ENCODABLE = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.TQ1_0, T.TQ2_0]
#: Q4_0 / Q5_0 round `x * id + offset`: the offsets whose FMA-sensitivity we check.
ROUNDING_OFFSETS = {T.Q4_0: 8.5, T.Q5_0: 16.5}
GOLDEN = Path(__file__).resolve().parents[2] / "formats" / "golden"
IMATRIX_KINDS = [None, "dense", "sparse", "zeros"]
ids = [t.name for t in TYPES]


def encode(backend: str, qtype: GGMLQuantizationType, rows: np.ndarray, imatrix: np.ndarray | None,
           threads: int = 1) -> np.ndarray:
    """The reference goes through the class itself (QuantType.quantize), C through the backend."""
    if backend == "reference":
        return quant_class(qtype).quantize(rows, imatrix)
    return get_backend("c").quantize(qtype, rows, imatrix, threads=threads)


def row_length(qtype: GGMLQuantizationType, blocks: int) -> int:
    return blocks * GGML_QUANT_SIZES[qtype][0]


def awkward_rows(seed: int, n_rows: int, n_per_row: int, finite: bool = False) -> np.ndarray:
    """Gaussian rows at scales from 1e-6 to 1e3 with, cycling over rows: zeros, signed zeros, constants, huge
    outliers, subnormals, tiny normals (inverse scales overflow), values near float32's limits, rounding ties,
    one-signed rows, heavy tails and (unless finite) NaN / Inf; plus zeroed and constant blocks of 32."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, n_per_row)).astype(np.float32)
    kinds = 14 if finite else 15
    for r in range(n_rows):
        kind = r % kinds
        if kind == 0:
            x[r] = 0.0
        elif kind == 1:
            x[r] = np.where(rng.random(n_per_row) < 0.5, np.float32(-0.0), np.float32(0.0))
        elif kind == 2:
            x[r] = np.float32(rng.standard_normal())
        elif kind == 3:
            x[r, rng.integers(0, n_per_row, 5)] *= np.float32(1e5)
        elif kind == 4:
            x[r] *= np.float32(1e-40)                        # subnormal
        elif kind == 5:
            x[r] *= np.float32(3e-38)                        # 1/d overflows for some blocks
        elif kind == 6:
            x[r] *= np.float32(1e37)                         # max - min and squares overflow
        elif kind == 7:
            x[r] = np.round(x[r] * 8) / 2                    # ties
        elif kind == 8:
            x[r] = np.abs(x[r])
        elif kind == 9:
            x[r] = -np.abs(x[r])
        elif kind == 10:
            x[r] = rng.standard_t(2, n_per_row).astype(np.float32)
        elif kind == 11:
            x[r] = rng.integers(-3, 4, n_per_row).astype(np.float32)   # repeated extremes of both signs
        elif kind == 14:
            x[r, rng.integers(0, n_per_row, 3)] = np.float32(np.nan)
            x[r, rng.integers(0, n_per_row, 2)] = np.float32(np.inf)
            x[r, rng.integers(0, n_per_row, 2)] = np.float32(-np.inf)
        else:
            x[r] *= np.float32(10.0 ** rng.uniform(-6, 3))
    blocks = x.reshape(n_rows, -1, 32)
    blocks[rng.random(blocks.shape[:2]) < 0.04] = 0.0
    const = rng.random(blocks.shape[:2]) < 0.03
    blocks[const] = rng.standard_normal((int(const.sum()), 1)).astype(np.float32)
    return x


def make_imatrix(kind: str | None, seed: int, n_per_row: int) -> np.ndarray | None:
    if kind is None:
        return None
    if kind == "zeros":
        return np.zeros(n_per_row, dtype=np.float32)
    rng = np.random.default_rng(seed + 1000)
    qw = rng.exponential(1.0, n_per_row).astype(np.float32)
    if kind == "sparse":
        qw[rng.random(n_per_row) < 0.3] = 0.0
        qw[:64] = 0.0                                        # whole blocks without weight
        qw[-3:] = np.float32(1e30)                           # and a few enormous ones
    return qw


# ---- golden vectors (no llama.cpp needed) ----
@pytest.mark.parametrize("backend", ["c", "reference"])
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_golden_vectors_are_reproduced(qtype: GGMLQuantizationType, with_imatrix: bool, backend: str) -> None:
    golden = np.load(GOLDEN / f"{qtype.name.lower()}.npz")
    imatrix = golden["imatrix"] if with_imatrix else None
    expected = golden["expected_imatrix"] if with_imatrix else golden["expected"]
    got = encode(backend, qtype, golden["rows"], imatrix)
    mismatched = np.nonzero((got != expected).any(axis=1))[0]
    assert mismatched.size == 0, f"rows {mismatched.tolist()} differ from llama.cpp's golden bytes"


# ---- live llama.cpp (the ggml_quantize fixture is in tests/conftest.py) ----
@pytest.mark.parametrize("backend", ["c", "reference"])
@pytest.mark.parametrize("imatrix_kind", IMATRIX_KINDS, ids=lambda k: k or "none")
@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_backends_match_llama_cpp_on_awkward_rows(qtype: GGMLQuantizationType, imatrix_kind: str | None,
                                                   backend: str, ggml_quantize) -> None:
    n = row_length(qtype, 3 if qtype in (T.IQ4_XS, T.TQ1_0, T.TQ2_0) else 19)   # partial groups of 8 blocks
    rows = awkward_rows(seed=int(qtype), n_rows=30, n_per_row=n)
    qw = make_imatrix(imatrix_kind, int(qtype), n)
    expected = ggml_quantize(qtype, rows, qw)
    np.testing.assert_array_equal(encode(backend, qtype, rows, qw, threads=2), expected)


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_c_matches_llama_cpp_on_weight_like_data(qtype: GGMLQuantizationType, ggml_quantize) -> None:
    rng = np.random.default_rng(7)
    rows = (rng.standard_normal((64, 2048)) * 0.02).astype(np.float32)
    qw = rng.exponential(1.0, 2048).astype(np.float32)
    for imatrix in (None, qw):
        np.testing.assert_array_equal(encode("c", qtype, rows, imatrix), ggml_quantize(qtype, rows, imatrix))


#: Byte offsets of each block's fp16 fields (formats/<TYPE>.md).
FP16_FIELDS = {T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,), T.IQ4_NL: (0,),
               T.IQ4_XS: (0,), T.TQ1_0: (52,), T.TQ2_0: (64,)}


def clear_nan_sign_bits(qtype: GGMLQuantizationType, data: np.ndarray) -> np.ndarray:
    """The bytes with the sign bit of every NaN fp16 field cleared."""
    blocks = data.reshape(-1, GGML_QUANT_SIZES[qtype][1]).copy()
    for offset in FP16_FIELDS[qtype]:
        h = np.ascontiguousarray(blocks[:, offset:offset + 2]).view("<u2")[:, 0]
        nan = ((h & 0x7C00) == 0x7C00) & ((h & 0x03FF) != 0)
        blocks[:, offset:offset + 2] = np.where(nan, h & 0x7FFF, h).astype("<u2").view(np.uint8).reshape(-1, 2)
    return blocks


@pytest.mark.parametrize("backend", ["c", "reference"])
@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_backends_match_llama_cpp_on_random_bit_patterns(qtype: GGMLQuantizationType, backend: str,
                                                         ggml_quantize) -> None:
    # Any float32 bit pattern: NaNs with payloads, infinities, subnormals, values near 3e38.
    rng = np.random.default_rng(int(qtype) + 99)
    bits = rng.integers(0, 2 ** 32, (12, 512), dtype=np.uint64).astype(np.uint32).view(np.float32)
    sprinkled = rng.standard_normal((12, 512)).astype(np.float32)
    mask = rng.random(sprinkled.shape) < 0.03
    sprinkled[mask] = bits[mask]
    for rows in (bits, sprinkled):
        for qw in (None, rng.exponential(1.0, 512).astype(np.float32)):
            expected = ggml_quantize(qtype, rows, qw)
            got = encode(backend, qtype, rows, qw)
            if qw is not None and qtype in (T.Q4_0, T.Q5_0):
                # block_rules.md: the sign of a NaN scale from this path is the one bit allowed to differ
                got, expected = clear_nan_sign_bits(qtype, got), clear_nan_sign_bits(qtype, expected)
            np.testing.assert_array_equal(got.reshape(expected.shape), expected)


# ---- the two backends against each other ----
@pytest.mark.parametrize("imatrix_kind", [None, "sparse"], ids=["none", "sparse"])
@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_reference_and_c_agree_bit_for_bit(qtype: GGMLQuantizationType, imatrix_kind: str | None) -> None:
    n = row_length(qtype, 5 if GGML_QUANT_SIZES[qtype][0] == 256 else 37)
    rows = awkward_rows(seed=int(qtype) + 50, n_rows=45, n_per_row=n)
    qw = make_imatrix(imatrix_kind, 3, n)
    np.testing.assert_array_equal(encode("c", qtype, rows, qw), encode("reference", qtype, rows, qw))


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_c_bytes_do_not_depend_on_thread_count(qtype: GGMLQuantizationType, with_imatrix: bool) -> None:
    n = row_length(qtype, 3 if GGML_QUANT_SIZES[qtype][0] == 256 else 24)
    rows = awkward_rows(seed=11, n_rows=37, n_per_row=n)
    qw = make_imatrix("dense", 11, n) if with_imatrix else None
    one = encode("c", qtype, rows, qw, threads=1)
    np.testing.assert_array_equal(one, encode("c", qtype, rows, qw, threads=2))
    np.testing.assert_array_equal(one, encode("c", qtype, rows, qw, threads=5))


def test_imatrix_changes_the_bytes_only_where_llama_cpp_uses_it() -> None:
    rows = awkward_rows(seed=3, n_rows=8, n_per_row=512, finite=True)
    qw = make_imatrix("dense", 3, 512)
    for qtype in TYPES:
        plain, weighted = encode("c", qtype, rows, None), encode("c", qtype, rows, qw)
        if qtype in (T.Q8_0, T.TQ1_0, T.TQ2_0):
            np.testing.assert_array_equal(plain, weighted, err_msg=f"{qtype.name} must ignore the imatrix")
        else:
            assert (plain != weighted).any(), f"{qtype.name} ignored the imatrix"


# ---- gguf-py's encoders, and the FMA question ----
def fma_sensitive_blocks(qtype: GGMLQuantizationType, rows: np.ndarray) -> np.ndarray:
    """Per block of 32: whether some quant would change if `x * id + offset` were one fused multiply-add instead
    of ggml's two roundings (computed in float64, where the product is exact)."""
    f32 = np.float32
    blocks = rows.reshape(-1, 32)
    nmax = f32(ROUNDING_OFFSETS[qtype] - 0.5)
    with np.errstate(all="ignore"):
        idx = np.argmax(np.where(np.isnan(blocks), -1, np.abs(blocks)), axis=1)
        vmax = blocks[np.arange(len(blocks)), idx]
        d = (vmax / -nmax).astype(f32)
        inv = np.where(d != 0, f32(1) / d, f32(0)).astype(f32)[:, None]
        offset = f32(ROUNDING_OFFSETS[qtype])
        plain = np.trunc((blocks * inv).astype(f32) + offset)
        fused = np.trunc((blocks.astype(np.float64) * inv.astype(np.float64) + float(offset)).astype(f32))
    return ((plain != fused) & np.isfinite(plain) & np.isfinite(fused)).any(axis=1)


@pytest.mark.parametrize("qtype", list(ROUNDING_OFFSETS), ids=lambda t: t.name)
def test_golden_rows_hold_fma_sensitive_blocks_and_llama_cpp_rounds_twice(qtype: GGMLQuantizationType) -> None:
    # The golden bytes come from llama.cpp's build; matching them on these blocks (test_golden_vectors_...)
    # shows the product is rounded before the offset is added. This pins that the blocks are really there.
    golden = np.load(GOLDEN / f"{qtype.name.lower()}.npz")
    assert fma_sensitive_blocks(qtype, golden["rows"]).any()


@pytest.mark.parametrize("qtype", GGUF_ENCODABLE, ids=lambda t: t.name)
def test_gguf_py_encoder_differs_at_most_on_fma_sensitive_blocks(qtype: GGMLQuantizationType) -> None:
    # gguf-py's NumPy encoders are an independent implementation of the same rules. Some versions fuse
    # x * id + offset; where that matters (rare: none in millions of Gaussian values) llama.cpp's build
    # rounds twice and so do we. Everywhere else the bytes must agree, except in two corners gguf-py does not
    # model: blocks of only +-0 (it may pick the other zero's sign for a scale) and non-finite input.
    golden = np.load(GOLDEN / f"{qtype.name.lower()}.npz")["rows"]
    rows = awkward_rows(seed=int(qtype) + 7, n_rows=64, n_per_row=golden.shape[1], finite=True)
    rows = np.concatenate([rows, golden[np.isfinite(golden).all(axis=1)]])
    ours = encode("c", qtype, rows, None)
    with np.errstate(all="ignore"):
        theirs = gguf_quants.quantize(rows, qtype)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    differs = (ours.reshape(-1, type_size) != theirs.reshape(-1, type_size)).any(axis=1)
    differs &= ~(rows.reshape(len(differs), -1) == 0).all(axis=1)
    if qtype in ROUNDING_OFFSETS:
        differs &= ~fma_sensitive_blocks(qtype, rows)
    assert not differs.any(), f"{int(differs.sum())} blocks differ from gguf-py outside FMA-sensitive values"


# ---- decoding ----
@pytest.mark.parametrize("qtype", TYPES, ids=ids)
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
# on this input (measured: Q4_0 0.086, Q4_1 0.078, Q5_0 0.043, Q5_1 0.038, Q8_0 0.0054, IQ4_NL 0.077,
# IQ4_XS 0.077; TQ1_0 / TQ2_0 0.81, ternary types are for ternary weights, see the next test).
RMS_BOUND = {T.Q4_0: 0.112, T.Q4_1: 0.101, T.Q5_0: 0.056, T.Q5_1: 0.049, T.Q8_0: 0.0070, T.IQ4_NL: 0.1,
             T.IQ4_XS: 0.1, T.TQ1_0: 0.85, T.TQ2_0: 0.85}


@pytest.mark.parametrize("backend", ["c", "reference"])
@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_decoded_values_approximate_the_input(qtype: GGMLQuantizationType, backend: str) -> None:
    rows = np.random.default_rng(5).standard_normal((16, 512)).astype(np.float32)
    back = quant_class(qtype).dequantize(encode(backend, qtype, rows, None), 512)
    rel_rms = float(np.sqrt(np.mean((back - rows) ** 2) / np.mean(rows ** 2)))
    assert rel_rms < RMS_BOUND[qtype]


def test_ternary_types_round_trip_ternary_weights_exactly() -> None:
    # BitNet-style weights ({-s, 0, +s} per super-block) are what TQ1_0 / TQ2_0 exist for: they come back exact.
    rng = np.random.default_rng(9)
    trits = rng.integers(-1, 2, (8, 512)).astype(np.float32)
    trits[:, ::256] = 1.0                                   # every super-block reaches its scale
    rows = trits * np.float32(0.125)
    for qtype in (T.TQ1_0, T.TQ2_0):
        for backend in ("c", "reference"):
            back = quant_class(qtype).dequantize(encode(backend, qtype, rows, None), 512)
            np.testing.assert_array_equal(back, rows)
