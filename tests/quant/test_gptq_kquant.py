"""GPTQ on GGUF blocks (quant/algorithms/gptq_kquant.py): the K-quants and the 32-value legacy types, and the
level and sub-block scale rewriting it relies on (LevelCodes, SubScaleCodes).

Everything here runs on random data with whatever QUANTCLI_BACKEND selects (the scale search is the type's
encoder, C or NumPy reference); run it under both. One test runs both backends itself and compares the bytes.
"""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from quantcli.models.transforms import PermuteRope
from quantcli.quant.algorithms.gptq_kquant import (
    ACTIVATION_BLOCK,
    GPTQ_TYPES,
    KQUANT_TYPES,
    LEGACY_TYPES,
    KGPTQOptions,
    affine_of,
    code_slopes,
    gptq_kquant,
    output_error,
    refit_sub_block,
    runtime_inputs,
)
from quantcli.quant.backend import get_backend
from quantcli.quant.base import quant_class
from quantcli.quant.types._kquant import QK_K

TYPES = [pytest.param(t, id=t.name) for t in GPTQ_TYPES]
KQUANTS = [pytest.param(t, id=t.name) for t in KQUANT_TYPES]
LEGACY = [pytest.param(t, id=t.name) for t in LEGACY_TYPES]


def width(qtype: T) -> int:
    """Columns of a test matrix: two super-blocks for a K-quant; for a legacy type a width that is not a multiple
    of 256 (as the rows that fall back to these types are), 18 blocks of 32 as in SmolLM2's 576."""
    return 2 * QK_K if qtype in KQUANT_TYPES else 18 * 32


def correlated_inputs(rng: np.random.Generator, n: int, cols: int) -> np.ndarray:
    """Inputs with correlated columns of uneven scale, as a transformer's activations have."""
    mix = rng.normal(size=(cols, cols)) * 0.15 + np.eye(cols)
    return (rng.normal(size=(n, cols)) @ mix * rng.uniform(0.2, 3.0, size=cols)).astype(np.float32)


def layer_problem(qtype: T, seed: int, n: int = 1024) -> tuple[np.ndarray, np.ndarray, int]:
    """(W [48, width], H = X^T X, n) of a layer with correlated inputs."""
    rng = np.random.default_rng(seed)
    x = correlated_inputs(rng, n, width(qtype))
    w = (rng.normal(size=(48, width(qtype))) * 0.05).astype(np.float32)
    return w, x.T.astype(np.float64) @ x, n


@pytest.mark.parametrize("qtype", TYPES)
def test_gptq_lowers_output_error_below_the_plain_encoder(qtype: T) -> None:
    w, h, n = layer_problem(qtype, 7)
    cols = w.shape[1]
    cls = quant_class(qtype)
    importance = (np.diag(h) / n).astype(np.float32)   # what llama.cpp's imatrix would hold for these inputs
    plain = cls.dequantize(get_backend().quantize(qtype, w, importance), cols)
    encoded, decoded = gptq_kquant(w, h, qtype, count=n)
    assert output_error(w, decoded, h) < 0.9 * output_error(w, plain, h)


@pytest.mark.parametrize("qtype", TYPES)
def test_identity_hessian_gives_valid_blocks_rounded_to_nearest(qtype: T) -> None:
    rng = np.random.default_rng(3)
    rows, cols = 16, width(qtype)
    w = (rng.normal(size=(rows, cols)) * rng.uniform(0.01, 1.0, size=(rows, 1))).astype(np.float32)
    encoded, decoded = gptq_kquant(w, np.eye(cols), qtype)
    cls = quant_class(qtype)
    assert encoded.dtype == np.uint8 and encoded.shape == (rows, cls.row_bytes(cols))
    assert np.array_equal(decoded, cls.dequantize(encoded, cols))        # what any GGUF reader decodes
    assert np.isfinite(decoded).all()
    # With H = I no error is fed forward: every value is the representable value nearest to it under its
    # block's scales (levels level_min..levels-1 of a * L + b).
    a, b = affine_of(cls, encoded.reshape(-1, cls.type_size))
    grid = a[..., None] * np.arange(cls.level_min, cls.levels) + b[..., None]     # (n_blocks, block_size, levels)
    values = w.reshape(-1, cls.block_size).astype(np.float64)
    best = np.abs(grid - values[..., None]).min(axis=-1)
    got = np.abs(decoded.reshape(-1, cls.block_size).astype(np.float64) - values)
    assert np.all(got <= best + 1e-6 * (np.abs(values) + 1e-6))


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES)
def test_with_levels_reproduces_the_encoders_bytes(qtype: T, weighted: bool) -> None:
    """Reading the levels back from the decoded values and writing them with with_levels gives the encoder's
    own bytes: pack_levels is the encoder's layout, and the scale bytes are left alone."""
    rng = np.random.default_rng(11)
    cols = width(qtype)
    w = rng.normal(size=(8, cols)).astype(np.float32)
    importance = rng.uniform(0.1, 4.0, size=cols).astype(np.float32) if weighted else None
    cls = quant_class(qtype)
    blocks = get_backend().quantize(qtype, w, importance).reshape(-1, cls.type_size)
    a, b = affine_of(cls, blocks)
    assert np.all(a != 0)
    levels = np.rint((cls.decode_blocks(blocks).astype(np.float64) - b) / a).astype(np.int32)
    assert levels.min() >= cls.level_min and levels.max() < cls.levels
    assert np.array_equal(cls.with_levels(blocks, levels), blocks)


