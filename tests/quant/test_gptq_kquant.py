"""GPTQ on K-quant blocks (quant/algorithms/gptq_kquant.py) and the level rewriting it relies on (LevelCodes).

Everything here runs on random data with whatever QUANTCLI_BACKEND selects (the scale search is the type's
encoder, C or NumPy reference); run it under both.
"""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from quantcli.models.transforms import PermuteRope
from quantcli.quant.algorithms.gptq_kquant import KQUANT_TYPES, affine_of, gptq_kquant, output_error
from quantcli.quant.backend import get_backend
from quantcli.quant.base import quant_class
from quantcli.quant.types._kquant import QK_K

TYPES = [pytest.param(t, id=t.name) for t in KQUANT_TYPES]


def correlated_inputs(rng: np.random.Generator, n: int, cols: int) -> np.ndarray:
    """Inputs with correlated columns of uneven scale, as a transformer's activations have."""
    mix = rng.normal(size=(cols, cols)) * 0.15 + np.eye(cols)
    return (rng.normal(size=(n, cols)) @ mix * rng.uniform(0.2, 3.0, size=cols)).astype(np.float32)


@pytest.mark.parametrize("qtype", TYPES)
def test_gptq_lowers_output_error_below_the_plain_encoder(qtype: T) -> None:
    rng = np.random.default_rng(7)
    rows, cols, n = 48, 2 * QK_K, 1024
    x = correlated_inputs(rng, n, cols)
    h = x.T.astype(np.float64) @ x
    w = (rng.normal(size=(rows, cols)) * 0.05).astype(np.float32)
    cls = quant_class(qtype)
    importance = (np.diag(h) / n).astype(np.float32)   # what llama.cpp's imatrix would hold for these inputs
    plain = cls.dequantize(get_backend().quantize(qtype, w, importance), cols)
    encoded, decoded = gptq_kquant(w, h, qtype, count=n)
    assert output_error(w, decoded, h) < 0.9 * output_error(w, plain, h)


@pytest.mark.parametrize("qtype", TYPES)
def test_identity_hessian_gives_valid_blocks_rounded_to_nearest(qtype: T) -> None:
    rng = np.random.default_rng(3)
    rows, cols = 16, 2 * QK_K
    w = (rng.normal(size=(rows, cols)) * rng.uniform(0.01, 1.0, size=(rows, 1))).astype(np.float32)
    encoded, decoded = gptq_kquant(w, np.eye(cols), qtype)
    cls = quant_class(qtype)
    assert encoded.dtype == np.uint8 and encoded.shape == (rows, cls.row_bytes(cols))
    assert np.array_equal(decoded, cls.dequantize(encoded, cols))        # what any GGUF reader decodes
    assert np.isfinite(decoded).all()
    # With H = I no error is fed forward: every value is the representable value nearest to it under its
    # block's scales (levels 0..levels-1 of a * L + b).
    a, b = affine_of(cls, encoded.reshape(-1, cls.type_size))
    grid = a[..., None] * np.arange(cls.levels) + b[..., None]           # (n_super, 256, levels)
    best = np.abs(grid - w.reshape(-1, QK_K)[..., None].astype(np.float64)).min(axis=-1)
    got = np.abs(decoded.reshape(-1, QK_K).astype(np.float64) - w.reshape(-1, QK_K))
    assert np.all(got <= best + 1e-6 * (np.abs(w).reshape(-1, QK_K) + 1e-6))


@pytest.mark.parametrize("qtype", TYPES)
def test_with_levels_reproduces_the_encoders_bytes(qtype: T) -> None:
    """Reading the levels back from the decoded values and writing them with with_levels gives the encoder's
    own bytes: pack_levels is the encoder's layout, and the scale bytes are left alone."""
    rng = np.random.default_rng(11)
    w = rng.normal(size=(8, 2 * QK_K)).astype(np.float32)
    cls = quant_class(qtype)
    blocks = get_backend().quantize(qtype, w).reshape(-1, cls.type_size)
    a, b = affine_of(cls, blocks)
    assert np.all(a != 0)
    levels = np.rint((cls.decode_blocks(blocks).astype(np.float64) - b) / a).astype(np.int32)
    assert levels.min() >= 0 and levels.max() < cls.levels
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
    with pytest.raises(ValueError, match="Q4_K"):
        gptq_kquant(np.zeros((2, QK_K), np.float32), np.eye(QK_K), T.Q8_0)
