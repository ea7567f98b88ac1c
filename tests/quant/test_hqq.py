"""HQQ zero points (quant/algorithms/hqq.py and its C twin int_hqq.c): the twins agree bit for bit, the result is
expressible in compressed-tensors (integer zero points in range, scales in their stored dtype), and its reconstruction error
is below min-max's on random and on real weights."""
from __future__ import annotations

import numpy as np
import pytest

from quantcli.errors import InputError
from quantcli.io.checkpoint import Checkpoint
from quantcli.quant.algorithms.hqq import shrink
from quantcli.quant.backend import get_backend
from quantcli.io.int_scheme import scheme_named
from quantcli.quant.int.encode import encode_weight
from quantcli.io.int_packing import pack_int32
from quantcli.quant.int.rtn import encode
from quantcli.plan.safetensors import IntOptions, make_int_plan
from tests.fixtures.paths import model_path

pytestmark = pytest.mark.backend


def _weights(rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = (rng.standard_t(4, size=(rows, cols)) * 0.02).astype(np.float32)   # heavy tails, as trained weights
    w[0, :] = 0.0
    w[1, 3] = 0.9
    return w


def _error(w: np.ndarray, scheme_group: int | None, method: str, dtype: str = "F16") -> float:
    scheme = scheme_named("W4A16_ASYM").with_options(group_size=scheme_group or 0)
    codes, _ = encode_weight(w, scheme, dtype, method, get_backend())
    return float(np.sum((codes.dequantize(dtype, scheme.group_size) - w).astype(np.float64) ** 2))


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32"])
@pytest.mark.parametrize("group", [32, 64, 128, 0])
def test_c_twin_equals_reference(group: int, dtype: str) -> None:
    pytest.importorskip("quantcli._kernels")
    scheme = scheme_named("W4A16_ASYM").with_options(group_size=group)
    w = _weights(9, 256, seed=group + 11)
    ref, ref_packed = encode_weight(w, scheme, dtype, "hqq", get_backend("reference"))
    c, c_packed = encode_weight(w, scheme, dtype, "hqq", get_backend("c"), threads=3)
    assert np.array_equal(ref.codes, c.codes)
    assert np.array_equal(ref.scale, c.scale)
    assert np.array_equal(ref.zero_point, c.zero_point)
    assert np.array_equal(ref_packed, c_packed)


@pytest.mark.parametrize("group", [32, 128, 0])
def test_scales_and_zero_points_are_expressible_in_the_format(group: int) -> None:
    scheme = scheme_named("W4A16_ASYM").with_options(group_size=group)
    w = _weights(16, 256, seed=5)
    base = encode(w, scheme, "BF16", "minmax")
    codes, packed = encode_weight(w, scheme, "BF16", "hqq", get_backend())
    assert codes.scale.dtype == base.scale.dtype and codes.scale.shape == base.scale.shape
    assert np.all(codes.scale_f32() > 0)
    changed = (codes.scale != base.scale) | (codes.zero_point != base.zero_point)
    assert changed.any() and not changed.all()      # it moves groups, and keeps min-max where that is best
    assert codes.zero_point.dtype == np.int8
    assert codes.zero_point.min() >= scheme.qmin and codes.zero_point.max() <= scheme.qmax
    assert codes.codes.min() >= scheme.qmin and codes.codes.max() <= scheme.qmax
    assert np.array_equal(packed, pack_int32(codes.codes, scheme.bits))
    # the codes are the nearest ones for the stored scale and zero (what a loader multiplies back)
    g = 256 if group == 0 else group
    s = codes.scale_f32().repeat(g, axis=1)
    z = codes.zero_point.astype(np.float32).repeat(g, axis=1)
    assert np.array_equal(codes.codes, np.clip(np.rint(w / s + z), scheme.qmin, scheme.qmax).astype(np.int8))


def test_lower_error_than_min_max_on_random_weights() -> None:
    w = _weights(64, 512, seed=1)
    for group in (32, 64, 128, None):
        assert _error(w, group, "hqq") < _error(w, group, "minmax")


def test_shrink_is_the_lp_proximal_step() -> None:
    d = np.array([0.0, 1e-4, -1e-4, 0.5, -0.5, 4.0], dtype=np.float32)
    beta = np.float32(10.0)
    e = shrink(d, beta)
    assert e[0] == 0 and e[1] == 0 and e[2] == 0           # below the threshold: shrunk to 0
    assert 0 < e[3] < 0.5 and e[4] == -e[3]                 # odd, and smaller in magnitude
    assert e[5] == pytest.approx(4.0 - 1 / (2.0 * 10.0))



@pytest.mark.slow
def test_lower_error_than_min_max_on_smollm2() -> None:
    ckpt = Checkpoint.open(model_path("SmolLM2-135M-Instruct"))
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.5.mlp.down_proj.weight",
             "model.layers.20.mlp.gate_proj.weight"]
    for name in names:
        w = ckpt.read_f32(name)
        for group in (64, None):        # 128 does not divide SmolLM2's 576-wide rows
            assert _error(w, group, "hqq", "F32") < _error(w, group, "minmax", "F32")


@pytest.mark.slow
def test_plan_refuses_hqq_with_a_symmetric_scheme() -> None:
    ckpt = Checkpoint.open(model_path("tiny-llama"))
    with pytest.raises(InputError, match="W4A16_ASYM"):
        make_int_plan(ckpt, IntOptions(scheme=scheme_named("W4A16").with_options(group_size=0), method="hqq"))
    make_int_plan(ckpt, IntOptions(scheme=scheme_named("W4A16_ASYM").with_options(group_size=0), method="hqq"))
