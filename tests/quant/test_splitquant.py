"""SplitQuantV2: the 1-D k-means (a fixed point of Lloyd's algorithm, deterministic, order-free), the split
(every weight in exactly one branch, the sum beats one per-channel INT4), and the layout helpers."""
from __future__ import annotations

import numpy as np
import pytest

from quantcli.io import splitquant as sq
from quantcli.quant.algorithms.splitquant import K, kmeans_1d, split_linear
from quantcli.quant.backend import get_backend
from quantcli.io.int_scheme import scheme_named
from quantcli.quant.int.encode import encode_weight

pytestmark = pytest.mark.backend
PER_CHANNEL = scheme_named("W4A16").with_options(group_size=0)


def _weights(rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_t(3, size=(rows, cols)) * 0.02).astype(np.float32)


def test_kmeans_is_a_lloyd_fixed_point() -> None:
    x = _weights(40, 300, seed=1).reshape(-1).astype(np.float64)
    c = kmeans_1d(x)
    ids = c.assign(x)
    assert c.sizes.sum() == x.size and np.array_equal(np.bincount(ids, minlength=K), c.sizes)
    for k in range(K):                                   # each centroid is its cluster's mean
        assert c.centroids[k] == pytest.approx(x[ids == k].mean(), rel=1e-9, abs=1e-12)
    nearest = np.argmin(np.abs(x[:, None] - c.centroids[None, :]), axis=1)
    assert np.mean(nearest == ids) > 0.9999              # each value nearest its own centroid (ties aside)
    assert c.centroids[0] < c.centroids[1] < c.centroids[2]
    assert np.all(x[ids == 0].max() < x[ids == 1].min()) and np.all(x[ids == 1].max() < x[ids == 2].min())


def test_kmeans_is_deterministic_and_ignores_element_order() -> None:
    x = _weights(30, 200, seed=2).reshape(-1)
    a = kmeans_1d(x)
    b = kmeans_1d(np.random.default_rng(0).permutation(x))
    assert np.array_equal(a.bounds, b.bounds) and np.array_equal(a.sizes, b.sizes)


def test_kmeans_finds_three_separated_groups() -> None:
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(-5, 0.1, 50), rng.normal(0, 0.1, 500), rng.normal(4, 0.1, 70)])
    c = kmeans_1d(x)
    assert list(c.sizes) == [50, 500, 70]


def test_kmeans_of_few_distinct_values_leaves_a_cluster_empty_without_failing() -> None:
    c = kmeans_1d(np.array([1.0, 1.0, 1.0, 2.0]))
    assert c.sizes.sum() == 4 and (c.sizes == 0).any()
    with pytest.raises(ValueError):
        kmeans_1d(np.array([]))


@pytest.mark.parametrize("name", ["W4A16", "W4A16_ASYM"])
def test_every_weight_lives_in_exactly_one_branch(name: str) -> None:
    scheme = scheme_named(name).with_options(group_size=0)
    w = _weights(24, 256, seed=4)
    s = split_linear(w, scheme, "F32", get_backend(), threads=2)
    for k in range(K):
        outside = s.branch_dense(k)[s.ids != k]
        assert np.all(outside == 0)                      # masked-out weights decode to exactly 0
    assert np.array_equal(s.dense(), sum(np.where(s.ids == k, s.branch_dense(k), 0) for k in range(K)))


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16"])
def test_split_sum_reconstructs_better_than_one_per_channel_int4(dtype: str) -> None:
    w = _weights(64, 512, seed=5)
    s = split_linear(w, PER_CHANNEL, dtype, get_backend())
    one, _ = encode_weight(w, PER_CHANNEL, dtype, "minmax", get_backend())
    err_split = np.sum((s.dense() - w).astype(np.float64) ** 2)
    err_one = np.sum((one.dequantize(dtype, None) - w).astype(np.float64) ** 2)
    assert err_split < 0.5 * err_one


def test_bias_takes_part_in_the_clustering() -> None:
    w = _weights(8, 64, seed=6)
    bias = np.full(8, 5.0, dtype=np.float32)             # far out: it pulls the upper centroid
    assert not np.array_equal(split_linear(w, PER_CHANNEL, "F32", get_backend(), bias).clusters.bounds,
                              split_linear(w, PER_CHANNEL, "F32", get_backend()).clusters.bounds)


@pytest.mark.parametrize("n", [4, 5, 7, 64])
def test_cluster_ids_pack_round_trip(n: int) -> None:
    ids = np.random.default_rng(n).integers(0, 3, size=(3, n)).astype(np.uint8)
    packed = sq.pack_ids(ids)
    assert packed.shape == (3, -(-n // 4))
    assert np.array_equal(sq.unpack_ids(packed, n), ids)


@pytest.mark.parametrize("name", ["W4A16", "W4A16_ASYM"])
def test_layout_dequantizes_to_the_split_sum(name: str) -> None:
    scheme = scheme_named(name).with_options(group_size=0)
    w = _weights(16, 128, seed=7)
    s = split_linear(w, scheme, "BF16", get_backend())
    stored = dict(sq.module_arrays("m", s.ids, s.branches, scheme))
    entries = sq.module_entries("m", w.shape, scheme, "BF16")
    assert [e.name for e in entries] == list(stored)
    assert all(tuple(stored[e.name].shape) == e.shape for e in entries)
    block = sq.config_block(scheme, "BF16", ["m"])
    assert np.array_equal(sq.dequantize_module(stored.__getitem__, "m", w.shape, block), s.dense())
