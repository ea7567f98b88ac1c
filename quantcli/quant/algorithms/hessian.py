"""GPTQ's layer Hessians H = 2/n * sum_t x_t x_t^T from the inputs the engine captures, and what GPTQ does to
them before the column loop (dead columns, dampening, the upper Cholesky factor of the inverse).

Accumulation: each captured chunk X [tokens, cols] (float32, at most the engine's CHUNK_TOKENS rows) gives its
Gram matrix X^T X with one float32 BLAS call; the chunks' Gram matrices are summed in float64 with a running
token count, and H is scaled by 2/n once at the end. Within a chunk float32 is exact enough (a few thousand terms);
across chunks float64 keeps hundreds of thousands of tokens from losing the small terms, and it keeps H from
depending on the order in which sequences were chunked beyond float32 rounding of each chunk.

Only the upper triangle is computed and summed (BLAS syrk), and the sum is mirrored once when H is asked for.
NumPy's `X.T @ X` calls the same syrk but then mirrors every chunk's product with a scalar loop on the calling
thread: for a 1536-wide input that loop took as long as a third of the product, with the other cores idle (7 s
of a GPTQ run over 65k tokens of SmolLM2). The triangle is bit for bit NumPy's, so H is unchanged.

Linears that read the same input (q/k/v, gate/up) are handed the same array object by the engine; its Gram
matrix is computed once and added to each of them.

Memory: one float64 [cols, cols] matrix per captured name (cols = the linear's input width), plus one float32
Gram matrix of the chunk being added.
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable
from functools import cache

import numpy as np
from threadpoolctl import ThreadpoolController, threadpool_limits

# CBLAS enumerations
_ROW_MAJOR, _UPPER, _TRANS = 101, 121, 112


@cache
def _ssyrk() -> Callable[..., None] | None:
    """cblas_ssyrk of the BLAS that NumPy loaded, when it is the OpenBLAS NumPy's wheels ship (64-bit integers,
    the `64_` symbol suffix); None for any other BLAS, whose integer width we cannot know (gram_upper then
    lets NumPy do it)."""
    for info in ThreadpoolController().info():
        if info.get("user_api") != "blas":
            continue
        try:
            dll = ctypes.CDLL(info["filepath"])
        except OSError:
            continue
        for symbol in ("scipy_cblas_ssyrk64_", "cblas_ssyrk64_"):
            fn = getattr(dll, symbol, None)
            if fn is not None:
                i64 = ctypes.c_int64
                fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, ctypes.c_float, ctypes.c_void_p,
                               i64, ctypes.c_float, ctypes.c_void_p, i64]
                fn.restype = None
                return fn       # a ctypes call releases the GIL, as NumPy's does
    return None


def gram_upper(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The upper triangle of x^T x (x float32 [tokens, cols], C-contiguous) into `out` (float32 [cols, cols],
    C-contiguous); below the diagonal `out` keeps what it held (NumPy, when it does the product, fills it)."""
    tokens, cols = x.shape
    syrk = _ssyrk()
    if syrk is None or tokens == 0:
        np.matmul(x.T, x, out=out)
    else:
        syrk(_ROW_MAJOR, _UPPER, _TRANS, cols, tokens, 1.0, x.ctypes.data, cols, 0.0, out.ctypes.data, cols)
    return out


def mirror_upper(m: np.ndarray) -> np.ndarray:
    """The symmetric matrix whose upper triangle is m's (a new array)."""
    upper = np.triu(m)
    upper += np.triu(m, 1).T
    return upper


class Hessians:
    """Accumulates H for a set of linear-layer names; pass `capture` to Engine/BlockStep as the capture callback.

    Names not in the set are ignored, so one forward pass can collect just the sub-layers being quantized.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self._sum: dict[str, np.ndarray] = {}          # float64 [cols, cols], upper triangle meaningful
        self._count: dict[str, int] = {n: 0 for n in names}
        # the last input seen and its Gram matrix: q/k/v (and gate/up) receive the same array object in a row
        self._last_x: np.ndarray | None = None
        self._last_gram: np.ndarray | None = None
        self._scratch: dict[int, np.ndarray] = {}      # a chunk's float32 Gram matrix per width, reused

    @property
    def names(self) -> list[str]:
        return list(self._count)

    def capture(self, name: str, x: np.ndarray) -> None:
        if name not in self._count:
            return
        if x is not self._last_x:
            flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
            cols = flat.shape[1]
            if cols not in self._scratch:
                self._scratch[cols] = np.zeros((cols, cols), dtype=np.float32)   # below the diagonal: stays 0
            self._last_gram = gram_upper(flat, self._scratch[cols])
            self._last_x = x             # held so its id cannot be reused by a new array while we compare
        gram = self._last_gram
        assert gram is not None
        total = self._sum.get(name)
        if total is None:
            self._sum[name] = gram.astype(np.float64)
        else:
            total += gram
        self._count[name] += int(np.prod(x.shape[:-1]))

    def count(self, name: str) -> int:
        """Tokens accumulated for `name`."""
        return self._count[name]

    def gram(self, name: str) -> np.ndarray:
        """float64 [cols, cols]: sum x x^T over the captured tokens, unscaled (GPTQ on K-quants scales it itself)."""
        if self._count[name] == 0:
            raise ValueError(f"{name}: no inputs were captured")
        return mirror_upper(self._sum[name])

    def hessian(self, name: str) -> np.ndarray:
        """float64 [cols, cols]: 2/n * sum x x^T over the n captured tokens."""
        h = self.gram(name)
        h *= 2.0 / self._count[name]
        return h

    def release(self, names: Iterable[str] | None = None) -> None:
        """Drop the sums of `names` (default: all) once their layers are quantized, and the cached last input."""
        for name in (list(self._sum) if names is None else names):
            self._sum.pop(name, None)
        self._last_x = self._last_gram = None
        if names is None:
            self._scratch.clear()


def dead_columns(h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Handle input columns that never saw a non-zero input (H_ii = 0), as GPTQ does: set H_ii = 1 and zero the
    weight column, which cannot affect the output on the calibration data. Both arrays are changed in place;
    returns the boolean mask of dead columns."""
    dead = np.diag(h) == 0
    if dead.any():
        idx = np.flatnonzero(dead)
        h[idx, idx] = 1.0
        w[:, idx] = 0.0
    return dead


