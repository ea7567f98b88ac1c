"""Q4_0: 32 values per block as 4-bit quants q of one fp16 scale d; a value decodes as (q - 8) * d
(formats/Q4_0.md).

Without an imatrix: d = max / -8 where max is the first value of the largest magnitude, and
q = min(15, (int8_t)(x * (1/d) + 8.5f)) with the product and the sum each rounded to float32 (llama.cpp's
libggml-base is built without FMA). With an imatrix: make_qx_quants' weighted scale search.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from ..base import QuantType
from ._common import (F32, LevelCodes, block_bytes, c_inverse_or_zero, c_low_byte, c_trunc_int, f32_div,
                      first_absmax, fp16_field, make_qx_quants, pack_nibbles, read_fp16, row_imatrix_weights,
                      to_columns, unpack_nibbles)

NMAX = 8              # quants span -8..7 around the offset
QMAX = 15
ROUND_OFFSET = F32(8.5)   # NMAX + 0.5: truncation after adding it rounds half up


class Q4_0(QuantType, LevelCodes, qtype=GGMLQuantizationType.Q4_0):
    levels = QMAX + 1
    quant_span = (2, 2 + 16)   # after d: 16 bytes, values j and j + 16 in the low and high nibble
    fp16_offsets = (0,)  # byte offsets of the block's fp16 scale fields
    @classmethod
    def encode_chunk(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        xt = to_columns(rows, cls.block_size)
        half = cls.block_size // 2
        if imatrix is None:
            _, vmax = first_absmax(xt)
            d = f32_div(vmax, F32(-NMAX))
            with np.errstate(invalid="ignore", over="ignore"):
                t = xt * c_inverse_or_zero(d) + ROUND_OFFSET
            q = c_low_byte(np.minimum(QMAX, c_low_byte(c_trunc_int(t), signed=True)), signed=False)
            qs = (q[:half] | (q[half:] << 4)).astype(np.uint8)   # no nibble mask: ggml ORs the whole bytes
        else:
            d, L = make_qx_quants(xt, NMAX, row_imatrix_weights(rows, xt, imatrix, cls.block_size))
            qs = pack_nibbles(L[:half], L[half:])
        return block_bytes(rows.shape[0], fp16_field(d), qs.T)

    @classmethod
    def pack_levels(cls, L: np.ndarray) -> np.ndarray:
        half = cls.block_size // 2
        return pack_nibbles(L[:, :half], L[:, half:])

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        q = unpack_nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(NMAX)
        return read_fp16(blocks, 0) * q.astype(F32)
