"""HQQ (half-quadratic quantization, Badri & Shaji 2023) for asymmetric integer schemes: NumPy reference.

HQQ starts from a group's min-max scale and moves its zero point to minimise an lp-norm (p < 1) of the reconstruction
error, which is robust to the few large errors of outliers. The half-quadratic split adds an auxiliary error
variable e and alternates two closed-form steps (per group, float zero point z, scale s):

    q = clamp(rint(x / s + z))              codes for the current zero
    r = (q - z) * s                         what a loader reconstructs
    e = shrink_p(x - r, beta)               proximal step of |e|^p: sign(d) * max(|d| - |d|^(p-1) / beta, 0)
    z = mean(q - (x - e) / s)               the zero point that best fits x - e (then rounded, see below)
    beta = beta * KAPPA                     the penalty grows, so e is pulled towards x - r

from the min-max scale and zero, for at most ITERS rounds, stopping as soon as the group's mean absolute error
sum |x - r| stops decreasing and keeping the zero that gave the least (HQQ stops on the whole tensor's error; per
group is the same test made where it applies, and it makes a group's result independent of how rows are split
among threads).

What differs from the hqq package, and why:
- compressed-tensors stores integer zero points. With the min-max scale kept, HQQ's float zero moves by less
  than half a step from the min-max zero, so rounding it gives the min-max zero back: measured on random and
  SmolLM2 weights, no zero point of any group changed. So after each zero update the zero is rounded and
  clamped to [qmin, qmax] and the scale is refitted to the same target, s = sum(u * y) / sum(u * u) with
  u = q - z and y = x - e (the least-squares scale of the half-quadratic subproblem), rounded to the stored
  dtype (F16/BF16). Every state the loop visits is therefore one the format can store.
- P = 0.5, not the package's default 0.7: |d|^(p-1) is then 1 / sqrt(|d|), and a square root is correctly
  rounded in both NumPy and C, so the C twin gives the same bits. A general power is not (NumPy's float32
  power uses its own SIMD routines on AVX-512 machines, which differ from libm's in the last bit).
- A group keeps the min-max scale and zero unless HQQ's final pair has a strictly smaller squared error, so HQQ
  is never worse than min-max in the error the measurements use.
- Symmetric schemes have no zero point to solve for; make_int_plan refuses --method hqq with them.

Every step is float32 in one fixed order (sums run left to right over a group: np.cumsum accumulates
sequentially), so the C twin (quant/_kernels/int_hqq.c) gives the same zero points and codes.
"""
from __future__ import annotations

import numpy as np

from ...io.int_codes import IntCodes, round_to, scale_to_f32
from ...io.int_scheme import IntScheme

ITERS = 20                       # the hqq package's default number of rounds
BETA = np.float32(10.0)          # its initial penalty
KAPPA = np.float32(1.01)         # and the factor the penalty grows by each round
P = 0.5                          # the lp-norm (see above); the shrinkage below is written for this value


def _codes(groups: np.ndarray, scale: np.ndarray, zero: np.ndarray, scheme: IntScheme) -> np.ndarray:
    scaled = groups / scale[:, None] + zero[:, None]
    return np.clip(np.rint(scaled), np.float32(scheme.qmin), np.float32(scheme.qmax))


def _rowsum(values: np.ndarray) -> np.ndarray:
    """Sum of each row left to right in float32 (the C loop's order)."""
    return np.cumsum(values, axis=1, dtype=np.float32)[:, -1]


def shrink(d: np.ndarray, beta: np.float32) -> np.ndarray:
    """The proximal operator of |e|^0.5 with penalty beta: sign(d) * max(|d| - 1 / (sqrt(|d|) * beta), 0).

    Zero stays zero (1 / sqrt(0) is infinite, the max clamps it)."""
    a = np.abs(d)
    t = np.maximum(a - (np.float32(1) / np.sqrt(a)) / beta, np.float32(0))
    return np.where(d < 0, -t, t)


def _sq_error(groups: np.ndarray, scale: np.ndarray, zero: np.ndarray, scheme: IntScheme) -> np.ndarray:
    q = _codes(groups, scale, zero, scheme)
    diff = (q - zero[:, None]) * scale[:, None] - groups
    return _rowsum(diff * diff)


def solve(groups: np.ndarray, stored: np.ndarray, zero: np.ndarray, scheme: IntScheme,
          dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """HQQ's (stored scale, zero point) per group, both expressible in the format.

    groups: (G, g) float32; stored: (G,) min-max scales in their stored dtype (BF16 as uint16 bits); zero: (G,)
    min-max zero points. Returns (stored scales, float32 integer-valued zero points in [qmin, qmax])."""
    groups = np.ascontiguousarray(groups, dtype=np.float32)
    start_s, start_z = scale_to_f32(stored).astype(np.float32), np.asarray(zero, dtype=np.float32)
    qmin, qmax = np.float32(scheme.qmin), np.float32(scheme.qmax)
    g = np.float32(groups.shape[1])
    with np.errstate(all="ignore"):
        s, z, st = start_s.copy(), start_z.copy(), stored.copy()
        best_s, best_z, best_st = s.copy(), z.copy(), st.copy()
        best_err = np.full(groups.shape[0], np.inf, dtype=np.float32)
        active = np.ones(groups.shape[0], dtype=bool)
        beta = BETA
        for _ in range(ITERS):
            q = _codes(groups, s, z, scheme)
            d = groups - (q - z[:, None]) * s[:, None]
            err = _rowsum(np.abs(d))
            active &= err < best_err            # a group stops at the first round that does not improve
            if not active.any():
                break
            best_err = np.where(active, err, best_err)
            best_s, best_z, best_st = np.where(active, s, best_s), np.where(active, z, best_z), np.where(active, st, best_st)
            y = groups - shrink(d, beta)
            z_new = np.clip(np.rint(_rowsum(q - y / s[:, None]) / g), qmin, qmax)
            u = q - z_new[:, None]
            num, den = _rowsum(u * y), _rowsum(u * u)
            st_new, s_new = round_to(num / den, dtype)
            ok = active & (den > 0) & (s_new > 0) & np.isfinite(s_new)
            z = np.where(active, z_new, z)
            s, st = np.where(ok, s_new, s), np.where(ok, st_new, st)
            beta = np.float32(beta * KAPPA)
        better = _sq_error(groups, best_s, best_z, scheme) < _sq_error(groups, start_s, start_z, scheme)
    return np.where(better, best_st, stored), np.where(better, best_z, start_z).astype(np.float32)


def refine(rows: np.ndarray, codes: IntCodes, scheme: IntScheme, dtype: str) -> IntCodes:
    """(nrows, n) float32 and its min-max encoding -> the HQQ encoding (same shapes and dtypes)."""
    if codes.zero_point is None:
        raise ValueError("HQQ solves zero points; a symmetric scheme has none (make_int_plan refuses it)")
    nrows, n = rows.shape
    g = n if scheme.group_size is None else scheme.group_size
    groups = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1, g)
    stored, zero = solve(groups, codes.scale.reshape(-1), codes.zero_point.reshape(-1), scheme, dtype)
    with np.errstate(all="ignore"):
        q = _codes(groups, scale_to_f32(stored).astype(np.float32), zero, scheme)
    shape = codes.scale.shape
    return IntCodes(q.astype(np.int8).reshape(nrows, n), stored.reshape(shape), zero.astype(np.int8).reshape(shape))
