"""Integer schemes: the NumPy reference against the C twin (bit for bit), against compressed-tensors' published
rules (formats/golden/int_*.json), and the properties RTN-MSE must have."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quantcli.errors import InputError
from quantcli.io.int_codes import round_to
from quantcli.io.int_packing import pack_int32, unpack_int32
from quantcli.io.int_scheme import SCHEMES, scheme_named
from quantcli.quant.backend import get_backend
from quantcli.quant.int.encode import encode_weight
from quantcli.quant.int.rtn import encode

GOLDEN = Path(__file__).resolve().parents[2] / "formats" / "golden"
kernels = pytest.importorskip("quantcli._kernels")


def _weights(rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32) * 0.05
    w[0, :] = 0.0                                   # an all-zero row: the scale must not be 0
    w[1, 5] = 3.0                                   # an outlier that dominates its group
    if rows > 2:
        w[2, :] = np.abs(w[2, :])                   # all positive: the range must still hold 0
    return w


SCHEME_CASES = [(name, g, sym) for name in SCHEMES for g in (32, 64, 128, 0) for sym in (True, False)
                if not (SCHEMES[name].act_bits and not sym)]


@pytest.mark.parametrize("method", ["minmax", "mse"])
@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32"])
@pytest.mark.parametrize("name,group,sym", SCHEME_CASES)
def test_c_twin_equals_reference(name: str, group: int, sym: bool, dtype: str, method: str) -> None:
    scheme = scheme_named(name).with_options(group_size=group, symmetric=sym)
    w = _weights(7, 256, seed=group + 3 * sym)
    ref = encode(w, scheme, dtype, method)
    c_codes, c_packed = encode_weight(w, scheme, dtype, method, get_backend("c"), threads=3)
    assert np.array_equal(ref.codes, c_codes.codes)
    assert ref.scale.dtype == c_codes.scale.dtype and np.array_equal(ref.scale, c_codes.scale)
    assert (ref.zero_point is None) == (c_codes.zero_point is None)
    if ref.zero_point is not None:
        assert np.array_equal(ref.zero_point, c_codes.zero_point)
    if c_packed is not None:
        assert np.array_equal(c_packed, pack_int32(ref.codes, scheme.bits))


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("n", [32, 40, 100, 256])
def test_pack_round_trips_and_c_agrees(bits: int, n: int) -> None:
    rng = np.random.default_rng(bits * 1000 + n)
    q = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=(5, n)).astype(np.int8)
    words = pack_int32(q, bits)
    assert words.shape == (5, -(-n * bits // 32)) and words.dtype == np.int32
    assert np.array_equal(unpack_int32(words, bits, n), q)
    out = np.empty_like(words)
    kernels.int_pack(q, n, bits, out, 2)
    assert np.array_equal(out, words)


def test_pack_matches_the_golden_words() -> None:
    # Hand-written from compressed-tensors' description: code + 8, code i at bits 4*i of a little-endian stream.
    golden = json.loads((GOLDEN / "int_pack.json").read_text())
    for case in golden["cases"]:
        q = np.array(case["codes"], dtype=np.int8)
        assert pack_int32(q, case["bits"]).view(np.uint32).tolist() == case["words"]


@pytest.mark.parametrize("policy", ["c", "reference"])
@pytest.mark.parametrize("name", ["W4A16", "W4A16_ASYM", "W8A16"])
def test_codes_of_float16_weights_are_the_nearest_for_the_stored_scale(name: str, policy: str) -> None:
    """Each code is round-half-even of the exact x / scale (+ zero point) for the F16 scale the loader multiplies
    by, so no other code gives a loader value nearer the source. llm-compressor divides in the model's float16
    instead, which rounds the quotient first and sometimes takes the farther code (docs/int-formats.md); the same
    weights show that happens here, so this test exercises the boundary it is about."""
    scheme = scheme_named(name).with_options(group_size=128)
    x16 = (np.random.default_rng(7).standard_normal((64, 512)) * 0.02).astype(np.float16)
    codes, _ = encode_weight(x16.astype(np.float32), scheme, "F16", "minmax", get_backend(policy), threads=2)
    scale = np.repeat(codes.scale.astype(np.float64), 128, axis=1)
    zero = 0.0 if codes.zero_point is None else np.repeat(codes.zero_point.astype(np.float64), 128, axis=1)
    exact = x16.astype(np.float64) / scale + zero                     # x and scale are float16: no rounding yet
    assert np.array_equal(codes.codes, np.clip(np.rint(exact), scheme.qmin, scheme.qmax))
    # compressed-tensors' _quantize on a float16 model: x / scale, then + zero point, each rounded to float16
    f16_quotient = x16 / codes.scale.repeat(128, axis=1) + np.asarray(zero, dtype=np.float16)
    theirs = np.clip(np.rint(f16_quotient.astype(np.float32)), scheme.qmin, scheme.qmax)
    differ = theirs != codes.codes
    assert differ.any()
    assert np.all(np.abs(codes.codes - exact)[differ] < np.abs(theirs - exact)[differ])


def test_symmetric_minmax_follows_compressed_tensors_rule() -> None:
    # absmax / 7.5 for 4 bits (qmax - qmin = 15, halved): +absmax lands on 7.5 (rounds to 8, clamps to 7), -absmax
    # on -7.5 (rounds half to even: -8), so both ends of the code range are used.
    w = np.zeros((1, 32), dtype=np.float32)
    w[0, :4] = [1.5, -0.75, 0.1, -1.5]
    codes = encode(w, scheme_named("W4A16").with_options(group_size=32), "F32")
    assert codes.scale[0, 0] == np.float32(1.5) / np.float32(7.5)
    assert codes.codes[0, :4].tolist() == [7, -4, 0, -8]


def test_asymmetric_zero_point_maps_min_to_qmin() -> None:
    w = np.linspace(-0.3, 1.2, 32, dtype=np.float32)[None, :]
    codes = encode(w, scheme_named("W4A16_ASYM").with_options(group_size=32), "F32")
    scale = np.float32(1.5) / np.float32(15)
    assert np.isclose(codes.scale[0, 0], scale)
    assert codes.zero_point[0, 0] == np.rint(-8 - np.float32(-0.3) / codes.scale[0, 0])
    assert codes.codes.min() == -8 and codes.codes.max() == 7


@pytest.mark.parametrize("name", ["W4A16", "W4A16_ASYM"])
def test_mse_never_worse_than_minmax(name: str) -> None:
    # the search's loss, written out in float64: the sum of |error|^2.5 over each group
    w = _weights(64, 256, seed=11)
    scheme = scheme_named(name)
    groups = w.reshape(-1, 128).astype(np.float64)
    errs = {}
    for method in ("minmax", "mse"):
        c = encode(w, scheme, "F32", method)
        d = c.dequantize("F32", scheme.group_size).reshape(-1, 128) - groups
        errs[method] = (np.abs(d) ** 2.5).sum(axis=1)
    assert np.all(errs["mse"] <= errs["minmax"] * (1 + 1e-5))
    assert errs["mse"].sum() < errs["minmax"].sum()


def test_mse_clips_a_groups_largest_weight_less_than_a_plain_squared_error_would() -> None:
    # one large weight among many small ones: the range the plain squared error picks (brute force over the same
    # shrink factors, float64, compressed-tensors' asymmetric rule) clips it; the |error|^2.5 search clips it less
    w = np.full((1, 64), 0.03, dtype=np.float32) * np.sin(np.arange(64, dtype=np.float32))
    w[0, 7] = 0.2
    x = w[0].astype(np.float64)
    lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)

    def dense(p: float) -> np.ndarray:
        scale = (hi - lo) * p / 15
        zp = np.clip(np.rint(-8 - lo * p / scale), -8, 7)
        return (np.clip(np.rint(x / scale + zp), -8, 7) - zp) * scale

    plain = min((dense(1 - i / 100) for i in range(21)), key=lambda d: float(((d - x) ** 2).sum()))
    c = encode(w, scheme_named("W4A16_ASYM").with_options(group_size=64), "F32", "mse")
    ours = c.dequantize("F32", 64)[0]
    assert abs(plain[7] - x[7]) > c.scale_f32()[0, 0] / 2          # the plain choice clips the large weight
    assert abs(ours[7] - x[7]) < abs(plain[7] - x[7])


def test_bf16_scale_rounds_to_nearest_even() -> None:
    stored, value = round_to(np.array([1.00390625, 1.01171875], dtype=np.float32), "BF16")  # ties at bf16
    assert stored.tolist() == [0x3F80, 0x3F82] and value.tolist() == [1.0, 1.015625]


def test_bad_group_size_is_refused_with_the_sizes_that_fit() -> None:
    with pytest.raises(InputError, match="does not divide") as exc:
        scheme_named("W4A16").check_row("model.layers.0.mlp.down_proj.weight", 672)
    assert "--group-size 32" in exc.value.hint
    with pytest.raises(InputError, match="not supported"):
        scheme_named("W4A16").with_options(group_size=48)
    with pytest.raises(InputError, match="symmetric"):
        scheme_named("W8A8").with_options(symmetric=False)
    with pytest.raises(InputError, match="Valid schemes"):
        scheme_named("W3A16")