@pytest.mark.parametrize("qtype", [pytest.param(T.Q4_K, id="Q4_K"), pytest.param(T.Q6_K, id="Q6_K")])
def test_rope_permutation_commutes_with_the_row_wise_loop(qtype: T) -> None:
    """llama's q/k permutation moves whole rows; H acts on columns. Quantizing the HF rows and permuting the
    encoded rows gives the bytes of permuting first and quantizing after, so the driver may do either."""
    rng = np.random.default_rng(5)
    n_head, rows, cols = 4, 64, QK_K * 2
    x = correlated_inputs(rng, 512, cols)
    h = x.T.astype(np.float64) @ x
    w = (rng.normal(size=(rows, cols)) * 0.05).astype(np.float32)
    perm = PermuteRope(n_head)
    after, _ = gptq_kquant(w, h, qtype, count=512)
    before, _ = gptq_kquant(np.ascontiguousarray(perm.apply([w])), h, qtype, count=512)
    assert np.array_equal(perm.apply([after]), before)


def test_rejects_a_type_without_level_codes() -> None:
    with pytest.raises(ValueError, match="Q4_K.*Q5_0"):
        gptq_kquant(np.zeros((2, QK_K), np.float32), np.eye(QK_K), T.IQ4_NL)


@pytest.mark.parametrize("qtype", LEGACY)
def test_legacy_rows_need_whole_blocks_of_32(qtype: T) -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        gptq_kquant(np.zeros((2, 40), np.float32), np.eye(40), qtype)


@pytest.mark.parametrize("qtype", TYPES)
def test_c_and_reference_backends_give_the_same_bytes(qtype: T) -> None:
    """The scale search runs in the C kernels or the NumPy reference; the column loop is the same NumPy code
    either way, so the whole GPTQ encoding must agree bit for bit (and a second run gives the same bytes)."""
    rng = np.random.default_rng(13)
    rows, cols, n = 24, width(qtype), 512
    x = correlated_inputs(rng, n, cols)
    h = x.T.astype(np.float64) @ x
    w = (rng.normal(size=(rows, cols)) * 0.05).astype(np.float32)
    c_bytes, c_values = gptq_kquant(w, h, qtype, count=n, backend=get_backend("c"))
    ref_bytes, ref_values = gptq_kquant(w, h, qtype, count=n, backend=get_backend("reference"))
    again, _ = gptq_kquant(w, h, qtype, count=n, backend=get_backend("c"))
    assert np.array_equal(c_bytes, ref_bytes) and np.array_equal(c_values, ref_values)
    assert np.array_equal(c_bytes, again)


@pytest.mark.parametrize("qtype", LEGACY)
def test_legacy_blocks_keep_the_encoders_scales_from_the_updated_weights(qtype: T) -> None:
    """Only the level bytes differ from what the type's encoder writes for the block; with H = I (no error
    fed forward) the scale bytes are exactly the imatrix-weighted encoder's for the original weights."""
    rng = np.random.default_rng(17)
    rows, cols = 8, width(qtype)
    w = rng.normal(size=(rows, cols)).astype(np.float32)
    h = np.diag(rng.uniform(0.5, 2.0, size=cols))
    cls = quant_class(qtype)
    encoded, _ = gptq_kquant(w, h, qtype, count=1)
    # block by block, as the loop calls the encoder: one block of 32 columns of every row at a time
    importance = np.diag(h).astype(np.float32)
    plain = np.concatenate([get_backend().quantize(qtype, np.ascontiguousarray(w[:, c:c + 32]), importance[c:c + 32])
                            for c in range(0, cols, 32)], axis=1)
    start, stop = cls.quant_span
    got, want = encoded.reshape(-1, cls.type_size), plain.reshape(-1, cls.type_size)
    assert np.array_equal(np.delete(got, np.s_[start:stop], axis=1), np.delete(want, np.s_[start:stop], axis=1))


