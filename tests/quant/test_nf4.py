"""NF4 (bitsandbytes' blockwise absmax code) on its own: level choice, packing, double quantization."""
from __future__ import annotations

import numpy as np
import pytest

from quantcli.io.nf4_codes import NF4_LEVELS, dynamic_code
from quantcli.quant.int.nf4 import encode_nf4

kernels = pytest.importorskip("quantcli._kernels")


@pytest.mark.parametrize("n", [64 * 40, 64 * 7 + 13, 5, 64 * 300 + 1])
@pytest.mark.parametrize("double", [True, False])
def test_c_twin_equals_reference(n: int, double: bool) -> None:
    rng = np.random.default_rng(n)
    w = (rng.standard_normal(n) * rng.uniform(0.001, 1.0)).astype(np.float32)
    w[: min(n, 64)] = 0.0                               # an all-zero block
    if n > 200:
        w[100] = 50.0                                   # an outlier block
        w[130:140] = (NF4_LEVELS[8] + NF4_LEVELS[9]) / 2 * np.abs(w[128:192]).max()   # near a midpoint
    ref = encode_nf4(w, double)
    c = encode_nf4(w, double, kernels, threads=3)
    assert np.array_equal(ref.packed, c.packed) and np.array_equal(ref.absmax, c.absmax)
    assert (ref.nested_absmax is None) == (c.nested_absmax is None)
    if double:
        assert np.array_equal(ref.nested_absmax, c.nested_absmax) and ref.offset == c.offset


def test_levels_are_the_published_sorted_table() -> None:
    assert NF4_LEVELS.shape == (16,) and NF4_LEVELS[0] == -1 and NF4_LEVELS[7] == 0 and NF4_LEVELS[15] == 1
    assert np.all(np.diff(NF4_LEVELS) > 0)


def test_each_value_takes_the_nearest_level_and_pairs_share_a_byte() -> None:
    w = np.zeros(64, dtype=np.float32)
    w[0], w[1], w[2], w[3] = 2.0, -2.0, 0.5626170039176941 * 2.0, 0.04     # absmax 2
    c = encode_nf4(w, double_quant=False)
    assert c.absmax.tolist() == [2.0]
    assert c.packed.shape == (32, 1)
    assert c.packed[0, 0] == (15 << 4) | 0             # +absmax -> level 15 (high nibble), -absmax -> level 0
    assert c.packed[1, 0] >> 4 == 13                    # exactly on level 13
    assert c.packed[1, 0] & 0xF == 7                    # 0.02 lies nearer 0.0 than 0.0796
    assert np.array_equal(c.dequantize((64,))[:3], [2.0, -2.0, np.float32(0.5626170039176941) * 2])


def test_a_short_last_block_and_an_odd_count() -> None:
    w = np.linspace(-1, 1, 64 * 3 + 7, dtype=np.float32)
    c = encode_nf4(w, double_quant=False)
    assert c.absmax.shape == (4,) and c.packed.shape == (-(-w.size // 2), 1)
    assert np.abs(c.dequantize(w.shape) - w).max() < 0.2


def test_double_quant_keeps_block_scales_close() -> None:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((96, 512)) * rng.uniform(0.01, 0.1, (96, 1))).astype(np.float32)
    plain, dq = encode_nf4(w, double_quant=False), encode_nf4(w, double_quant=True)
    assert dq.absmax.dtype == np.uint8 and dq.nested_absmax.shape == (-(-plain.absmax.size // 256),)
    rel = np.abs(dq.block_absmax() - plain.absmax) / plain.absmax
    assert rel.max() < 0.1 and rel.mean() < 0.01         # 8-bit codes of scales spread over 10x
    err = lambda c: float(np.mean((c.dequantize(w.shape) - w) ** 2))   # noqa: E731
    assert err(dq) < err(plain) * 1.05


def test_dynamic_code_is_signed_sorted_and_holds_zero_and_one() -> None:
    code = dynamic_code()
    assert code.shape == (256,) and np.all(np.diff(code) >= 0)
    assert 0.0 in code and code[-1] == 1.0 and code.min() > -1.0
