"""What one INT-quantized weight is once encoded, and the rounding a loader applies when it expands it: the
stored form every INT folder format (compressed-tensors, GPTQ, AWQ, SplitQuant) writes from and reads back into.

It lives in io/ because it is the format's side of the contract: the encoders in quant/int and quant/algorithms
produce an IntCodes, the folder writers lay it into tensors, and the readers rebuild the loader's dense values
from it. round_to is the float32 -> F16/BF16 rounding both the scale storage and the loader's output use.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class IntCodes:
    """One tensor's encoding: codes (rows, n) int8; scale (rows, groups) in its stored dtype (BF16 as uint16 bits);
    zero points (rows, groups) int8, or None for a symmetric scheme."""

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None

    def scale_f32(self) -> np.ndarray:
        return scale_to_f32(self.scale)

    def dequantize(self, scale_dtype: str, group_size: int | None) -> np.ndarray:
        """What a loader computes: (code - zero) * scale, each step exact in float32, rounded to the scale dtype."""
        rows, n = self.codes.shape
        g = n if group_size is None else group_size
        q = self.codes.astype(np.float32).reshape(rows, n // g, g)
        if self.zero_point is not None:
            q = q - self.zero_point.astype(np.float32)[:, :, None]
        dense = (q * self.scale_f32()[:, :, None]).reshape(rows, n)
        return round_to(dense, scale_dtype)[1]


def round_to(values: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """float32 -> (stored array, its float32 value), round to nearest even. BF16 is stored as uint16 bits."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "F32":
        return values, values
    if dtype == "F16":
        stored = values.astype(np.float16)
        return stored, stored.astype(np.float32)
    bits = values.view(np.uint32)
    stored = ((bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    return stored, (stored.astype(np.uint32) << 16).view(np.float32)


def scale_to_f32(scale: np.ndarray) -> np.ndarray:
    if scale.dtype == np.uint16:
        return (scale.astype(np.uint32) << 16).view(np.float32)
    return scale.astype(np.float32)