def dampen(h: np.ndarray, damp: float) -> np.ndarray:
    """H + damp * mean(diag H) * I (a new float64 array); damp is GPTQ's percdamp (0.01 by default)."""
    out = np.array(h, dtype=np.float64, copy=True)
    idx = np.arange(out.shape[0])
    out[idx, idx] += damp * float(np.mean(np.diag(out)))
    return out


# Below this size a triangular block is inverted by LAPACK's general inverse; above it, by halves (below).
TRIANGLE_LEAF = 96


def _invert_lower_inplace(m: np.ndarray) -> None:
    """Replace the lower triangular `m` (float64, a view may do) by its inverse, in place.

    By halves: for m = [[A, 0], [B, C]], m^-1 = [[A^-1, 0], [-C^-1 B A^-1, C^-1]], so each level costs two
    half-size products and the whole about n^3/3 multiply-adds in large BLAS calls, against about 2n^3 for an
    LU-based general inverse (what LAPACK's trtri does, which NumPy does not expose). The upper triangle of the
    result is exactly zero.
    """
    n = m.shape[0]
    if n <= TRIANGLE_LEAF:
        inv = np.linalg.inv(m)
        m[...] = np.tril(inv)      # the general inverse may leave rounding residue above the diagonal
        return
    k = n // 2
    _invert_lower_inplace(m[:k, :k])
    _invert_lower_inplace(m[k:, k:])
    m[k:, :k] = -((m[k:, k:] @ m[k:, :k]) @ m[:k, :k])


def inverse_cholesky_upper(h: np.ndarray) -> np.ndarray:
    """Upper triangular U with H^-1 = U^T U, in float64. Raises np.linalg.LinAlgError if H is not positive
    definite (the caller raises the dampening and retries).

    With J the order-reversing permutation and J H J = M M^T (Cholesky), H^-1 = (J M^-1 J)^T (J M^-1 J) and
    J M^-1 J is upper triangular with a positive diagonal, so it is U: one factorisation and one triangular
    inverse (by halves, in place in M's storage), without forming H^-1. LAPACK runs on one thread here: these
    are small matrices, and OpenBLAS's threaded factorisation slows down by an order of magnitude when the
    cores are busy. Besides `h`, one [cols, cols] float64 array is live at the end (two while it is returned).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        m = np.linalg.cholesky(h[::-1, ::-1])
        _invert_lower_inplace(m)
        return np.ascontiguousarray(m[::-1, ::-1])


def prepare(h: np.ndarray, w: np.ndarray | None, damp: float, perm: np.ndarray | None = None,
            max_tries: int = 8) -> tuple[np.ndarray, np.ndarray, float]:
    """Dead columns, dampening and the inverse's upper Cholesky factor in one call.

    `h` (float64, copied); `w` (float32, changed in place: dead columns zeroed; None to leave weights alone).
    With `perm` (act-order), U is that of H with rows and columns permuted (dead columns are found in the
    original order). Returns (U float64, dead mask in the original order, the dampening fraction that worked):
    when H + damp is not positive definite (float rounding on a nearly singular H), the fraction is multiplied
    by 10 and tried again, up to `max_tries` times. One working copy of `h` is dampened in place (its diagonal
    is kept aside for the retries), so the [cols, cols] float64 arrays alive at once are `h`, the copy and U's.
    """
    h = np.array(h, dtype=np.float64, copy=True)
    dead = dead_columns(h, w if w is not None else np.empty((0, h.shape[0]), dtype=np.float32))
    if perm is not None:
        h = h[np.ix_(perm, perm)]
    idx = np.arange(h.shape[0])
    diag = h[idx, idx].copy()
    mean = float(np.mean(diag))
    frac = damp
    for attempt in range(max_tries):
        h[idx, idx] = diag + frac * mean          # = dampen(h, frac), without another copy of h
        try:
            return inverse_cholesky_upper(h), dead, frac
        except np.linalg.LinAlgError:
            if attempt + 1 == max_tries:
                raise np.linalg.LinAlgError(f"Hessian is not positive definite even with dampening {frac:g}") from None
            frac = frac * 10 if frac > 0 else 1e-6
    raise AssertionError("unreachable")
