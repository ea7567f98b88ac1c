"""Q5_1: 32 values per block as 5-bit quants q with an fp16 scale d and an fp16 offset m; a value decodes as
q * d + m (formats/Q5_1.md). Bytes: d, m, the 32 fifth bits as a little-endian uint32, 16 bytes of low nibbles.

Without an imatrix: m = min, d = (max - min) / 31, q = (uint8_t)((x - min) * (1/d) + 0.5f) (no clamp).
With an imatrix: make_qkx3_quants' weighted search over scale and offset.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from ..base import QuantType
from ._common import (F32, LevelCodes, QKX3_NSTEP, QKX3_RDELTA, QKX3_RMIN, affine_block_params, block_bytes, c_low_byte,
                      c_trunc_int, fp16_field, make_qkx3_quants, pack_q5, read_fp16,
                      row_imatrix_weights, to_columns, unpack_q5)

QMAX = 31


class Q5_1(QuantType, LevelCodes, qtype=GGMLQuantizationType.Q5_1):
    levels = QMAX + 1
    quant_span = (4, 4 + 4 + 16)   # after d and m: the fifth bits, then the nibbles
    fp16_offsets = (0, 2)  # byte offsets of the block's fp16 scale fields
    @classmethod
    def encode_chunk(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        xt = to_columns(rows, cls.block_size)
        if imatrix is None:
            m, d, t = affine_block_params(xt, QMAX)
            q = c_low_byte(c_trunc_int(t), signed=False)
        else:
            weights = row_imatrix_weights(rows, xt, imatrix, cls.block_size)
            d, the_min, q = make_qkx3_quants(xt, weights, QMAX, QKX3_RMIN, QKX3_RDELTA, QKX3_NSTEP)
            m = -the_min
        return block_bytes(rows.shape[0], fp16_field(d), fp16_field(m), *pack_q5(q))

    @classmethod
    def pack_levels(cls, L: np.ndarray) -> np.ndarray:
        qh, qs = pack_q5(np.ascontiguousarray(L.T))
        return np.concatenate([qh, qs], axis=1)

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        q = unpack_q5(blocks[:, 4:8], blocks[:, 8:])
        return read_fp16(blocks, 0) * q.astype(F32) + read_fp16(blocks, 2)
