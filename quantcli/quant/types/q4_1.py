"""Q4_1: 32 values per block as 4-bit quants q with an fp16 scale d and an fp16 offset m; a value decodes as
q * d + m (formats/Q4_1.md).

Without an imatrix: m = min, d = (max - min) / 15, q = min(15, (int8_t)((x - min) * (1/d) + 0.5f)).
With an imatrix: make_qkx3_quants' weighted search over scale and offset.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from ..base import QuantType
from ._common import (F32, LevelCodes, QKX3_NSTEP, QKX3_RDELTA, QKX3_RMIN, affine_block_params, block_bytes, c_low_byte,
                      c_trunc_int, fp16_field, make_qkx3_quants, pack_nibbles, read_fp16,
                      row_imatrix_weights, to_columns, unpack_nibbles)

QMAX = 15


class Q4_1(QuantType, LevelCodes, qtype=GGMLQuantizationType.Q4_1):
    levels = QMAX + 1
    quant_span = (4, 4 + 16)   # after d and m: 16 bytes of nibble pairs
    fp16_offsets = (0, 2)  # byte offsets of the block's fp16 scale fields
    @classmethod
    def encode_chunk(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        xt = to_columns(rows, cls.block_size)
        half = cls.block_size // 2
        if imatrix is None:
            m, d, t = affine_block_params(xt, QMAX)
            q = c_low_byte(np.minimum(QMAX, c_low_byte(c_trunc_int(t), signed=True)), signed=False)
            qs = (q[:half] | (q[half:] << 4)).astype(np.uint8)   # no nibble mask: ggml ORs the whole bytes
        else:
            weights = row_imatrix_weights(rows, xt, imatrix, cls.block_size)
            d, the_min, L = make_qkx3_quants(xt, weights, QMAX, QKX3_RMIN, QKX3_RDELTA, QKX3_NSTEP)
            m = -the_min
            qs = pack_nibbles(L[:half], L[half:])
        return block_bytes(rows.shape[0], fp16_field(d), fp16_field(m), qs.T)

    @classmethod
    def pack_levels(cls, L: np.ndarray) -> np.ndarray:
        half = cls.block_size // 2
        return pack_nibbles(L[:, :half], L[:, half:])

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        q = unpack_nibbles(blocks[:, 4:]).astype(F32)
        return read_fp16(blocks, 0) * q + read_fp16(blocks, 2)
