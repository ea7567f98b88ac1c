"""Numeric building blocks shared by the reference block encoders.

llama.cpp's reference quantizer (ggml-quants.c, built without FMA on x86-64) is plain float32 arithmetic in
source order. To give the same bytes, the encoders here follow four rules:

* float32 everywhere, each operation rounded as in C (`(w * q) * x`, never a fused or reordered form);
* sums accumulate one element after another from +0.0 (`seq_sum`), never NumPy's pairwise `np.sum`;
* C's conversions are emulated where they matter: float -> int truncation with x86's "integer indefinite"
  result for NaN and out-of-range values (`c_trunc_int`), `roundf` / `lroundf` rounding half away from zero,
  `nearest_int`'s magic-number rounding (ties to even), fp16 stores rounding to nearest even (`fp16_bits`);
* ties and NaNs are resolved as the C comparisons resolve them (`first_absmax`, `running_absmax`).

Blocks are handled column-major: an array of shape (block_size, n_blocks), so element j of every block is
one contiguous vector and a sequential sum is a loop of block_size vector additions.

>>> xt = np.array([[1.0, -0.0], [-3.0, 0.0]], dtype=np.float32)   # two blocks of two values
>>> amax, vmax = first_absmax(xt)
>>> amax.tolist(), vmax.tolist()
([3.0, 0.0], [-3.0, 0.0])
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

F32 = np.float32

# ---- constants of ggml's reference encoders (the only place these numbers appear) ----
#: Adding 1.5 * 2**23 to a float of magnitude < 2**22 leaves its rounded value in the low mantissa bits.
NEAREST_INT_MAGIC = F32(12582912.0)
NEAREST_INT_MANTISSA = 0x007FFFFF
NEAREST_INT_OFFSET = 0x00400000
#: A group whose largest magnitude is below this counts as all zero (ggml's GROUP_MAX_EPS).
GROUP_MAX_EPS = F32(1e-15)
#: x86's cvttss2si result for NaN and out-of-range inputs ("integer indefinite").
C_INT_INDEFINITE = np.iinfo(np.int32).min
#: The 16 levels of the IQ4 non-linear 4-bit grid (ggml's kvalues_iq4nl), ascending.
IQ4_GRID = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
#: IQ4 tries the inverse scales (grid[0] + k) / max for k in -IQ4_SCALE_STEPS..IQ4_SCALE_STEPS.
IQ4_SCALE_STEPS = 7
#: make_qx_quants tries the inverse scales -(nmax + QX_STEP * k) / max for k in -QX_STEPS..QX_STEPS, k != 0.
QX_STEPS = 9
QX_STEP = F32(0.1)
#: make_qkx3_quants' search as the imatrix paths of Q4_1 / Q5_1 (and Q2_K, Q4_K, Q5_K) call it.
QKX3_RMIN = F32(-0.9)
QKX3_RDELTA = F32(0.05)
QKX3_NSTEP = 36

_IQ4_GRID_F32 = IQ4_GRID.astype(F32)


# ---- conversions ----
def fp16_bits(v: np.ndarray) -> np.ndarray:
    """float32 -> IEEE half bits (uint16), round to nearest even, as GGML_FP32_TO_FP16 stores a scale.

    >>> fp16_bits(np.array([1.0, -0.0, 65520.0], dtype=np.float32)).tolist()
    [15360, 32768, 31744]
    """
    v = np.asarray(v, dtype=F32)
    with np.errstate(over="ignore", invalid="ignore"):
        h = v.astype(np.float16).view(np.uint16)
    # ggml stores every NaN as the quiet NaN 0x7E00 with the input's sign; NumPy would keep payload bits.
    sign = (v.view(np.uint32) >> np.uint32(16)).astype(np.uint16) & np.uint16(0x8000)
    return np.where(np.isnan(v), sign | np.uint16(0x7E00), h).astype(np.uint16)


def fp16_value(v: np.ndarray) -> np.ndarray:
    """float32 -> the float32 value of its fp16 rounding (what a decoder reads back)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(v, dtype=F32).astype(np.float16).astype(F32)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: round to nearest, ties to even, via the 1.5 * 2**23 trick (bit for bit, also out of range).

    >>> nearest_int(np.array([0.5, 1.5, -2.5, 2.6], dtype=np.float32)).tolist()
    [0, 2, -2, 3]
    """
    with np.errstate(over="ignore", invalid="ignore"):
        bits = (np.asarray(v, dtype=F32) + NEAREST_INT_MAGIC).view(np.int32)
    return (bits & NEAREST_INT_MANTISSA) - NEAREST_INT_OFFSET


def c_trunc_int(v: np.ndarray) -> np.ndarray:
    """C's (int) of a float on x86-64: truncation toward zero; NaN and out-of-range give INT_MIN.

    Narrower C targets ((int8_t)f, (uint8_t)f) keep the low byte of this int, see c_low_byte.

    >>> c_trunc_int(np.array([2.9, -2.9, np.nan, 3e9], dtype=np.float32)).tolist()
    [2, -2, -2147483648, -2147483648]
    """
    v = np.asarray(v, dtype=F32)
    # 2**31 is exactly representable; every finite float below it in magnitude truncates into int32 range.
    ok = np.abs(v) < F32(2.0 ** 31)
    with np.errstate(invalid="ignore"):
        t = np.where(ok, np.trunc(v), F32(0)).astype(np.int32)
    return np.where(ok, t, np.int32(C_INT_INDEFINITE))


def c_low_byte(i: np.ndarray, signed: bool) -> np.ndarray:
    """The int8_t / uint8_t a C conversion keeps of an int: its low 8 bits (as int32 for further arithmetic)."""
    low = np.asarray(i).astype(np.uint8)
    return (low.view(np.int8) if signed else low).astype(np.int32)


def c_roundf(v: np.ndarray) -> np.ndarray:
    """C roundf: nearest integer, halves away from zero, NaN and Inf unchanged (float32 in, float32 out)."""
    v = np.asarray(v, dtype=F32)
    t = np.trunc(v)
    with np.errstate(invalid="ignore"):
        frac = v - t                                      # exact: t and v share their leading bits
        step = np.where(np.abs(frac) >= F32(0.5), np.copysign(F32(1), v), F32(0))
    return np.where(np.isfinite(v), t + step, v).astype(F32)


def c_lroundf_int(v: np.ndarray) -> np.ndarray:
    """`(int)lroundf(v)` on x86-64 glibc: halves away from zero; NaN, Inf and |v| >= 2**63 give LONG_MIN,
    of which an int keeps the low 32 bits (0)."""
    v = np.asarray(v, dtype=F32)
    r = c_roundf(v)
    ok = np.abs(v) < F32(2.0 ** 31)       # larger finite values never occur for the types here (|v| <= ~1)
    with np.errstate(invalid="ignore"):
        return np.where(ok, np.where(ok, r, F32(0)).astype(np.int32), np.int32(0))


def f32_div(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """a / b in float32 without NumPy's divide-by-zero warnings (C gives Inf / NaN silently)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        return np.divide(F32(a) if np.isscalar(a) else a, F32(b) if np.isscalar(b) else b, dtype=F32)


