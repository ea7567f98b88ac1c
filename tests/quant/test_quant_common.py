"""The numeric building blocks of quant/types/_common.py against independent statements of the same C rules."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from quantcli.quant.types import _common as c

F32 = np.float32


def test_nearest_int_rounds_ties_to_even() -> None:
    v = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 3.7, -3.7, 4194303.0], dtype=F32)
    assert c.nearest_int(v).tolist() == [0, 2, 2, 0, -2, -2, 0, 4, -4, 4194303]


def test_nearest_int_equals_rint_below_2_pow_22() -> None:
    v = (np.random.default_rng(0).standard_normal(100_000) * 1e5).astype(F32)
    v = v[np.abs(v) < 2 ** 22]
    np.testing.assert_array_equal(c.nearest_int(v), np.rint(v).astype(np.int64))


def test_c_roundf_rounds_halves_away_from_zero() -> None:
    rng = np.random.default_rng(1)
    v = np.concatenate([(rng.standard_normal(50_000) * 300).astype(F32),
                        np.arange(-20, 20, 0.5, dtype=F32),
                        np.array([0.49999997, -0.49999997, 8388607.5, 1e30, -0.0], dtype=F32)])
    expected = np.sign(v.astype(np.float64)) * np.floor(np.abs(v.astype(np.float64)) + 0.5)
    np.testing.assert_array_equal(c.c_roundf(v), expected.astype(F32))
    assert np.isnan(c.c_roundf(np.array([np.nan], F32))[0])


def test_c_trunc_int_gives_int_min_for_nan_and_out_of_range() -> None:
    v = np.array([2.9, -2.9, 2147483520.0, np.nan, np.inf, -np.inf, 2147483648.0, -3e9], dtype=F32)
    assert c.c_trunc_int(v).tolist() == [2, -2, 2147483520] + [-2 ** 31] * 5
    assert c.c_low_byte(np.array([-2 ** 31, 255, 256 + 7, -1]), signed=True).tolist() == [0, -1, 7, -1]
    assert c.c_low_byte(np.array([-1, 300]), signed=False).tolist() == [255, 44]


def test_seq_sum_adds_in_order_from_positive_zero() -> None:
    terms = np.array([[1e8], [1.0], [-1e8], [1.0]], dtype=F32)
    acc = F32(0)
    for t in terms[:, 0]:
        acc = F32(acc + t)
    assert c.seq_sum(terms)[0] == acc == F32(1.0)              # pairwise summation would give 2.0
    neg_zero = np.full((3, 1), -0.0, dtype=F32)
    assert not np.signbit(c.seq_sum(neg_zero)[0])              # C's `s = 0; s += -0.0` stays +0.0


def test_first_absmax_keeps_the_first_of_equal_magnitudes_and_skips_nan() -> None:
    xt = np.array([[1, 0, np.nan, -0.0], [-3, 0, 2, -0.0], [3, 0, -2, -0.0]], dtype=F32)
    amax, vmax = c.first_absmax(xt)
    assert amax.tolist() == [3, 0, 2, 0]
    assert vmax.tolist() == [-3, 0, 2, 0]
    assert not np.signbit(vmax[3])                             # all -0.0: max stays the initial +0.0


def test_running_absmax_takes_nan_then_drops_it() -> None:
    xt = np.array([[5, np.nan, 1], [np.nan, 1, 2], [2, 3, np.nan]], dtype=F32)
    out = c.running_absmax(xt)
    assert out[0] == 2 and out[1] == 3 and np.isnan(out[2])


def _best_index_by_scan(v: float) -> int:
    g = c.IQ4_GRID.astype(F32)
    v32 = F32(v)
    if v32 <= g[0]:
        return 0
    if v32 >= g[-1]:
        return len(g) - 1
    hi = int(np.argmax(g > v32))
    return hi - 1 if F32(v32 - g[hi - 1]) < F32(g[hi] - v32) else hi


def test_best_index_iq4_matches_a_plain_scan_including_midpoints() -> None:
    g = c.IQ4_GRID.astype(np.float64)
    mids = (g[1:] + g[:-1]) / 2
    v = np.concatenate([mids, np.nextafter(mids.astype(F32), F32(-np.inf)), np.nextafter(mids.astype(F32), F32(np.inf)),
                        g, np.random.default_rng(2).uniform(-140, 130, 5000)]).astype(F32)
    got = c.best_index_iq4(v)
    assert got.tolist() == [_best_index_by_scan(float(x)) for x in v]
    assert c.best_index_iq4(np.array([np.nan], F32)).tolist() == [15]


def test_fp16_bits_match_ggml_on_every_kind_of_float() -> None:
    pytest.importorskip("llama_cpp")
    from tests.ggml_oracle import library

    lib = library()
    lib.ggml_fp32_to_fp16_row.restype = None
    lib.ggml_fp32_to_fp16_row.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    rng = np.random.default_rng(3)
    v = np.concatenate([rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32).view(F32),
                        (rng.standard_normal(50_000) * 1e-5).astype(F32),
                        np.array([65504, 65519.99, 65520, 6e-8, 3e-8, 2.98e-8, -0.0, np.inf], dtype=F32)])
    theirs = np.zeros(v.size, dtype=np.uint16)
    lib.ggml_fp32_to_fp16_row(v.ctypes.data, theirs.ctypes.data, v.size)
    np.testing.assert_array_equal(c.fp16_bits(v), theirs)
