"""The engine's numerics against independent formulas: erf GELU, rope tables, and every rope scaling kind
against transformers' own frequency functions (and llama 3's against the GGUF plan's rope_freqs table)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from quantcli.engine import ops
from quantcli.models.spec import RopeSpec, spec_from_config
from quantcli.models.transforms import Llama3RopeFactors

from .conftest import LLAMA_CONFIG


def test_gelu_erf_matches_math_erf() -> None:
    x = np.linspace(-12, 12, 20001, dtype=np.float32)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    got = ops.gelu_erf(x)
    assert got.dtype == np.float32
    assert np.abs(got - exact).max() < 4e-7 * max(1.0, float(np.abs(x).max()))


def test_gelu_tanh_and_silu_formulas() -> None:
    x = np.linspace(-8, 8, 1001, dtype=np.float32)
    xd = x.astype(np.float64)
    tanh = 0.5 * xd * (1 + np.tanh(math.sqrt(2 / math.pi) * (xd + 0.044715 * xd ** 3)))
    np.testing.assert_allclose(ops.gelu_tanh(x), tanh, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.silu(x), xd / (1 + np.exp(-xd)), rtol=1e-5, atol=1e-6)


def test_rope_rotates_pairs_of_halves() -> None:
    rope = RopeSpec("default", 10000.0, 8)
    cos, sin = ops.rope_tables(rope, 5)
    x = np.random.default_rng(0).standard_normal((5, 3, 12)).astype(np.float32)   # ctx, heads, head_dim (partial)
    got = ops.apply_rope(x, cos, sin)
    freq = 1.0 / 10000.0 ** (np.arange(0, 8, 2) / 8)
    for p in range(5):
        z = (x[p, :, :4] + 1j * x[p, :, 4:8]) * np.exp(1j * p * freq)
        np.testing.assert_allclose(got[p, :, :4], z.real, rtol=0, atol=2e-5)
        np.testing.assert_allclose(got[p, :, 4:8], z.imag, rtol=0, atol=2e-5)
    np.testing.assert_array_equal(got[..., 8:], x[..., 8:])


@pytest.mark.parametrize("dims", [16, 8])     # full and partial rotary
def test_rope_and_rms_norm_round_as_transformers_does(dims: int) -> None:
    """Bit for bit transformers' float32 order of operations: q * cos + rotate_half(q) * sin, and
    (x * rsqrt(mean(x^2) + eps)) * w (the engine computes them without some of the temporaries)."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((2, 7, 3, 16)) * 4).astype(np.float32)           # seq, ctx, heads, head_dim
    cos, sin = ops.rope_tables(RopeSpec("default", 10000.0, dims), 7)
    rot = x[..., :dims]
    half_turn = np.concatenate([-rot[..., dims // 2:], rot[..., :dims // 2]], axis=-1)
    expected = np.concatenate([rot * cos[:, None] + half_turn * sin[:, None], x[..., dims:]], axis=-1)
    np.testing.assert_array_equal(ops.apply_rope(x, cos, sin).view(np.uint32), expected.view(np.uint32))
    h = (rng.standard_normal((64, 48)) * 3).astype(np.float32)
    w = rng.standard_normal(48).astype(np.float32)
    var = np.mean(np.square(h), axis=-1, keepdims=True, dtype=np.float32)
    expected = (h * (np.float32(1) / np.sqrt(var + np.float32(1e-5)))) * w
    np.testing.assert_array_equal(ops.rms_norm(h, w, 1e-5).view(np.uint32), expected.view(np.uint32))


def test_llama3_frequencies_agree_with_the_gguf_rope_freqs() -> None:
    spec = spec_from_config({**LLAMA_CONFIG, "head_dim": 128, "rope_theta": 500000.0,
                             "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    assert spec.rope is not None
    freq, scale = ops.inv_freq(spec.rope, 10)
    base, _ = ops.inv_freq(RopeSpec("default", 500000.0, 128), 10)
    divisors = Llama3RopeFactors(head_dim=128, rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                                 high_freq_factor=4.0, original_context=8192).apply([])
    np.testing.assert_allclose(freq, base / divisors, rtol=1e-5)
    assert scale == 1.0


ROPE_CASES = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
}


@pytest.mark.parametrize("kind", sorted(ROPE_CASES))
def test_rope_scaling_matches_transformers(kind: str) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = {**LLAMA_CONFIG, "max_position_embeddings": 64, "rope_scaling": ROPE_CASES[kind]}
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.items() if k != "architectures"})
    ref, ref_scale = ROPE_INIT_FUNCTIONS[kind](hf_cfg, torch.device("cpu"))
    spec = spec_from_config(cfg)
    assert spec.rope is not None and spec.rope.kind == kind
    got, scale = ops.inv_freq(spec.rope, 32)
    np.testing.assert_allclose(got, ref.numpy(), rtol=2e-6)
    assert scale == pytest.approx(ref_scale)


@pytest.mark.parametrize("seq_len", [8, 200])
def test_longrope_matches_transformers(seq_len: int) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = {**LLAMA_CONFIG, "architectures": ["Phi3ForCausalLM"], "max_position_embeddings": 512,
           "original_max_position_embeddings": 128,
           "rope_scaling": {"type": "longrope", "long_factor": [1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
                            "short_factor": [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7]}}
    hf_cfg = transformers.Phi3Config(**{k: v for k, v in cfg.items() if k != "architectures"})
    ref, ref_scale = ROPE_INIT_FUNCTIONS["longrope"](hf_cfg, torch.device("cpu"), seq_len=seq_len)
    spec = spec_from_config(cfg)
    assert spec.rope is not None
    got, scale = ops.inv_freq(spec.rope, seq_len)
    np.testing.assert_allclose(got, ref.numpy(), rtol=2e-6)
    assert scale == pytest.approx(ref_scale)
