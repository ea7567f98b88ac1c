"""IQ4_NL: 32 values per block as 4-bit indices into the non-linear grid IQ4_GRID, with one fp16 scale d; a
value decodes as d * IQ4_GRID[q] (formats/IQ4_NL.md).

The encoder always runs ggml's weighted search (with or without an imatrix): iq4_block_scales picks d, then
every value takes the grid level nearest x / d (computed as x * (1/d) with the float32 d, not its fp16 copy).
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from ..base import QuantType
from ._common import (F32, IQ4_GRID, best_index_iq4, block_bytes, block_weights, c_inverse_or_zero,
                      fp16_field, iq4_block_scales, iq4_weights, pack_nibbles, read_fp16,
                      to_columns, unpack_nibbles)


class IQ4_NL(QuantType, qtype=GGMLQuantizationType.IQ4_NL):
    fp16_offsets = (0,)  # byte offsets of the block's fp16 scale fields
    @classmethod
    def encode_chunk(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        xt = to_columns(rows, cls.block_size)
        qw = None if imatrix is None else block_weights(imatrix, rows.shape[0], cls.block_size)
        d = iq4_block_scales(xt, iq4_weights(xt, qw, 1))
        with np.errstate(invalid="ignore", over="ignore"):
            L = best_index_iq4(c_inverse_or_zero(d) * xt)
        half = cls.block_size // 2
        return block_bytes(rows.shape[0], fp16_field(d), pack_nibbles(L[:half], L[half:]).T)

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        return read_fp16(blocks, 0) * IQ4_GRID.astype(F32)[unpack_nibbles(blocks[:, 2:])]
