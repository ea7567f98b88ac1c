"""GPTQ's column loop and Hessians: lower output error than RTN on correlated inputs, RTN exactly when H is the
identity, act-order's g_idx, dead columns, and the C kernel equal to the NumPy reference bit for bit.

The tests that run through get_backend() use whatever QUANTCLI_BACKEND selects, so `make test` covers both."""
from __future__ import annotations

import numpy as np
import pytest

from quantcli.errors import InputError
from quantcli.quant.algorithms.gptq import dequantize, prepare_hessian, quantize_weight
from quantcli.quant.algorithms import hessian
from quantcli.quant.algorithms.hessian import Hessians, dampen, gram_upper, inverse_cholesky_upper, prepare
from quantcli.quant.backend import get_backend
from quantcli.io.int_scheme import scheme_named
from quantcli.quant.int.rtn import encode

pytestmark = pytest.mark.backend

W4 = scheme_named("W4A16")
W4_ASYM = scheme_named("W4A16_ASYM")
SCHEMES = {
    "sym-g128": W4, "asym-g128": W4_ASYM, "sym-g32": W4.with_options(group_size=32),
    "asym-g64": W4_ASYM.with_options(group_size=64), "asym-g32": W4_ASYM.with_options(group_size=32), "sym-channel": W4.with_options(group_size=0),
    "asym-channel": W4_ASYM.with_options(group_size=0), "w8-g128": scheme_named("W8A16"),
}


def _correlated(n: int, cols: int, seed: int) -> np.ndarray:
    """Inputs with strongly correlated columns and uneven scales, as a layer's activations are."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((cols, cols)).astype(np.float32) / np.sqrt(cols)
    x = rng.standard_normal((n, cols)).astype(np.float32) @ mix
    x += 0.2 * rng.standard_normal((n, cols)).astype(np.float32)
    return x * rng.uniform(0.2, 3.0, size=cols).astype(np.float32)


def _hessian(x: np.ndarray) -> np.ndarray:
    hs = Hessians(["w"])
    for c0 in range(0, len(x), 500):               # several chunks, as the engine captures them
        hs.capture("w", x[c0:c0 + 500])
    return hs.hessian("w")


def _weights(rows: int, cols: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((rows, cols)) * 0.05).astype(np.float32)


def test_hessian_is_two_over_n_xxt_in_float64_across_chunks_and_shared_inputs() -> None:
    x = _correlated(1300, 48, seed=1)
    hs = Hessians(["q", "k", "other"])
    for c0 in range(0, 1300, 400):
        chunk = x[c0:c0 + 400]
        hs.capture("q", chunk)
        hs.capture("k", chunk)                      # the same object: its Gram matrix is reused
        hs.capture("ignored", chunk)
    x64 = x.astype(np.float64)
    want = 2.0 / 1300 * (x64.T @ x64)
    for name in ("q", "k"):
        assert hs.count(name) == 1300
        np.testing.assert_allclose(hs.hessian(name), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(hs.hessian("q"), hs.hessian("k"))
    with pytest.raises(ValueError, match="no inputs"):
        hs.hessian("other")


@pytest.mark.parametrize("blas_syrk", [True, False], ids=["syrk", "numpy"])
def test_hessian_is_symmetric_and_bit_for_bit_numpys_product(blas_syrk: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the upper triangle is computed (syrk through ctypes, or NumPy where the BLAS is not NumPy's OpenBLAS);
    the mirrored sum equals the float64 sum of NumPy's full X^T X products bit for bit."""
    if not blas_syrk:
        monkeypatch.setattr(hessian, "_ssyrk", lambda: None)
    chunks = [_correlated(700, 130, seed=s).astype(np.float32) for s in (2, 3, 4)]
    hs = Hessians(["w"])
    want = np.zeros((130, 130))
    for x in chunks:
        hs.capture("w", x)
        want += x.T @ x
    np.testing.assert_array_equal(hs.gram("w"), want)
    np.testing.assert_array_equal(hs.hessian("w"), want * (2.0 / 2100))
    assert np.array_equal(hs.hessian("w"), hs.hessian("w").T)


def test_gram_upper_leaves_the_lower_triangle_alone() -> None:
    x = _correlated(300, 40, seed=5).astype(np.float32)
    out = np.full((40, 40), 7.0, dtype=np.float32)
    gram_upper(x, out)
    upper = np.triu_indices(40)
    np.testing.assert_array_equal(out[upper], (x.T @ x)[upper])
    if hessian._ssyrk() is not None:       # BLAS wrote only the upper triangle
        assert (out[np.tril_indices(40, -1)] == 7.0).all()


