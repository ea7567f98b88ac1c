"""Q2_K: super-blocks of 256 values in 16 sub-blocks of 16; x ~ (d * sc) * q - (dmin * m), q in 0..3.

Block (84 bytes): 16 scale bytes (low nibble sc, high nibble m, one per sub-block), 64 bytes of 2-bit
quants (byte 32*h + l holds values 128h + 32k + l at bits 2k), d (fp16), dmin (fp16).
Format and encoder rules: formats/Q2_K.md. C twin: quant/_kernels/q2_k.c.

Numeric quirks reproduced: the search without an imatrix minimises the weighted absolute error (not the
squared one); the imatrix path's sigma2 is the super-block's mean square (not twice it, as Q3_K..Q5_K);
a sub-block whose decoded scale is 0 keeps the levels of its search.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from ..base import QuantType
from ._common import (LevelCodes, SubScaleCodes, F32, block_bytes, block_weights, f32_div, fp16_field, fp16_value,
                      imatrix_weights, make_qkx3_quants, nearest_int, read_fp16, seq_sum, to_columns)
from ._kquant import (KQUANT_CHUNK_BLOCKS, QK_K, make_qp_quants, pack_2bit, per_sub_block, requantize,
                      running_max_from_zero, super_block_sigma2, unpack_2bit)

#: Q2_K's quants run 0..NMAX; sub-block scales and mins are 4 bits (0..SCALE_MAX).
NMAX = 3
SCALE_MAX = 15
SUB = 16
#: (rmin, rdelta, nstep) of the search without an imatrix, which minimises absolute error.
REF_SEARCH = (-0.5, 0.1, 15)


def _encode(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    subs = QK_K // SUB
    xt = to_columns(rows, SUB)
    n_super = xt.shape[1] // subs
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        if imatrix is None:
            rmin, rdelta, nstep = REF_SEARCH
            scales, mins, L = make_qkx3_quants(xt, np.abs(xt), NMAX, rmin, rdelta, nstep, use_mad=True)
            sc, mn = scales.reshape(n_super, subs), mins.reshape(n_super, subs)
            max_scale, max_min = running_max_from_zero(sc), running_max_from_zero(mn)
            has_scale, has_min = (max_scale > 0)[:, None], (max_min > 0)[:, None]
            lo = np.where(has_scale, nearest_int(f32_div(F32(SCALE_MAX), max_scale)[:, None] * sc), 0)
            hi = np.where(has_min, nearest_int(f32_div(F32(SCALE_MAX), max_min)[:, None] * mn) << 4, 0)
            packed = ((lo | hi) & 0xFF).astype(np.uint8)
            d = np.where(has_scale[:, 0], f32_div(max_scale, F32(SCALE_MAX)), F32(0))
            dmin = np.where(has_min[:, 0], f32_div(max_min, F32(SCALE_MAX)), F32(0))
        else:
            sigma2 = super_block_sigma2(rows, 1)
            w = imatrix_weights(xt, block_weights(imatrix, rows.shape[0], SUB), per_sub_block(sigma2, subs))
            sw_t = np.ascontiguousarray(seq_sum(w).reshape(n_super, subs).T)
            scales, mins, L = make_qkx3_quants(xt, w, NMAX)
            d, Ls = make_qp_quants(np.ascontiguousarray(scales.reshape(n_super, subs).T), SCALE_MAX, sw_t)
            dmin, Lm = make_qp_quants(np.ascontiguousarray(mins.reshape(n_super, subs).T), SCALE_MAX, sw_t)
            packed = ((Ls.T | (Lm.T << 4)) & 0xFF).astype(np.uint8)
        p = packed.astype(np.int32)
        dq = (fp16_value(d)[:, None] * (p & 0xF).astype(F32)).reshape(-1)
        dmq = (fp16_value(dmin)[:, None] * (p >> 4).astype(F32)).reshape(-1)
    L = requantize(xt, L.astype(np.int32), dq, dmq, 0, NMAX, 0).T.reshape(n_super, QK_K)
    return block_bytes(rows.shape[0], packed, pack_2bit(L), fp16_field(d), fp16_field(dmin))


class Q2_K(QuantType, LevelCodes, SubScaleCodes, qtype=GGMLQuantizationType.Q2_K):
    fp16_offsets = (80, 82)  # byte offsets of the block's fp16 scale fields
    levels = NMAX + 1
    quant_span = (16, 16 + QK_K // 4)
    sub_size = SUB
    code_ranges = ((0, 15), (0, 15))   # 4-bit scale (low nibble) and min (high nibble) per sub-block
    chunk_blocks = KQUANT_CHUNK_BLOCKS

    @classmethod
    def scale_codes(cls, blocks: np.ndarray) -> np.ndarray:
        packed = blocks[:, 0:16].astype(np.int32)
        return np.stack([packed & 0xF, packed >> 4], axis=2)

    @classmethod
    def with_scale_codes(cls, blocks: np.ndarray, codes: np.ndarray) -> np.ndarray:
        out = np.array(blocks, dtype=np.uint8, copy=True)
        out[:, 0:16] = (codes[:, :, 0] | (codes[:, :, 1] << 4)).astype(np.uint8)
        return out

    @classmethod
    def encode_chunk(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        return _encode(rows, imatrix)

    @classmethod
    def pack_levels(cls, L: np.ndarray) -> np.ndarray:
        return pack_2bit(L)

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        scales = blocks[:, 0:16].astype(np.int32)
        q = unpack_2bit(blocks[:, 16:80]).reshape(-1, 16, SUB).astype(F32)
        d, dmin = read_fp16(blocks, 80), read_fp16(blocks, 82)
        dl = (d * (scales & 0xF).astype(F32))[:, :, None]
        ml = (dmin * (scales >> 4).astype(F32))[:, :, None]
        return (dl * q - ml).reshape(-1, QK_K)

