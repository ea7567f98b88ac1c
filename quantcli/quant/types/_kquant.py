"""Pieces shared by the K-quant reference encoders (Q2_K .. Q6_K): layout, scale searches, scale packing.

Every K-quant cuts a super-block of 256 values into sub-blocks of 16 or 32. The encoders work on the
column-major layout of `_common` with one column per sub-block (shape (sub_size, n_sub_blocks), sub-blocks
in row order), so sub-block j of super-block b is column b * subs_per_block + j, and per-super-block
quantities are (n_super_blocks, subs_per_block) arrays.

Like `_common`, everything is float32 in C order; the searches here are the ones only K-quants use:
`make_qp_quants` (non-negative scales onto 0..nmax under importance weights) and `make_q3_quants` (Q3_K's
symmetric search refined one element at a time).

>>> ls = np.array([[1, 2, 3, 4, 40, 50, 60, 63]]); lm = np.array([[5, 6, 7, 8, 33, 34, 35, 36]])
>>> [a.tolist() for a in unpack_scale_min_k4(pack_scale_min_k4(ls, lm))] == [ls.tolist(), lm.tolist()]
True
"""
from __future__ import annotations


import numpy as np

from ._common import (F32, GROUP_MAX_EPS, SubScaleCodes, block_weights, c_low_byte, c_min_max,
                      f32_div, first_absmax, fp16_value, imatrix_weights, make_qkx3_quants, nearest_int, seq_sum,
                      to_columns)

# ---- constants of the K-quant encoders (the only place these numbers appear) ----
#: Values per super-block (ggml's QK_K).
QK_K = 256
#: make_qp_quants tries the inverse scales (nmax + QP_STEP * k) / max for k in -QP_STEPS..QP_STEPS, k != 0.
QP_STEPS = 4
QP_STEP = F32(0.1)
#: make_q3_quants and make_qp_quants revisit each element at most this many times.
REFINE_PASSES = 5
#: Q4_K / Q5_K pack 8 scales and 8 mins of 6 bits each into this many bytes (ggml's K_SCALE_SIZE).
K_SCALE_SIZE = 12
#: Values per chunk of the reference encoders: their work arrays (one row per sub-block element) then stay
#: around 1 MB, which measured faster than both larger and smaller chunks.
KQUANT_CHUNK_BLOCKS = (1 << 18) // 256  # super-blocks per chunk: the searches' work arrays stay in cache
#: The largest 6-bit sub-block scale or min (Q4_K, Q5_K) and the offset of Q3_K's signed 6-bit scales.
SCALE6_MAX = 63
SCALE6_OFFSET = 32


# ---- layout ----
def super_block_sigma2(rows: np.ndarray, factor: float) -> np.ndarray:
    """`factor * sum(x*x) / QK_K` per super-block, the sum taken in element order (the imatrix paths' sigma2).

    Q2_K uses factor 1, Q3_K / Q4_K / Q5_K use 2; C writes it as `factor*sumx2/QK_K`, evaluated left to right.
    """
    xb = np.ascontiguousarray(rows.reshape(-1, QK_K).T)
    with np.errstate(over="ignore", invalid="ignore"):
        sumx2 = seq_sum(xb * xb)
        scaled = sumx2 if factor == 1 else F32(factor) * sumx2
    return f32_div(scaled, F32(QK_K))


def per_sub_block(values: np.ndarray, subs: int) -> np.ndarray:
    """A per-super-block vector (n_super,) repeated for each of its sub-blocks -> (n_super * subs,)."""
    return np.repeat(values, subs)


def running_max_from_zero(v: np.ndarray) -> np.ndarray:
    """`m = 0; for each v: if (v > m) m = v;` along axis 1 of (n_super, subs): NaN and non-positive values never win."""
    start = np.zeros(v.shape[0], dtype=F32)
    return c_min_max(v.T, start, start)[1]