def test_inverse_cholesky_factor_and_dampening() -> None:
    h = _hessian(_correlated(400, 32, seed=2))
    d = dampen(h, 0.05)
    assert np.allclose(np.diag(d) - np.diag(h), 0.05 * np.mean(np.diag(h)))
    u = inverse_cholesky_upper(d)
    assert np.array_equal(u, np.triu(u))
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(d), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("cols", [1, 2, 96, 97, 300])
def test_inverse_factor_by_halves_matches_the_general_inverse(cols: int) -> None:
    """U from the triangular inverse by halves: upper triangular, U^T U = H^-1, and within rounding of U taken
    from LAPACK's general inverse of the Cholesky factor; sizes below, at and above the leaf size."""
    h = _hessian(_correlated(4 * cols + 8, cols, seed=cols)) + 0.01 * np.eye(cols)
    u = inverse_cholesky_upper(h)
    assert u.flags.c_contiguous and np.array_equal(u, np.triu(u)) and np.all(np.diag(u) > 0)
    m = np.linalg.cholesky(h[::-1, ::-1])
    general = np.triu(np.linalg.inv(m)[::-1, ::-1])
    np.testing.assert_allclose(u, general, rtol=0, atol=1e-12 * np.abs(general).max())
    np.testing.assert_allclose(u.T @ u @ h, np.eye(cols), rtol=0, atol=1e-9)


def test_prepare_dampens_as_dampen_does() -> None:
    h = _hessian(_correlated(300, 24, seed=9))
    u, _, frac = prepare(h, None, 0.03)
    assert frac == 0.03
    np.testing.assert_array_equal(u, inverse_cholesky_upper(dampen(h, 0.03)))


def test_singular_hessian_raises_the_dampening_until_it_factors() -> None:
    x = np.ones((10, 4), dtype=np.float32)            # rank 1: H + 0 * I cannot be factored
    u, dead, frac = prepare(_hessian(x), None, 0.0)
    assert frac > 0 and np.all(np.isfinite(u)) and not dead.any()


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("key", ["sym-g128", "asym-g128", "sym-g32", "sym-channel", "asym-channel"])
def test_gptq_output_error_is_below_rtn_on_correlated_inputs(key: str, act_order: bool) -> None:
    scheme = SCHEMES[key]
    x = _correlated(2048, 256, seed=3)
    w = _weights(48, 256, seed=4)
    prep = prepare_hessian(_hessian(x), 0.01, act_order)
    codes, g_idx = quantize_weight(w, prep, scheme, "BF16", backend=get_backend(), threads=2)
    gptq_err = np.linalg.norm((w - dequantize(codes, scheme, "BF16", g_idx)) @ x.T)
    rtn = encode(w, scheme, "BF16", "minmax").dequantize("BF16", scheme.group_size)
    rtn_mse = encode(w, scheme, "BF16", "mse").dequantize("BF16", scheme.group_size)
    rtn_err = min(np.linalg.norm((w - rtn) @ x.T), np.linalg.norm((w - rtn_mse) @ x.T))
    assert gptq_err < 0.9 * rtn_err


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
@pytest.mark.parametrize("key", sorted(SCHEMES))
def test_identity_hessian_gives_rtn_exactly(key: str, dtype: str) -> None:
    scheme = SCHEMES[key]
    w = _weights(20, 256, seed=5)
    w[3, :] = 0.0                                                   # an all-zero row: the tiny-scale rule
    for act_order in (False, True):
        prep = prepare_hessian(np.eye(256), 0.01, act_order)
        codes, g_idx = quantize_weight(w, prep, scheme, dtype, backend=get_backend())
        rtn = encode(w, scheme, dtype, "minmax")
        assert g_idx is None                                        # equal diagonals: no reordering
        np.testing.assert_array_equal(codes.codes, rtn.codes)
        np.testing.assert_array_equal(codes.scale, rtn.scale)
        assert (codes.zero_point is None) == (rtn.zero_point is None)
        if rtn.zero_point is not None:
            np.testing.assert_array_equal(codes.zero_point, rtn.zero_point)


