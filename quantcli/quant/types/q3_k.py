"""Q3_K: super-blocks of 256 values in 16 sub-blocks of 16; x ~ (d * sc) * q, q in -4..3, sc in -32..31.

Block (110 bytes): hmask (32 bytes: bit k of byte l is the high bit of value 32k + l), 64 bytes of low
2-bit quants laid out as Q2_K's, 12 bytes of 6-bit scales (biased by 32), d (fp16). A set high bit means
the stored level is q + 4 >= 4. Format and encoder rules: formats/Q3_K.md. C twin: quant/_kernels/q3_k.c.

Numeric quirks reproduced: without an imatrix the sub-block search is make_q3_quants (weights x*x); with
one it is make_qx_quants with weights qw * sqrt(sigma2 + x*x) and the 16 scales are themselves quantized by
make_qx_quants under the sub-blocks' weight sums. Sub-blocks whose decoded scale is 0 keep their search levels.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from ..base import QuantType
from ._common import (LevelCodes, SubScaleCodes, F32, block_bytes, block_weights, c_low_byte, f32_div, first_absmax,
                      fp16_field, fp16_value, imatrix_weights, make_qx_quants, nearest_int, read_fp16, seq_sum,
                      to_columns)
from ._kquant import (KQUANT_CHUNK_BLOCKS, QK_K, SCALE6_OFFSET, make_q3_quants, pack_2bit, pack_q3_scales,
                      per_sub_block, requantize, super_block_sigma2, unpack_2bit, unpack_q3_scales)

#: Q3_K's levels are q + NMAX with q in -NMAX..NMAX-1; sub-block scales are 6-bit signed (-32..31).
NMAX = 4
SUB = 16


def _pack_quants(L: np.ndarray) -> np.ndarray:
    """(n_super, 256) levels 0..7 -> (n_super, 96) bytes: the high-bit mask, then the low 2 bits."""
    high = L > 3
    hmask = np.bitwise_or.reduce(high.reshape(-1, 8, 32).astype(np.int32) << np.arange(8).reshape(1, 8, 1), axis=1)
    low = np.where(high, L - 4, L)
    return np.concatenate([hmask.astype(np.uint8), pack_2bit(low)], axis=1)


def _encode(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    subs = QK_K // SUB
    xt = to_columns(rows, SUB)
    n_super = xt.shape[1] // subs
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        if imatrix is None:
            scales, L = make_q3_quants(xt, NMAX)
            sc = scales.reshape(n_super, subs)
            _, max_scale = first_absmax(np.ascontiguousarray(sc.T))
            has = (max_scale != 0)[:, None]
            iscale = f32_div(F32(-SCALE6_OFFSET), max_scale)
            l6 = np.clip(c_low_byte(nearest_int(iscale[:, None] * sc), signed=True), -SCALE6_OFFSET,
                         SCALE6_OFFSET - 1) + SCALE6_OFFSET
            packed = pack_q3_scales(np.where(has, l6, 0))
            d = np.where(has[:, 0], f32_div(F32(1), iscale), F32(0))
        else:
            sigma2 = super_block_sigma2(rows, 2)
            w = imatrix_weights(xt, block_weights(imatrix, rows.shape[0], SUB), per_sub_block(sigma2, subs))
            sw_t = np.ascontiguousarray(seq_sum(w).reshape(n_super, subs).T)
            scales, L = make_qx_quants(xt, NMAX, w)
            d, Ls = make_qx_quants(np.ascontiguousarray(scales.reshape(n_super, subs).T), SCALE6_OFFSET, sw_t)
            packed = pack_q3_scales(Ls.T)
        dq = (fp16_value(d)[:, None] * unpack_q3_scales(packed).astype(F32)).reshape(-1)
    L = requantize(xt, L.astype(np.int32), dq, None, -NMAX, NMAX - 1, NMAX).T.reshape(n_super, QK_K)
    return block_bytes(rows.shape[0], _pack_quants(L), packed, fp16_field(d))


class Q3_K(QuantType, LevelCodes, SubScaleCodes, qtype=GGMLQuantizationType.Q3_K):
    fp16_offsets = (108,)  # byte offsets of the block's fp16 scale fields
    levels = 2 * NMAX
    quant_span = (0, QK_K // 8 + QK_K // 4)
    sub_size = SUB
    code_ranges = ((-SCALE6_OFFSET, SCALE6_OFFSET - 1),)   # 6-bit scales stored + 32
    chunk_blocks = KQUANT_CHUNK_BLOCKS

    @classmethod
    def scale_codes(cls, blocks: np.ndarray) -> np.ndarray:
        return unpack_q3_scales(blocks[:, 96:108])[:, :, None]

    @classmethod
    def with_scale_codes(cls, blocks: np.ndarray, codes: np.ndarray) -> np.ndarray:
        out = np.array(blocks, dtype=np.uint8, copy=True)
        out[:, 96:108] = pack_q3_scales(codes[:, :, 0] + SCALE6_OFFSET)
        return out

    @classmethod
    def encode_chunk(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        return _encode(rows, imatrix)

    @classmethod
    def pack_levels(cls, L: np.ndarray) -> np.ndarray:
        return _pack_quants(L)

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        hm = blocks[:, 0:32].astype(np.int32).reshape(-1, 1, 32)
        high = ((hm >> np.arange(8).reshape(1, 8, 1)) & 1).reshape(-1, QK_K)
        q = unpack_2bit(blocks[:, 32:96]) - np.where(high == 1, 0, 4)
        d = read_fp16(blocks, 108)
        dl = (d * unpack_q3_scales(blocks[:, 96:108]).astype(F32))[:, :, None]
        return (dl * q.reshape(-1, 16, SUB).astype(F32)).reshape(-1, QK_K)