# ---- searches ----
def make_qp_quants(xt: np.ndarray, nmax: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_qp_quants per column of xt (n, n_groups): non-negative values onto 0..nmax with one scale.

    The K-quants' imatrix paths use it to quantize their sub-block scales and mins. It tries the inverse
    scale nmax/max and 8 neighbours by weighted squared error, then revisits each element (REFINE_PASSES
    sweeps) moving it to the level that most improves sum(w*x*l)^2 / sum(w*l*l). Returns (scale, L) where
    L holds what C stores in its uint8 array (negative levels wrap modulo 256). A column whose largest
    value is below GROUP_MAX_EPS gives scale 0 and L 0.
    """
    n = xt.shape[0]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        vmax = np.zeros(xt.shape[1], dtype=F32)
        for v in xt:                                   # C's MAX(a, b) is a > b ? a : b
            vmax = np.where(vmax > v, vmax, v)
        zero = vmax < GROUP_MAX_EPS
        safe_max = np.where(zero, F32(1), vmax)
        w = weights
        fnmax = F32(nmax)

        iscale = f32_div(fnmax, safe_max)
        L0 = c_low_byte(nearest_int(iscale * xt), signed=False).astype(F32)
        scale = f32_div(F32(1), iscale)
        diff = xt - scale * L0
        best_mse = seq_sum((w * diff) * diff)
        for k in range(-QP_STEPS, QP_STEPS + 1):
            if k == 0:
                continue
            iscale_k = f32_div(QP_STEP * F32(k) + fnmax, safe_max)
            scale_k = f32_div(F32(1), iscale_k)
            lk = np.minimum(nearest_int(iscale_k * xt), nmax).astype(F32)
            diff = xt - scale_k * lk
            mse = seq_sum((w * diff) * diff)
            better = mse < best_mse
            best_mse = np.where(better, mse, best_mse)
            iscale = np.where(better, iscale_k, iscale)

        lv = np.minimum(nearest_int(iscale * xt), nmax)
        lf = lv.astype(F32)
        wx = w * xt
        sumlx = seq_sum(wx * lf)
        suml2 = seq_sum((w * lf) * lf)
        L = c_low_byte(lv, signed=False)
        for _ in range(REFINE_PASSES):
            # A sweep that changes nothing leaves the state as it found it, so every later sweep changes
            # nothing either: running all columns until none changes matches C's per-column early exit.
            changed = False
            for i in range(n):
                Li = L[i].astype(F32)
                slx = sumlx - wx[i] * Li
                sl2 = suml2 - (w[i] * Li) * Li
                new_l = np.minimum(nearest_int(f32_div(xt[i] * sl2, slx)), nmax)
                nf = new_l.astype(F32)
                slx_new = slx + wx[i] * nf
                sl2_new = sl2 + (w[i] * nf) * nf
                take = ((slx > 0) & (sl2 > 0) & (new_l != L[i])
                        & ((slx_new * slx_new) * suml2 > (sumlx * sumlx) * sl2_new))
                if take.any():
                    changed = True
                    L[i] = np.where(take, c_low_byte(new_l, signed=False), L[i])
                    sumlx = np.where(take, slx_new, sumlx)
                    suml2 = np.where(take, sl2_new, suml2)
            if not changed:
                break
        scale = np.where(suml2 > 0, f32_div(sumlx, suml2), F32(0))
        return np.where(zero, F32(0), scale).astype(F32), np.where(zero, 0, L).astype(np.int32)


def make_q3_quants(xt: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_q3_quants with do_rmse, per column of xt (n, n_groups), weights x*x.

    Symmetric levels l in [-nmax, nmax-1] from the inverse scale -nmax/max, then REFINE_PASSES sweeps that
    move single elements to the level that increases sum(w*x*l)^2 / sum(w*l*l). Returns (scale, L) with
    L = l + nmax; an all-zero column (max magnitude below GROUP_MAX_EPS) gives scale 0 and L 0.
    """
    n = xt.shape[0]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        amax, vmax = first_absmax(xt)
        zero = amax < GROUP_MAX_EPS
        iscale = f32_div(F32(-nmax), np.where(zero, F32(1), vmax))
        L = np.clip(nearest_int(iscale * xt), -nmax, nmax - 1)
        w = xt * xt
        wx = w * xt
        lf = L.astype(F32)
        sumlx = seq_sum(wx * lf)
        suml2 = seq_sum((w * lf) * lf)
        for _ in range(REFINE_PASSES):
            changed = False                            # see make_qp_quants on why a global exit is exact
            for i in range(n):
                Li = L[i].astype(F32)
                slx = sumlx - wx[i] * Li
                sl2 = suml2 - (w[i] * Li) * Li
                new_l = np.clip(nearest_int(f32_div(xt[i] * sl2, slx)), -nmax, nmax - 1)
                nf = new_l.astype(F32)
                slx_new = slx + wx[i] * nf
                sl2_new = sl2 + (w[i] * nf) * nf
                take = ((slx > 0) & (new_l != L[i]) & (sl2_new > 0)
                        & ((slx_new * slx_new) * suml2 > (sumlx * sumlx) * sl2_new))
                if take.any():
                    changed = True
                    L[i] = np.where(take, new_l, L[i])
                    sumlx = np.where(take, slx_new, sumlx)
                    suml2 = np.where(take, sl2_new, suml2)
            if not changed:
                break
        scale = np.where(suml2 > 0, f32_div(sumlx, suml2), F32(0))
        return np.where(zero, F32(0), scale).astype(F32), np.where(zero, 0, L + nmax).astype(np.int32)


def requantize(xt: np.ndarray, L: np.ndarray, d: np.ndarray, dm: np.ndarray | None, lo: int, hi: int,
               offset: int) -> np.ndarray:
    """The final pass of every K-quant: l = clamp(nearest_int((x + dm) / d), lo, hi) + offset per column.

    d and dm are per column (sub-block). Where d is 0 the C code skips the sub-block, so the levels the
    search left in L stay; dm None means a symmetric type (x / d).
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        num = xt if dm is None else xt + dm
        q = np.clip(nearest_int(f32_div(num, d)), lo, hi) + offset
    return np.where(d != 0, q, L).astype(np.int32)


# ---- scale packing ----
def pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Q4_K / Q5_K: 8 scales and 8 mins (n_super, 8) of 6 bits into (n_super, 12) bytes.

    Bytes 0-3 hold scales 0-3 and bytes 4-7 mins 0-3 in their low 6 bits; scales and mins 4-7 put their low
    nibbles in bytes 8-11 (scale low, min high) and their top 2 bits in the top bits of bytes 0-3 / 4-7.
    Inputs are taken modulo 256 as C's uint8 stores take them.
    """
    ls = np.asarray(ls, dtype=np.int32) & 0xFF
    lm = np.asarray(lm, dtype=np.int32) & 0xFF
    out = np.zeros((ls.shape[0], K_SCALE_SIZE), dtype=np.int32)
    out[:, 0:4] = ls[:, 0:4]
    out[:, 4:8] = lm[:, 0:4]
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    out[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    out[:, 4:8] |= (lm[:, 4:8] >> 4) << 6
    return (out & 0xFF).astype(np.uint8)


def unpack_scale_min_k4(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of pack_scale_min_k4 (ggml's get_scale_min_k4): (n_super, 12) bytes -> (scales, mins), int32."""
    q = packed.astype(np.int32)
    sc = np.concatenate([q[:, 0:4] & 63, (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([q[:, 4:8] & 63, (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)], axis=1)
    return sc, mn


def pack_q3_scales(l6: np.ndarray) -> np.ndarray:
    """Q3_K: 16 biased 6-bit scales (n_super, 16) into (n_super, 12) bytes.

    Low nibbles: scales 0-7 in the low halves of bytes 0-7, scales 8-15 in their high halves; the top 2 bits
    of scale j go to byte 8 + j % 4 at bit 2 * (j // 4).
    """
    l6 = np.asarray(l6, dtype=np.int32)
    out = np.zeros((l6.shape[0], K_SCALE_SIZE), dtype=np.int32)
    out[:, 0:8] = (l6[:, 0:8] & 0xF) | ((l6[:, 8:16] & 0xF) << 4)
    hi = l6 >> 4
    for j in range(16):
        out[:, 8 + j % 4] |= hi[:, j] << (2 * (j // 4))
    return (out & 0xFF).astype(np.uint8)


def unpack_q3_scales(packed: np.ndarray) -> np.ndarray:
    """Inverse of pack_q3_scales: (n_super, 12) bytes -> the signed scales (n_super, 16) = 6-bit value - 32."""
    q = packed.astype(np.int32)
    low = np.concatenate([q[:, 0:8] & 0xF, q[:, 0:8] >> 4], axis=1)
    j = np.arange(16)
    high = (q[:, 8 + j % 4] >> (2 * (j // 4))) & 3
    return (low | (high << 4)) - SCALE6_OFFSET


# ---- quant packing ----
def pack_2bit(L: np.ndarray) -> np.ndarray:
    """(n_super, 256) levels 0..3 -> (n_super, 64) bytes: byte 32*h + l holds levels 128*h + 32*k + l at bits 2k."""
    Lb = L.reshape(-1, 2, 4, 32).astype(np.int32)
    out = Lb[:, :, 0] | (Lb[:, :, 1] << 2) | (Lb[:, :, 2] << 4) | (Lb[:, :, 3] << 6)
    return (out & 0xFF).astype(np.uint8).reshape(-1, QK_K // 4)


def unpack_2bit(qs: np.ndarray) -> np.ndarray:
    """Inverse of pack_2bit: (n_super, 64) bytes -> (n_super, 256) levels 0..3 (int32)."""
    q = qs.astype(np.int32).reshape(-1, 2, 1, 32)
    return ((q >> (2 * np.arange(4).reshape(1, 1, 4, 1))) & 3).reshape(-1, QK_K)


def pack_4bit_pairs(L: np.ndarray) -> np.ndarray:
    """(n_super, 256) levels -> (n_super, 128) bytes: byte 32*c + l = low nibbles of levels 64c + l and 64c + 32 + l."""
    Lb = L.reshape(-1, 4, 2, 32).astype(np.int32)
    return (((Lb[:, :, 0] & 0xF) | ((Lb[:, :, 1] & 0xF) << 4)) & 0xFF).astype(np.uint8).reshape(-1, QK_K // 2)


def unpack_4bit_pairs(qs: np.ndarray) -> np.ndarray:
    """Inverse of pack_4bit_pairs: (n_super, 128) bytes -> (n_super, 256) nibbles (int32)."""
    q = qs.astype(np.int32).reshape(-1, 4, 1, 32)
    return ((q >> np.array([0, 4]).reshape(1, 1, 2, 1)) & 0xF).reshape(-1, QK_K)


# ---- the encoders shared by two types ----
def encode_scale_min_32(rows: np.ndarray, imatrix: np.ndarray | None, nmax: int, ref_search: tuple[float, float, int],
                        clamp_qp_levels: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The common part of Q4_K (nmax 15) and Q5_K (nmax 31): 8 sub-blocks of 32, each x ~ d*sc*q - dmin*m.

    Without an imatrix each sub-block is searched by make_qkx2_quants (weights av_x + |x|, av_x the
    sub-block's RMS; search (rmin, rdelta, nstep) = ref_search) and its scale and min are rounded onto
    0..63 against the super-block's largest. With one, weights are qw * sqrt(sigma2 + x*x) (sigma2 = twice the
    super-block's mean square), the search is make_qkx3_quants, and make_qp_quants picks the 6-bit levels
    (clamped to 63 only in Q5_K: clamp_qp_levels). Returns (d, dmin, packed scales, levels (n_super, 256)).
    """
    subs = QK_K // 32
    xt = to_columns(rows, 32)
    n_super = xt.shape[1] // subs
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        if imatrix is None:
            sum_x2 = seq_sum(xt * xt)
            av_x = np.sqrt(f32_div(sum_x2, F32(32)))
            w = av_x + np.abs(xt)
            rmin, rdelta, nstep = ref_search
            scales, mins, L = make_qkx3_quants(xt, w, nmax, rmin, rdelta, nstep, use_mad=False)
            sc, mn = scales.reshape(n_super, subs), mins.reshape(n_super, subs)
            max_scale, max_min = running_max_from_zero(sc), running_max_from_zero(mn)
            inv_scale = np.where(max_scale > 0, f32_div(F32(SCALE6_MAX), max_scale), F32(0))
            inv_min = np.where(max_min > 0, f32_div(F32(SCALE6_MAX), max_min), F32(0))
            ls = np.minimum(c_low_byte(nearest_int(inv_scale[:, None] * sc), signed=False), SCALE6_MAX)
            lm = np.minimum(c_low_byte(nearest_int(inv_min[:, None] * mn), signed=False), SCALE6_MAX)
            d = f32_div(max_scale, F32(SCALE6_MAX))
            dmin = f32_div(max_min, F32(SCALE6_MAX))
        else:
            sigma2 = super_block_sigma2(rows, 2)
            w = imatrix_weights(xt, block_weights(imatrix, rows.shape[0], 32), per_sub_block(sigma2, subs))
            sw = seq_sum(w)
            scales, mins, L = make_qkx3_quants(xt, w, nmax)
            sw_t = np.ascontiguousarray(sw.reshape(n_super, subs).T)
            d, Ls = make_qp_quants(np.ascontiguousarray(scales.reshape(n_super, subs).T), SCALE6_MAX, sw_t)
            dmin, Lm = make_qp_quants(np.ascontiguousarray(mins.reshape(n_super, subs).T), SCALE6_MAX, sw_t)
            ls, lm = Ls.T, Lm.T
            if clamp_qp_levels:
                ls, lm = np.minimum(ls, SCALE6_MAX), np.minimum(lm, SCALE6_MAX)
        packed = pack_scale_min_k4(ls, lm)
        sc6, m6 = unpack_scale_min_k4(packed)
        dq = (fp16_value(d)[:, None] * sc6.astype(F32)).reshape(-1)
        dmq = (fp16_value(dmin)[:, None] * m6.astype(F32)).reshape(-1)
    L = requantize(xt, L.astype(np.int32), dq, dmq, 0, nmax, 0)
    return d, dmin, packed, L.T.reshape(n_super, QK_K)


def decode_scale_min_32(d: np.ndarray, dmin: np.ndarray, packed: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Q4_K / Q5_K decoding: value = (d * sc) * q - (dmin * m) per sub-block of 32.

    d and dmin are (n_super, 1) float32, q is (n_super, 256).
    """
    sc, mn = unpack_scale_min_k4(packed)
    d1 = (d * sc.astype(F32))[:, :, None]
    m1 = (dmin * mn.astype(F32))[:, :, None]
    return (d1 * q.reshape(-1, QK_K // 32, 32).astype(F32) - m1).reshape(-1, QK_K)


class ScaleMin32Codes(SubScaleCodes):
    """Q4_K / Q5_K sub-block codes: a 6-bit scale and a 6-bit min per sub-block of 32 (bytes 4..15)."""

    sub_size = 32
    code_ranges = ((0, SCALE6_MAX), (0, SCALE6_MAX))

    @classmethod
    def scale_codes(cls, blocks: np.ndarray) -> np.ndarray:
        return np.stack(unpack_scale_min_k4(blocks[:, 4:4 + K_SCALE_SIZE]), axis=2)

    @classmethod
    def with_scale_codes(cls, blocks: np.ndarray, codes: np.ndarray) -> np.ndarray:
        out = np.array(blocks, dtype=np.uint8, copy=True)
        out[:, 4:4 + K_SCALE_SIZE] = pack_scale_min_k4(codes[:, :, 0], codes[:, :, 1])
        return out