def q8_rounded(x: np.ndarray, block: int) -> np.ndarray:
    """x as llama.cpp's CPU matmul sees it, written out value by value: each block of `block` inputs of a token
    rounded to 8 bits with the step absmax / 127."""
    out = np.empty_like(x)
    for t in range(x.shape[0]):
        for b0 in range(0, x.shape[1], block):
            part = x[t, b0:b0 + block]
            step = np.float32(np.abs(part).max() / np.float32(127))
            out[t, b0:b0 + block] = np.rint(part / step) * step if step > 0 else 0
    return out


@pytest.mark.parametrize("block", [32, 256])
def test_runtime_inputs_round_each_block_to_8_bits_of_its_largest_input(block: int) -> None:
    rng = np.random.default_rng(11)
    x = correlated_inputs(rng, 40, 512)
    x[:3, :block] = 0.0                        # a block that is all zeros stays zeros
    got = runtime_inputs(x, block)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert np.array_equal(got, q8_rounded(x, block))
    assert not got[:3, :block].any()
    blocks = x[3:].reshape(37, -1, block)
    levels = got[3:].reshape(37, -1, block) / (np.abs(blocks).max(axis=2, keepdims=True) / 127)
    assert np.abs(levels).max() <= 127 + 1e-3 and np.allclose(levels, np.rint(levels), atol=1e-3)


@pytest.mark.parametrize("qtype", [pytest.param(T.Q4_K, id="Q4_K"), pytest.param(T.Q4_0, id="Q4_0")])
def test_the_gguf_pass_takes_its_hessian_from_the_inputs_the_runtime_multiplies(qtype: T) -> None:
    from quantcli.quant.algorithms.hessian import Hessians
    from quantcli.stages.gptq_gguf import _Capture

    rng = np.random.default_rng(2)
    x = correlated_inputs(rng, 64, QK_K)
    block = ACTIVATION_BLOCK[qtype]
    hess = Hessians(["q", "k"])
    capture = _Capture(hess, {"q": block, "k": block}, {}, {}, {})
    capture("q", x)
    capture("k", x)                            # same input object, as the engine hands q/k/v
    rounded = runtime_inputs(x, block).astype(np.float64)
    expected, unrounded = rounded.T @ rounded, x.T.astype(np.float64) @ x
    tol = 1e-6 * np.abs(unrounded).max()       # float32 products against float64 ones
    assert np.abs(expected - unrounded).max() > 1000 * tol
    for name in ("q", "k"):
        np.testing.assert_allclose(hess.gram(name), expected, rtol=0, atol=tol)
        assert hess.count(name) == 64
    exact = Hessians(["q"])
    _Capture(exact, {}, {}, {}, {})("q", x)   # no block named: the exact inputs
    np.testing.assert_allclose(exact.gram("q"), unrounded, rtol=0, atol=tol)


def encoded_kquant(qtype: T, seed: int) -> tuple[type, np.ndarray, np.ndarray]:
    """(class, blocks, values) of random rows encoded by the type's own importance-weighted search."""
    rng = np.random.default_rng(seed)
    w = (rng.normal(size=(12, QK_K)) * rng.uniform(0.01, 1.0, size=(12, 1))).astype(np.float32)
    imp = rng.uniform(0.1, 4.0, size=QK_K).astype(np.float32)
    return quant_class(qtype), get_backend().quantize(qtype, w, imp), w