def test_act_order_g_idx_follows_descending_diagonal() -> None:
    scheme = SCHEMES["sym-g32"]
    x = _correlated(1024, 128, seed=6)
    h = _hessian(x)
    w = _weights(16, 128, seed=7)
    prep = prepare_hessian(h, 0.01, True)
    codes, g_idx = quantize_weight(w, prep, scheme, "BF16", backend=get_backend())
    assert g_idx is not None and g_idx.dtype == np.int32 and g_idx.shape == (128,)
    order = np.argsort(-np.diag(h), kind="stable")
    # the k-th column by importance belongs to group k // 32; each group holds exactly 32 columns
    np.testing.assert_array_equal(g_idx[order], np.arange(128) // 32)
    assert np.bincount(g_idx).tolist() == [32] * 4
    # the codes are in the original column order: the loader's (code * scale[:, g_idx]) reproduces the weights
    dense = dequantize(codes, scheme, "BF16", g_idx)
    assert np.abs(dense - w).max() < 0.5 * np.abs(w).max()
    # static groups keep groups contiguous (no g_idx) while still quantizing in act-order
    st_codes, st_idx = quantize_weight(w, prep, scheme, "BF16", static_groups=True, backend=get_backend())
    assert st_idx is None
    static_scale = encode(np.where(np.diag(h) == 0, 0, w).astype(np.float32), scheme, "BF16").scale
    np.testing.assert_array_equal(st_codes.scale, static_scale)


@pytest.mark.parametrize("key", ["sym-g32", "asym-g32"])
def test_dead_columns_are_zeroed_and_do_not_break_the_factorisation(key: str) -> None:
    scheme = SCHEMES[key]
    x = _correlated(512, 64, seed=8)
    dead = [0, 5, 40, 63]
    x[:, dead] = 0.0
    w = _weights(12, 64, seed=9)
    for act_order in (False, True):
        prep = prepare_hessian(_hessian(x), 0.01, act_order)
        assert prep.dead.tolist() == [i in dead for i in range(64)]
        codes, g_idx = quantize_weight(w, prep, scheme, "BF16", backend=get_backend())
        dense = dequantize(codes, scheme, "BF16", g_idx)
        assert np.all(np.isfinite(dense))
        np.testing.assert_array_equal(dense[:, dead], 0.0)
        alive = [i for i in range(64) if i not in dead]
        rtn = encode(w, scheme, "BF16").dequantize("BF16", 32)
        assert np.linalg.norm((w - dense) @ x.T) < np.linalg.norm((w - rtn)[:, alive] @ x[:, alive].T)


def test_bad_group_size_is_refused() -> None:
    prep = prepare_hessian(np.eye(96), 0.01, False)
    with pytest.raises(InputError, match="group-size"):
        quantize_weight(_weights(4, 96, 0), prep, W4, "BF16", backend=get_backend())


# every scheme shape with act-order, static groups and a block size that is not a multiple of 128 (48: the loop
# rounds it to whole groups) in BF16; the other scale dtypes on the two main schemes
CASES = [(key, "BF16", act, static, block) for key in ("sym-g128", "asym-g128", "sym-g32", "asym-channel", "w8-g128")
         for act, static in ((False, False), (True, False), (True, True)) for block in (128, 48)]
CASES += [(key, dtype, act, False, 128) for key in ("sym-g128", "asym-g32") for dtype in ("F16", "F32")
          for act in (False, True)]


@pytest.mark.parametrize("key,dtype,act_order,static,block", CASES)
def test_c_kernel_equals_reference_bit_for_bit(key: str, dtype: str, act_order: bool, static: bool, block: int) -> None:
    kernels = pytest.importorskip("quantcli._kernels")
    if not hasattr(kernels, "gptq_block"):
        pytest.fail("the C extension has no gptq_block; rebuild it")
    scheme = SCHEMES[key]
    x = _correlated(600, 256, seed=10)
    x[:, 17] = 0.0                                              # a dead column too
    w = _weights(37, 256, seed=11)                              # a row count no thread split divides evenly
    prep = prepare_hessian(_hessian(x), 0.01, act_order)
    ref = quantize_weight(w, prep, scheme, dtype, block_size=block, static_groups=static,
                          backend=get_backend("reference"))
    for threads in (1, 3):
        c = quantize_weight(w, prep, scheme, dtype, block_size=block, static_groups=static,
                            backend=get_backend("c"), threads=threads)
        np.testing.assert_array_equal(c[0].codes, ref[0].codes)
        assert c[0].scale.dtype == ref[0].scale.dtype
        np.testing.assert_array_equal(c[0].scale, ref[0].scale)
        if ref[0].zero_point is not None:
            np.testing.assert_array_equal(c[0].zero_point, ref[0].zero_point)
        assert (c[1] is None) == (ref[1] is None)
        if ref[1] is not None:
            np.testing.assert_array_equal(c[1], ref[1])
