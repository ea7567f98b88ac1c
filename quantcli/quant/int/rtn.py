"""Round-to-nearest integer encoding (NumPy reference): scales and zero points per group, then codes.

min-max follows compressed-tensors' calculate_qparams (0.20): the range always holds 0; symmetric scales are
absmax / ((qmax - qmin) / 2) (so 4-bit divides by 7.5 and uses code -8 only at the clamp); asymmetric scales are
(max - min) / (qmax - qmin) with zero point round(qmin - min / scale). The scale is rounded to the stored dtype
*before* the codes are computed, and x / scale is taken in float32, so each code is the nearest one for the scale
the loader will actually multiply by. compressed-tensors divides in the model's dtype instead; on a float16 model
that rounds the quotient to float16 first and now and then takes the farther code (docs/int-formats.md, "How RTN
picks a code"). "mse" shrinks the range by 1 - i/100 for i = 0..20 and keeps the candidate with
the least squared error (summed over the group left to right in float32, the order the C twin uses).

The C twin is qc_int_rtn in quant/_kernels/int_rtn.c; tests/quant/test_int_schemes.py holds them equal.
"""
from __future__ import annotations

import numpy as np

from ...io.int_codes import IntCodes, round_to
from ...io.int_scheme import IntScheme

METHODS = ("minmax", "mse")
MSE_GRID = 100          # candidates are 1 - i / MSE_GRID ...
MSE_STEPS = 20          # ... for i = 0 .. MSE_STEPS (down to 0.8 of the min-max range)
SCALE_DTYPES = ("F32", "F16", "BF16")
# The smallest normal of each scale dtype: a scale that would round to 0 is stored as this instead.
TINY = {"F32": np.float32(2.0 ** -126), "F16": np.float32(2.0 ** -14), "BF16": np.float32(2.0 ** -126)}


def _params(lo: np.ndarray, hi: np.ndarray, scheme: IntScheme, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per-group (stored scale, its float32 value, zero point as float32 or None) from a range that holds 0."""
    if scheme.symmetric:
        amax = np.maximum(-lo, hi)
        raw = amax / np.float32((scheme.qmax - scheme.qmin) / 2)
    else:
        raw = (hi - lo) / np.float32(scheme.qmax - scheme.qmin)
    stored, scale = round_to(raw, dtype)
    zero = scale == 0
    if zero.any():
        scale = np.where(zero, TINY[dtype], scale)
        stored = round_to(scale, dtype)[0]
    if scheme.symmetric:
        return stored, scale, None
    zp = np.clip(np.rint(np.float32(scheme.qmin) - lo / scale), scheme.qmin, scheme.qmax).astype(np.float32)
    return stored, scale, zp


def _codes(groups: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, scheme: IntScheme) -> np.ndarray:
    scaled = groups / scale[:, None]
    if zp is not None:
        scaled = scaled + zp[:, None]
    return np.clip(np.rint(scaled), scheme.qmin, scheme.qmax)


def encode(rows: np.ndarray, scheme: IntScheme, scale_dtype: str, method: str = "minmax") -> IntCodes:
    """(nrows, n) float32 -> IntCodes. The scheme's group size must divide n (IntScheme.check_row)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    nrows, n = rows.shape
    g = n if scheme.group_size is None else scheme.group_size
    groups = rows.reshape(-1, g)
    with np.errstate(all="ignore"):
        lo = np.minimum(groups.min(axis=1), np.float32(0))
        hi = np.maximum(groups.max(axis=1), np.float32(0))
        stored, scale, zp = _params(lo, hi, scheme, scale_dtype)
        if method == "mse":
            stored, scale, zp = _mse_search(groups, lo, hi, scheme, scale_dtype, (stored, scale, zp))
        elif method != "minmax":
            raise ValueError(f"unknown RTN method {method!r}")
        q = _codes(groups, scale, zp, scheme)
    shape = (nrows, n // g)
    return IntCodes(q.astype(np.int8).reshape(nrows, n), stored.reshape(shape),
                    None if zp is None else zp.astype(np.int8).reshape(shape))


def _clip_error(groups: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, scheme: IntScheme) -> np.ndarray:
    """The clip search's loss per group: sum of |error|^2.5, float32, left to right like the C loop.

    A plain squared error lets the search clip a group's largest weights for many small gains on the rest; on
    SmolLM2 at W4A16_ASYM g64 that lowered the weight error and raised the KL divergence above min-max's
    (docs/quality.md). A higher power of the error makes clipping a large weight cost more: llm-compressor's MSE
    observer uses 2.4; 2.5 is d^2 * sqrt|d|, and a square root is correctly rounded in NumPy and in C, where a
    general power is not, so the twins stay bit for bit equal."""
    q = _codes(groups, scale, zp, scheme)
    if zp is not None:
        q = q - zp[:, None]
    diff = q * scale[:, None] - groups
    err = np.zeros(groups.shape[0], dtype=np.float32)
    for j in range(groups.shape[1]):
        d = diff[:, j]
        err += (d * d) * np.sqrt(np.abs(d))
    return err


def _mse_search(groups: np.ndarray, lo: np.ndarray, hi: np.ndarray, scheme: IntScheme, dtype: str,
                best: tuple[np.ndarray, np.ndarray, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    b_stored, b_scale, b_zp = best
    b_err = _clip_error(groups, b_scale, b_zp, scheme)
    for i in range(1, MSE_STEPS + 1):
        p = np.float32(1 - i / MSE_GRID)
        stored, scale, zp = _params(lo * p, hi * p, scheme, dtype)
        err = _clip_error(groups, scale, zp, scheme)
        better = err < b_err
        b_err = np.where(better, err, b_err)
        b_stored, b_scale = np.where(better, stored, b_stored), np.where(better, scale, b_scale)
        if zp is not None:
            b_zp = np.where(better, zp, b_zp)
    return b_stored, b_scale, b_zp
