"""The base of every quant type: shapes, checks and the registry; subclasses only encode and decode.

A subclass names its ggml type and implements the reference (NumPy) encoder and decoder:

    class Q8_0(QuantType, qtype=GGMLQuantizationType.Q8_0):
        @classmethod
        def encode_chunk(cls, rows, imatrix): ...     # (nrows, n_per_row) float32 -> (nrows, row_bytes) uint8
        @classmethod
        def decode_blocks(cls, blocks): ...           # (n_blocks, type_size) uint8 -> (n_blocks, block_size) float32

The C twin of a class lives in quant/_kernels/<name>.c and must give the same bytes.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

_REGISTRY: dict[GGMLQuantizationType, type["QuantType"]] = {}
FP16_MAX = 65504.0
#: Values per slice when dequantize decodes a tensor (4 MB of float32): bounds the decoders' temporaries.
DECODE_SLICE_VALUES = 1 << 20


class QuantType:
    qtype: ClassVar[GGMLQuantizationType]
    block_size: ClassVar[int]
    type_size: ClassVar[int]
    # Blocks per chunk of rows handed to encode_chunk. Rows are independent in every type, so this bounds the
    # work arrays (and keeps them in cache) without changing a byte; the K-quants' searches want smaller chunks.
    chunk_blocks: ClassVar[int] = 1 << 15
    # Byte offsets of the fp16 fields (scales, mins) in a block: the only fields a finite input can overflow.
    fp16_offsets: ClassVar[tuple[int, ...]] = ()

    def __init_subclass__(cls, qtype: GGMLQuantizationType, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.qtype = qtype
        cls.block_size, cls.type_size = GGML_QUANT_SIZES[qtype]
        if qtype in _REGISTRY:
            raise TypeError(f"{qtype.name} is registered twice ({_REGISTRY[qtype].__name__}, {cls.__name__})")
        _REGISTRY[qtype] = cls

    @classmethod
    def overflowed_blocks(cls, encoded: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Per block, True where finite input values were too large for this type's fp16 scale fields.

        Depending on the type's search, such a block stores an Inf/NaN scale (it decodes to Inf/NaN) or a zero
        scale (it decodes to zeros). A zero scale is also what tiny values legitimately get, so it counts as an
        overflow only when the block holds a value beyond the largest fp16 (65504), which no zero scale can
        represent. `rows` are the float32 rows that were encoded into `encoded`.
        """
        blocks = np.ascontiguousarray(encoded).reshape(-1, cls.type_size)
        amax = np.abs(np.ascontiguousarray(rows, dtype=np.float32).reshape(-1, cls.block_size)).max(axis=1)
        non_finite = np.zeros(blocks.shape[0], dtype=bool)
        all_zero = np.ones(blocks.shape[0], dtype=bool)
        for offset in cls.fp16_offsets:
            bits = blocks[:, offset:offset + 2].copy().view("<u2").reshape(-1)
            non_finite |= (bits & np.uint16(0x7C00)) == np.uint16(0x7C00)
            all_zero &= (bits & np.uint16(0x7FFF)) == 0
        return non_finite | (all_zero & (amax > FP16_MAX))

    @classmethod
    def row_bytes(cls, n_per_row: int) -> int:
        """Bytes of one quantized row of n_per_row values (a multiple of block_size)."""
        return n_per_row // cls.block_size * cls.type_size

    @classmethod
    def quantize(cls, rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        """Reference quantizer: (nrows, n_per_row) float32 -> (nrows, row_bytes) uint8.

        imatrix holds one importance weight per column (llama.cpp's quant_weights) or is None.
        """
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] % cls.block_size != 0:
            raise ValueError(f"{cls.qtype.name} needs rows of a multiple of {cls.block_size} values, got {rows.shape}")
        if imatrix is not None:
            imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
            if imatrix.shape != (rows.shape[1],):
                raise ValueError(f"imatrix has shape {imatrix.shape}, expected ({rows.shape[1]},)")
        out = cls.encode_rows(rows, imatrix)
        assert out.dtype == np.uint8 and out.shape == (rows.shape[0], cls.row_bytes(rows.shape[1]))
        return out

    @classmethod
    def dequantize(cls, data: np.ndarray, n_per_row: int) -> np.ndarray:
        """(nrows, row_bytes) uint8 -> (nrows, n_per_row) float32.

        Decoded a slice of blocks at a time: the decoders build several temporaries the size of their input
        (integer codes, scales per value), which for a whole output head (32000 x 1024 values) were 100 to 260 MB
        each, more than the float32 result itself.
        """
        data = np.ascontiguousarray(data, dtype=np.uint8)
        blocks = data.reshape(-1, cls.type_size)
        out = np.empty((len(blocks), cls.block_size), dtype=np.float32)
        step = max(1, DECODE_SLICE_VALUES // cls.block_size)
        for b0 in range(0, len(blocks), step):
            out[b0:b0 + step] = cls.decode_blocks(blocks[b0:b0 + step])
        return out.reshape(-1, n_per_row)

    @classmethod
    def encode_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        """encode_chunk over chunks of about chunk_blocks blocks (whole rows), stacked."""
        nrows, n_per_row = rows.shape
        out = np.empty((nrows, cls.row_bytes(n_per_row)), dtype=np.uint8)
        step = max(1, cls.chunk_blocks // max(1, n_per_row // cls.block_size))
        # C's float arithmetic overflows and divides by zero silently; so do the encoders.
        with np.errstate(all="ignore"):
            for r0 in range(0, nrows, step):
                out[r0:r0 + step] = cls.encode_chunk(rows[r0:r0 + step], imatrix)
        return out

    @classmethod
    def encode_chunk(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def quant_class(qtype: GGMLQuantizationType) -> type[QuantType]:
    """The reference class of a block type; raises KeyError for types without one."""
    from . import types  # noqa: F401  (importing the package registers every class)

    return _REGISTRY[qtype]


def registered_types() -> list[GGMLQuantizationType]:
    from . import types  # noqa: F401

    return sorted(_REGISTRY, key=int)


FLOAT_OUTPUT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)


def writable_types() -> list[GGMLQuantizationType]:
    """Every tensor type quantcli can write: the float types and each block type with an encoder. The one list
    the CLI options, recipes and the recipe JSON Schema accept (gguf-py knows more types than quantcli writes)."""
    return sorted(set(FLOAT_OUTPUT_TYPES) | set(registered_types()), key=int)