def c_inverse_or_zero(d: np.ndarray) -> np.ndarray:
    """`d ? 1.0f/d : 0.0f`, the guard every encoder puts around its inverse scale."""
    return np.where(d != 0, f32_div(F32(1), d), F32(0)).astype(F32)


# ---- reductions in C order ----
def seq_sum(terms: np.ndarray) -> np.ndarray:
    """Sum along axis 0 one term after another from +0.0f, as a C `for (...) s += t[i];` loop does."""
    s = np.zeros(terms.shape[1:], dtype=F32)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in terms:
            s = s + t
    return s


def first_absmax(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(amax, max) of each column as `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` from (0, 0) finds them.

    The first value of the largest magnitude wins; NaN is never taken; an all-zero column gives (+0, +0).
    """
    a = np.abs(xt)
    a = np.where(np.isnan(a), F32(-1), a)
    idx = np.argmax(a, axis=0)
    cols = np.arange(xt.shape[1])
    amax = a[idx, cols]
    found = amax > 0
    return np.where(found, amax, F32(0)).astype(F32), np.where(found, xt[idx, cols], F32(0)).astype(F32)


def running_absmax(xt: np.ndarray) -> np.ndarray:
    """Per column, `amax = MAX(amax, fabsf(v))` from 0 with ggml's MAX(a, b) = a > b ? a : b (NaN taken, then
    replaced by the next value)."""
    a = np.abs(xt)
    if not np.isnan(a).any():
        return np.maximum(a.max(axis=0), F32(0)).astype(F32)
    amax = np.zeros(xt.shape[1:], dtype=F32)
    for v in a:
        amax = np.where(amax > v, amax, v)
    return amax


# ---- layout ----
def to_columns(rows: np.ndarray, block_size: int) -> np.ndarray:
    """(nrows, n_per_row) -> column-major blocks (block_size, n_blocks), blocks in row order."""
    return np.ascontiguousarray(rows.reshape(-1, block_size).T)


def block_weights(imatrix: np.ndarray, nrows: int, block_size: int) -> np.ndarray:
    """The importance weight of every element in the column-major block layout of `to_columns`."""
    per_row = imatrix.reshape(-1, block_size).T                  # (block_size, blocks per row)
    return np.ascontiguousarray(np.tile(per_row, (1, nrows)))


def row_sigma2(rows: np.ndarray) -> np.ndarray:
    """`sum(x*x) / n_per_row` per row with a sequential sum: the imatrix paths of Q4_0..Q5_1 weight by it."""
    xr = np.ascontiguousarray(rows.T)
    return f32_div(seq_sum(xr * xr), F32(rows.shape[1]))


def imatrix_weights(xt: np.ndarray, qw: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """`qw[j] * sqrtf(sigma2 + x[j]*x[j])`: how ggml turns an imatrix into per-element weights.

    sigma2 broadcasts against the columns (one value per block).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return (qw * np.sqrt(sigma2 + xt * xt)).astype(F32)