@pytest.mark.parametrize("qtype", KQUANTS)
def test_scale_codes_read_back_what_was_written_and_nothing_else_changes(qtype: T) -> None:
    cls, blocks, _ = encoded_kquant(qtype, 21)
    codes = cls.scale_codes(blocks)
    assert np.array_equal(cls.with_scale_codes(blocks, codes), blocks)
    rng = np.random.default_rng(22)
    lows = [lo for lo, _ in cls.code_ranges]
    highs = [hi for _, hi in cls.code_ranges]
    other = rng.integers(lows, np.add(highs, 1), size=codes.shape).astype(np.int32)   # every code, ends included
    rewritten = cls.with_scale_codes(blocks, other)
    assert np.array_equal(cls.scale_codes(rewritten), other)
    start, stop = cls.quant_span
    assert np.array_equal(rewritten[:, start:stop], blocks[:, start:stop])             # levels untouched
    assert cls.sub_size * codes.shape[1] == cls.block_size


@pytest.mark.parametrize("qtype", KQUANTS)
def test_code_slopes_predict_the_decoder_for_any_codes(qtype: T) -> None:
    cls, blocks, _ = encoded_kquant(qtype, 23)
    a, b = affine_of(cls, blocks)
    slopes = code_slopes(cls, blocks, a, b)
    codes = cls.scale_codes(blocks)
    rng = np.random.default_rng(24)
    lows = [lo for lo, _ in cls.code_ranges]
    highs = [hi for _, hi in cls.code_ranges]
    other = rng.integers(lows, np.add(highs, 1), size=codes.shape).astype(np.int32)
    a2, b2 = affine_of(cls, cls.with_scale_codes(blocks, other))
    first = np.arange(0, cls.block_size, cls.sub_size)
    moved = (other - codes).astype(np.float64)
    scale = np.abs(a).max() + np.abs(b).max()
    assert np.allclose(a[:, first] + (moved * slopes[..., 0]).sum(axis=2), a2[:, first], atol=1e-6 * scale)
    assert np.allclose(b[:, first] + (moved * slopes[..., 1]).sum(axis=2), b2[:, first], atol=1e-6 * scale)


def weighted_rounding_error(cls: type, blocks: np.ndarray, k: int, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per block: the weighted square error of rounding sub-block k's values x to their nearest levels."""
    a, b = affine_of(cls, blocks)
    cols = slice(k * cls.sub_size, (k + 1) * cls.sub_size)
    grid = a[:, cols, None] * np.arange(cls.level_min, cls.levels) + b[:, cols, None]
    nearest = np.abs(grid - x[..., None]).min(axis=-1)
    return (nearest ** 2) @ weights


@pytest.mark.parametrize("qtype", KQUANTS)
def test_refit_keeps_the_codes_unless_another_rounds_the_sub_block_strictly_better(qtype: T) -> None:
    """Values moved away from what the codes were chosen for (as GPTQ's fed-back errors move them): the refit
    sub-block's weighted error is never above the encoder's, is below it for some blocks, and the other
    sub-blocks' codes stay."""
    cls, blocks, w = encoded_kquant(qtype, 25)
    rng = np.random.default_rng(26)
    k = 1
    cols = slice(k * cls.sub_size, (k + 1) * cls.sub_size)
    x = w[:, cols].astype(np.float64) * rng.uniform(0.6, 1.6, size=(w.shape[0], 1))
    weights = rng.uniform(0.2, 5.0, size=cls.sub_size)
    a, b = affine_of(cls, blocks)
    refit = refit_sub_block(cls, blocks, k, x, weights, 2, affine=(a, b), slopes=code_slopes(cls, blocks, a, b))
    before = weighted_rounding_error(cls, blocks, k, x, weights)
    after = weighted_rounding_error(cls, refit, k, x, weights)
    assert np.all(after <= before * (1 + 1e-9)) and np.any(after < 0.95 * before)
    old, new = cls.scale_codes(blocks), cls.scale_codes(refit)
    assert np.array_equal(np.delete(old, k, axis=1), np.delete(new, k, axis=1))
    assert np.all(np.abs(new[:, k] - old[:, k]) <= 2)
    unchanged = np.all(new[:, k] == old[:, k], axis=1)
    assert np.array_equal(refit[unchanged], blocks[unchanged])


@pytest.mark.parametrize("qtype", KQUANTS)
def test_refitting_sub_block_scales_lowers_the_gptq_output_error(qtype: T) -> None:
    w, h, n = layer_problem(qtype, 27)
    _, kept = gptq_kquant(w, h, qtype, count=n, options=KGPTQOptions(scale_radius=0))
    encoded, refit = gptq_kquant(w, h, qtype, count=n)
    assert np.array_equal(refit, quant_class(qtype).dequantize(encoded, w.shape[1]))
    assert output_error(w, refit, h) < output_error(w, kept, h)
