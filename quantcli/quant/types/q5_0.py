"""Q5_0: 32 values per block as 5-bit quants q of one fp16 scale d; a value decodes as (q - 16) * d
(formats/Q5_0.md). Bytes: d, then the 32 fifth bits as a little-endian uint32, then 16 bytes of low nibbles.

Without an imatrix: d = max / -16 (max: first value of the largest magnitude) and
q = min(31, (int8_t)(x * (1/d) + 16.5f)), product and sum each rounded to float32. With an imatrix:
make_qx_quants' weighted scale search.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from ..base import QuantType
from ._common import (F32, LevelCodes, block_bytes, c_inverse_or_zero, c_low_byte, c_trunc_int, f32_div,
                      first_absmax, fp16_field, make_qx_quants, pack_q5, read_fp16, row_imatrix_weights, to_columns,
                      unpack_q5)

NMAX = 16
QMAX = 31
ROUND_OFFSET = F32(16.5)


class Q5_0(QuantType, LevelCodes, qtype=GGMLQuantizationType.Q5_0):
    levels = QMAX + 1
    quant_span = (2, 2 + 4 + 16)   # after d: the fifth bits (4 bytes), then the nibbles
    fp16_offsets = (0,)  # byte offsets of the block's fp16 scale fields
    @classmethod
    def encode_chunk(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        xt = to_columns(rows, cls.block_size)
        if imatrix is None:
            _, vmax = first_absmax(xt)
            d = f32_div(vmax, F32(-NMAX))
            with np.errstate(invalid="ignore", over="ignore"):
                t = xt * c_inverse_or_zero(d) + ROUND_OFFSET
            q = c_low_byte(np.minimum(QMAX, c_low_byte(c_trunc_int(t), signed=True)), signed=False)
        else:
            d, q = make_qx_quants(xt, NMAX, row_imatrix_weights(rows, xt, imatrix, cls.block_size))
        return block_bytes(rows.shape[0], fp16_field(d), *pack_q5(q))

    @classmethod
    def pack_levels(cls, L: np.ndarray) -> np.ndarray:
        qh, qs = pack_q5(np.ascontiguousarray(L.T))
        return np.concatenate([qh, qs], axis=1)

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        q = unpack_q5(blocks[:, 2:6], blocks[:, 6:])
        return read_fp16(blocks, 0) * (q.astype(np.int8) - np.int8(NMAX)).astype(F32)