def row_imatrix_weights(rows: np.ndarray, xt: np.ndarray, imatrix: np.ndarray, block_size: int) -> np.ndarray:
    """Per-element weights of the imatrix paths of Q4_0..Q5_1: qw * sqrt(sigma2 + x*x), sigma2 = mean x*x
    of the element's whole row. xt is `to_columns(rows, block_size)`."""
    sigma2 = np.repeat(row_sigma2(rows), rows.shape[1] // block_size)
    return imatrix_weights(xt, block_weights(imatrix, rows.shape[0], block_size), sigma2)


def c_min_max(xt: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column, `if (v < lo) lo = v; if (v > hi) hi = v;` over the rows of xt in order.

    Sequential on purpose: it decides which of +0.0 / -0.0 wins and skips NaN exactly as the C loop does.
    """
    for v in xt:
        lo = np.where(v < lo, v, lo)
        hi = np.where(v > hi, v, hi)
    return lo.astype(F32), hi.astype(F32)


def block_bytes(nrows: int, *fields: np.ndarray) -> np.ndarray:
    """Concatenate per-block byte fields (each (n_blocks, k) uint8) into rows of (nrows, row_bytes)."""
    return np.concatenate([f.reshape(f.shape[0], -1) for f in fields], axis=1).reshape(nrows, -1)


def fp16_field(v: np.ndarray) -> np.ndarray:
    """One fp16 per block as its two little-endian bytes: (n_blocks,) float32 -> (n_blocks, 2) uint8."""
    return fp16_bits(v).astype("<u2").view(np.uint8).reshape(-1, 2)


def read_fp16(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The little-endian fp16 at byte `offset` of every block, as float32 column (n_blocks, 1)."""
    return np.ascontiguousarray(blocks[:, offset:offset + 2]).view("<f2").astype(F32)


def unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """(n_blocks, 16*k) bytes -> (n_blocks, 32*k) quants: each 16 bytes give 16 low nibbles, then 16 high ones."""
    n = qs.shape[0]
    g = qs.reshape(n, -1, 1, 16)
    return np.concatenate([g & np.uint8(0x0F), g >> np.uint8(4)], axis=2).reshape(n, -1)


def unpack_high_bits(qh: np.ndarray) -> np.ndarray:
    """(n_blocks, 4) bytes of a little-endian uint32 -> (n_blocks, 32) bits (0/1, uint8)."""
    word = np.ascontiguousarray(qh).view("<u4")
    return ((word >> np.arange(32, dtype=np.uint32)) & np.uint32(1)).astype(np.uint8)


def pack_nibbles(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Bytes lo | hi << 4 (both uint8-valued arrays of quants 0..15)."""
    return ((lo.astype(np.uint8) & np.uint8(0x0F)) | (hi.astype(np.uint8) << np.uint8(4))).astype(np.uint8)


def pack_high_bits(q: np.ndarray, bit: int) -> np.ndarray:
    """Bit `bit` of each of the 32 quants in q (shape (32, n_blocks)) as a little-endian uint32 -> (n_blocks, 4) bytes."""
    bits = ((q.astype(np.uint32) >> np.uint32(bit)) & np.uint32(1)) << np.arange(32, dtype=np.uint32)[:, None]
    word = np.bitwise_or.reduce(bits, axis=0).astype("<u4")
    return word.view(np.uint8).reshape(-1, 4)


# ---- searches shared by several types ----
def best_index_iq4(v: np.ndarray) -> np.ndarray:
    """Index of the IQ4 grid level nearest v, resolving near-ties exactly as ggml's best_index_int8 does
    (`v - grid[i-1] < grid[i] - v` in float32); NaN maps to 15."""
    v = np.asarray(v, dtype=F32)
    g = _IQ4_GRID_F32
    last = len(g) - 1
    mu = np.clip(np.searchsorted(g, v, side="right"), 1, last)   # first level above v (when inside the grid)
    with np.errstate(invalid="ignore"):
        lower = (v - g[mu - 1]) < (g[mu] - v)
        idx = np.where(lower, mu - 1, mu)
        idx = np.where(v <= g[0], 0, np.where(v >= g[last], last, idx))
    return np.where(np.isnan(v), last, idx).astype(np.int32)


def make_qx_quants(xt: np.ndarray, nmax: int, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_qx_quants with rmse_type 1, per column of xt (shape (n, n_blocks)).

    Symmetric quants l in [-nmax, nmax-1] for the inverse scale -nmax/max and 18 nearby ones, keeping the
    one that maximises sum(w*x*l)^2 / sum(w*l*l). Weights default to x*x. Returns (scale, L) with L = l + nmax
    (uint8, shape like xt); an all-zero column gives scale 0 and L 0.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        amax, vmax = first_absmax(xt)
        zero = amax < GROUP_MAX_EPS
        safe_max = np.where(zero, F32(1), vmax)
        w = xt * xt if weights is None else weights
        wx = w * xt

        def trial(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            lv = np.clip(nearest_int(iscale * xt), -nmax, nmax - 1)
            lf = lv.astype(F32)
            return lv, seq_sum(wx * lf), seq_sum((w * lf) * lf)

        iscale = f32_div(F32(-nmax), safe_max)
        best_l, sumlx, suml2 = trial(iscale)
        scale = np.where(suml2 != 0, f32_div(sumlx, suml2), F32(0)).astype(F32)
        best = scale * sumlx
        for k in range(-QX_STEPS, QX_STEPS + 1):
            if k == 0:
                continue
            iscale = f32_div(-(F32(nmax) + QX_STEP * F32(k)), safe_max)
            lv, sumlx, suml2 = trial(iscale)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            best_l = np.where(better, lv, best_l)
            scale = np.where(better, f32_div(sumlx, suml2), scale)
            best = np.where(better, scale * sumlx, best)
        L = np.where(zero, 0, best_l + nmax).astype(np.uint8)
        return np.where(zero, F32(0), scale).astype(F32), L


def make_qkx3_quants(xt: np.ndarray, weights: np.ndarray | None, nmax: int, rmin: float = QKX3_RMIN,
                     rdelta: float = QKX3_RDELTA, nstep: int = QKX3_NSTEP,
                     use_mad: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's make_qkx3_quants per column of xt (shape (n, n_blocks)): asymmetric quants 0..nmax.

    Starts from the min/max grid and tries nstep+1 inverse scales (rmin + rdelta*k + nmax) / (max - min), each
    with the least-squares scale and min, keeping the one of lowest weighted error. Weights default to x*x.
    Returns (scale, the_min, L): a value decodes as scale * L - the_min (the_min is ggml's `-min`).
    """
    rmin, rdelta = F32(rmin), F32(rdelta)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        w = xt * xt if weights is None else weights
        vmin, vmax = c_min_max(xt[1:], xt[0].copy(), xt[0].copy())
        # sum_w and sum_x start from the first element, not from 0: a cumulative sum is exactly that order.
        sum_w = np.cumsum(w, axis=0, dtype=F32)[-1]
        sum_x = np.cumsum(w * xt, axis=0, dtype=F32)[-1]
        vmin = np.where(vmin > 0, F32(0), vmin)
        flat = vmax <= vmin
        span = vmax - vmin

        def err(scale: np.ndarray, lf: np.ndarray, mn: np.ndarray) -> np.ndarray:
            diff = (scale * lf + mn) - xt
            diff = np.abs(diff) if use_mad else diff * diff
            return seq_sum(w * diff)

        iscale = f32_div(F32(nmax), span)
        scale = f32_div(F32(1), iscale)
        L = np.clip(nearest_int(iscale * (xt - vmin)), 0, nmax)
        best_mad = err(scale, L.astype(F32), vmin)
        for k in range(nstep + 1 if nstep >= 1 else 0):
            # C divides by (max - min) with the min of the best candidate so far, not the initial one.
            iscale = f32_div((rmin + rdelta * F32(k)) + F32(nmax), vmax - vmin)
            lv = np.clip(nearest_int(iscale * (xt - vmin)), 0, nmax)
            lf = lv.astype(F32)
            wl = w * lf
            sum_l = seq_sum(wl)
            sum_l2 = seq_sum(wl * lf)
            sum_xl = seq_sum(wl * xt)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = f32_div(sum_w * sum_xl - sum_x * sum_l, D)
            this_min = f32_div(sum_l2 * sum_x - sum_l * sum_xl, D)
            clamp = this_min > 0
            this_min = np.where(clamp, F32(0), this_min)
            this_scale = np.where(clamp, f32_div(sum_xl, sum_l2), this_scale)
            mad = err(this_scale, lf, this_min)
            better = (D > 0) & (mad < best_mad) & ~flat
            L = np.where(better, lv, L)
            best_mad = np.where(better, mad, best_mad)
            scale = np.where(better, this_scale, scale)
            vmin = np.where(better, this_min, vmin)
        scale = np.where(flat, F32(0), scale).astype(F32)
        L = np.where(flat, 0, L).astype(np.uint8)
        return scale, (-vmin).astype(F32), L


def iq4_block_scales(xt: np.ndarray, weights: np.ndarray, ntry: int = IQ4_SCALE_STEPS) -> np.ndarray:
    """The scale IQ4 picks for each 32-value block (column of xt): the best of 2*ntry+2 candidates.

    A candidate inverse scale maps each value to its nearest grid level; its scale is then the weighted
    least-squares fit sum(w*q*x) / sum(w*q*q), and the candidate with the largest sum(w*q*x)^2 / sum(w*q*q)
    wins. Blocks whose largest magnitude is below GROUP_MAX_EPS get scale 0.
    """
    g = _IQ4_GRID_F32
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        amax, vmax = first_absmax(xt)
        zero = amax < GROUP_MAX_EPS
        safe_max = np.where(zero, F32(1), vmax)

        def sums(inv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            q = g[best_index_iq4(inv * xt)]
            wq = weights * q                          # ggml multiplies w*q first, then by x or q
            return seq_sum(wq * xt), seq_sum(wq * q)

        d = f32_div(-safe_max, g[0]) if ntry > 0 else f32_div(safe_max, g[0])
        sumqx, sumq2 = sums(f32_div(F32(1), d))
        d = np.where(sumq2 > 0, f32_div(sumqx, sumq2), F32(0)).astype(F32)
        best = d * sumqx
        for k in range(-ntry, ntry + 1):
            sumqx, sumq2 = sums(f32_div(F32(k + int(IQ4_GRID[0])), safe_max))
            better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            d = np.where(better, f32_div(sumqx, sumq2), d)
            best = np.where(better, d * sumqx, best)
        return np.where(zero, F32(0), d).astype(F32)


def iq4_weights(xt: np.ndarray, qw: np.ndarray | None, n_super: int) -> np.ndarray:
    """IQ4's per-element weights for blocks of 32 grouped in super-blocks of n_super blocks (1 for IQ4_NL,
    8 for IQ4_XS): x*x without an imatrix, else qw * sqrt(sigma2 + x*x) with sigma2 = 2*sum(x*x)/super size."""
    if qw is None:
        return (xt * xt).astype(F32)
    bs, nb = xt.shape
    sq = xt * xt
    # sum over the super-block in element order: block by block, each block's elements in turn.
    grouped = sq.T.reshape(nb // n_super, n_super * bs).T
    sigma2 = seq_sum(grouped) * F32(2.0 / (n_super * bs))
    return imatrix_weights(xt, qw, np.repeat(sigma2, n_super))


# ---- block pieces shared by two types ----
def affine_block_params(xt: np.ndarray, qmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(min, d, (x - min) * (1/d) + 0.5f) of each block (column), as Q4_1 and Q5_1 compute them without an
    imatrix: min/max by the C scan from (FLT_MAX, -FLT_MAX), d = (max - min) / qmax."""
    big = np.finfo(F32).max
    lo, hi = c_min_max(xt, np.full(xt.shape[1], big, F32), np.full(xt.shape[1], -big, F32))
    with np.errstate(invalid="ignore", over="ignore"):
        d = f32_div(hi - lo, F32(qmax))
        return lo, d, (xt - lo) * c_inverse_or_zero(d) + F32(0.5)


def pack_q5(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(32, n_blocks) 5-bit quants -> (qh (n_blocks, 4), qs (n_blocks, 16)), the layout of Q5_0 and Q5_1:
    the fifth bits as a little-endian uint32, then the low nibbles of elements j and j + 16."""
    half = q.shape[0] // 2
    return pack_high_bits(q, 4), pack_nibbles(q[:half], q[half:]).T


def unpack_q5(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """(n_blocks, 4) qh and (n_blocks, 16) qs bytes -> (n_blocks, 32) 5-bit quants."""
    return unpack_nibbles(qs) | (unpack_high_bits(qh) << np.uint8(4))


def ternary_quants(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d, t) of ternary blocks (TQ1_0, TQ2_0; columns of xt): d = amax by the running MAX,
    t = (int)lroundf(x * (1/d)) + 1, so 0, 1, 2 for -1, 0, +1."""
    d = running_absmax(xt)
    with np.errstate(invalid="ignore", over="ignore"):
        return d, c_lroundf_int(xt * c_inverse_or_zero(d)) + 1


# ---- rewriting the levels of encoded blocks (GPTQ keeps a block's scales and chooses its own levels) ----
class LevelCodes:
    """A block type whose stored levels (level_min..levels-1 per value) can be rewritten under the block's own
    scales: the K-quants (256-value super-blocks) and the 32-value legacy types Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

    `quant_span` is the byte range of a block that holds the levels (and nothing else); everything outside it
    (d, m, scales, mins, dmin) is left as the encoder wrote it. A type's decode of `with_levels(blocks, L)` is
    then a * L + b per value, with a and b fixed by those untouched bytes. Levels are the unsigned codes of the
    layout (Q4_0's 0..15 decode as (L - 8) * d; Q8_0's 1..255 are the int8 quants + 128).
    """

    levels: ClassVar[int]
    level_min: ClassVar[int] = 0
    quant_span: ClassVar[tuple[int, int]]

    @classmethod
    def pack_levels(cls, L: np.ndarray) -> np.ndarray:
        """(n_blocks, block_size) levels -> (n_blocks, quant_span length) bytes, the encoder's own layout."""
        raise NotImplementedError

    @classmethod
    def with_levels(cls, blocks: np.ndarray, L: np.ndarray) -> np.ndarray:
        """A copy of `blocks` (n_blocks, type_size) whose levels are `L` (n_blocks, block_size)."""
        start, stop = cls.quant_span
        out = np.array(blocks, dtype=np.uint8, copy=True)
        out[:, start:stop] = cls.pack_levels(np.asarray(L, dtype=np.int32))
        return out


class SubScaleCodes:
    """A K-quant whose sub-block scale (and min) codes can be rewritten under the super-block's own d (and dmin).

    Each sub-block of `sub_size` values has one code per field (Q4_K / Q5_K / Q2_K: scale and min; Q3_K / Q6_K:
    a signed scale); `code_ranges` gives each field's lowest and highest code. Codes are read and written as
    signed integers (Q3_K's are the stored 6-bit value - 32, as decoded). A sub-block's values decode as
    a * L + b with a and b affine in its codes, so a search over codes needs no decode per candidate.
    """

    sub_size: ClassVar[int]
    code_ranges: ClassVar[tuple[tuple[int, int], ...]]

    @classmethod
    def code_bounds(cls) -> tuple[np.ndarray, np.ndarray]:
        """(lowest, highest) code of each field, int32 arrays of length fields (code_ranges as arrays)."""
        lows, highs = zip(*cls.code_ranges)
        return np.array(lows, dtype=np.int32), np.array(highs, dtype=np.int32)

    @classmethod
    def scale_codes(cls, blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, type_size) -> (n_blocks, subs, fields) int32."""
        raise NotImplementedError

    @classmethod
    def with_scale_codes(cls, blocks: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """A copy of `blocks` whose sub-block codes are `codes` (n_blocks, subs, fields), each within its range."""
        raise NotImplementedError
