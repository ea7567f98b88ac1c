"""SplitQuantV2 (arXiv 2503.07657): split a Linear layer into three masked copies by a 1-D k-means of its values,
quantize each copy to INT4 with its own per-channel scales, and use the sum of their dequantized values.

Why it helps: one per-channel scale must cover a row's outliers, so the bulk of small weights gets few levels.
After the split, the middle cluster (the bulk) has a narrow range and fine steps of its own, while the outliers
sit in the lower and upper copies, where their own scales fit them. Every weight belongs to exactly one copy; in
the other two it is 0, which every integer encoding here reproduces exactly (code 0 symmetric, code = zero point
asymmetric), so the sum of the three dequantized copies is each weight's value from its own copy.

The k-means (k = 3, one dimension, over the weight values and, when the layer has one, its bias values) is
Lloyd's algorithm on the sorted values with a fixed start, the 1/6, 1/2 and 5/6 quantiles: in one dimension a
cluster is a run of the sorted values, so a round is two binary searches for the midpoints between centroids and
two prefix-sum means, O(log n) after one sort. It stops when the two cut positions repeat (a fixed point: every
value is nearest its own centroid, each centroid is its cluster's mean) or after MAX_ROUNDS. Deterministic for a
given tensor, whatever its element order. Why not the exact dynamic program: it is O(k n^2) over up to millions of
values per layer; Lloyd's fixed point is a local optimum, and in 1-D from quantile starts it lands on the
lower-tail / bulk / upper-tail split the method needs. The paper used a library k-means (random k-means++ starts),
so its clusters need not equal ours.

Biases take part in the clustering, as in the paper, but no integer format quantizes biases: their three masked
copies would sum back to the bias itself, so the bias is kept once, in the source dtype.

    split = split_linear(weight, scheme_named("W4A16").with_options(group_size=0), "BF16", backend)
    split.dense()            # float32, what replaces the layer's weight
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import Backend
from ..int.encode import encode_weight
from ...io.int_codes import IntCodes
from ...io.int_scheme import IntScheme

K = 3
MAX_ROUNDS = 100
START_QUANTILES = (1 / 6, 1 / 2, 5 / 6)


@dataclass(frozen=True)
class Clusters:
    """A 1-D partition of values into K runs of the sorted order: value v is in cluster
    #{bounds[i] <= v}, i.e. bounds are the midpoints between neighbouring centroids."""

    bounds: np.ndarray       # (K - 1,) float64, non-decreasing
    centroids: np.ndarray    # (K,) float64, the mean of each cluster (NaN for an empty one)
    sizes: np.ndarray        # (K,) int64
    rounds: int

    def assign(self, values: np.ndarray) -> np.ndarray:
        """Cluster id (uint8, 0 lower .. K-1 upper) of each value."""
        return np.searchsorted(self.bounds, np.asarray(values, dtype=np.float64), side="right").astype(np.uint8)


def kmeans_1d(values: np.ndarray) -> Clusters:
    """Lloyd's k-means with K = 3 on the values (any shape, finite), from the quantile start."""
    x = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    n = x.shape[0]
    if n == 0:
        raise ValueError("k-means of an empty tensor")
    prefix = np.concatenate(([0.0], np.cumsum(x)))
    centroids = np.array([x[min(n - 1, int(q * n))] for q in START_QUANTILES])
    cuts = np.array([-1, -1])
    for rounds in range(1, MAX_ROUNDS + 1):
        bounds = (centroids[:-1] + centroids[1:]) / 2
        new_cuts = np.searchsorted(x, bounds, side="left")       # values >= a bound go to the upper cluster
        edges = np.concatenate(([0], new_cuts, [n]))
        sizes = np.diff(edges)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        with np.errstate(invalid="ignore", divide="ignore"):
            means = sums / sizes
        # an empty cluster keeps its centroid (it can take values again when its neighbours move)
        centroids = np.where(sizes > 0, means, centroids)
        if np.array_equal(new_cuts, cuts):
            break
        cuts = new_cuts
    bounds = (centroids[:-1] + centroids[1:]) / 2
    edges = np.concatenate(([0], np.searchsorted(x, bounds, side="left"), [n]))
    sizes = np.diff(edges)
    return Clusters(bounds, np.where(sizes > 0, centroids, np.nan), sizes.astype(np.int64), rounds)


@dataclass(frozen=True)
class SplitLinear:
    """One layer's three branches: cluster ids (rows, n) uint8 and each branch's integer encoding."""

    clusters: Clusters
    ids: np.ndarray
    branches: tuple[IntCodes, ...]
    scheme: IntScheme
    scale_dtype: str

    def branch_dense(self, k: int) -> np.ndarray:
        """(code - zero) * scale in float32, not rounded to the scale dtype: the three-branch layout's values.
        The dense folder rounds the sum once, to the source dtype, when it stores it."""
        return self.branches[k].dequantize("F32", self.scheme.group_size)

    def dense(self) -> np.ndarray:
        """The sum of the three dequantized masked branches, float32 (branch 0 + 1, then + 2)."""
        total = self.branch_dense(0)
        for k in range(1, K):
            total = total + self.branch_dense(k)
        return total


def split_linear(weight: np.ndarray, scheme: IntScheme, scale_dtype: str, backend: Backend,
                 bias: np.ndarray | None = None, threads: int = 1) -> SplitLinear:
    """Cluster a (rows, n) float32 weight (with its bias values, if any), and encode its three masked copies."""
    w = np.ascontiguousarray(weight, dtype=np.float32)
    data = w.reshape(-1) if bias is None else np.concatenate([w.reshape(-1), np.asarray(bias, np.float32).reshape(-1)])
    clusters = kmeans_1d(data)
    ids = clusters.assign(w)
    zero = np.float32(0)
    branches = tuple(encode_weight(np.where(ids == k, w, zero), scheme, scale_dtype, "minmax", backend, threads)[0]
                     for k in range(K))
    return SplitLinear(clusters, ids, branches, scheme, scale_dtype)
