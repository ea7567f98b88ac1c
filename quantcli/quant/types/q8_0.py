"""Q8_0: 32 values per block as int8 quants of one fp16 scale, d = amax / 127 (formats/Q8_0.md).

Rounding quirk: quants are `roundf(x * (1/d))`, halves away from zero, computed as a float32 product with the
inverse scale (not a division by d). The imatrix is ignored, as in llama.cpp.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from ..base import QuantType
from ._common import (F32, LevelCodes, block_bytes, c_inverse_or_zero, c_low_byte, c_roundf, c_trunc_int,
                      f32_div, fp16_field, read_fp16, running_absmax, to_columns)

QMAX = 127   # largest quant magnitude: (1 << 7) - 1
LEVEL_OFFSET = 128   # LevelCodes' unsigned level of int8 quant q is q + 128


class Q8_0(QuantType, LevelCodes, qtype=GGMLQuantizationType.Q8_0):
    # levels are the int8 quants + 128; the encoder never writes -128 (|q| <= 127), and neither does GPTQ
    levels = 2 * LEVEL_OFFSET
    level_min = LEVEL_OFFSET - QMAX
    quant_span = (2, 2 + 32)
    fp16_offsets = (0,)  # byte offsets of the block's fp16 scale fields
    @classmethod
    def encode_chunk(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        xt = to_columns(rows, cls.block_size)
        d = f32_div(running_absmax(xt), F32(QMAX))
        with np.errstate(invalid="ignore", over="ignore"):
            q = c_low_byte(c_trunc_int(c_roundf(xt * c_inverse_or_zero(d))), signed=True)
        return block_bytes(rows.shape[0], fp16_field(d), q.T.astype(np.uint8))

    @classmethod
    def pack_levels(cls, L: np.ndarray) -> np.ndarray:
        return (L - LEVEL_OFFSET).astype(np.int8).view(np.uint8)

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        return blocks[:, 2:].view(np.int8).astype(F32) * read_fp16(blocks, 0)
