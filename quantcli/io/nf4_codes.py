"""bitsandbytes' NF4 code book and what one NF4 weight is once encoded: the parts of the bnb-nf4 folder format
(formats/bnb-nf4.md) that both the encoder (quant/int/nf4.py) and the folder writer and reader (io/bnb.py) use.

The 16 levels and the 256-entry dynamic code are format constants: the loader indexes its own copies of them.
NF4Codes.dequantize is what a loader computes, absmax = code[q] * nested_absmax + offset (double quantization)
and weight = NF4[index] * absmax, in float32, before the cast to the model dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

NF4_BLOCK = 64
NESTED_BLOCK = 256
# The 16 NF4 levels (quantiles of a standard normal scaled to [-1, 1]) as bitsandbytes defines them; its loader
# uses its own copy of this table, so these float32 values are part of the format.
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=np.float32)


@lru_cache(maxsize=1)
def dynamic_code() -> np.ndarray:
    """The signed 8-bit dynamic code (Dettmers, 8-bit approximations): for exponent e = 0..6, 2^e evenly spaced
    fractions in (0.1, 1) times 10^(e-6), both signs, plus 0 and 1. The table is stored in every file beside
    the codes that index it, so the loader never needs to regenerate it."""
    values = [0.0, 1.0]
    for e in range(7):
        edges = np.linspace(0.1, 1.0, 2 ** e + 1, dtype=np.float32)
        mids = (edges[:-1] + edges[1:]) / np.float32(2)
        values += [float(np.float32(10.0 ** (e - 6)) * m) for m in mids]
        values += [-float(np.float32(10.0 ** (e - 6)) * m) for m in mids]
    code = np.array(sorted(values), dtype=np.float32)
    assert code.shape == (256,)
    return code


@dataclass(frozen=True)
class NF4Codes:
    packed: np.ndarray                      # (ceil(n / 2), 1) uint8: two indices per byte, first in the high nibble
    absmax: np.ndarray                      # float32 per block, or uint8 codes when double quantized
    nested_absmax: np.ndarray | None = None # float32 per block of 256 absmax values
    offset: float | None = None             # the mean subtracted before the nested quantization

    def block_absmax(self) -> np.ndarray:
        if self.nested_absmax is None:
            return self.absmax
        n = self.absmax.shape[0]
        scale = np.repeat(self.nested_absmax, NESTED_BLOCK)[:n]
        return dynamic_code()[self.absmax] * scale + np.float32(self.offset)

    def dequantize(self, shape: tuple[int, ...]) -> np.ndarray:
        """float32 values a loader computes before casting to the model dtype."""
        n = int(np.prod(shape))
        idx = np.empty(self.packed.shape[0] * 2, dtype=np.uint8)
        idx[0::2], idx[1::2] = self.packed[:, 0] >> 4, self.packed[:, 0] & 0xF
        levels = NF4_LEVELS[idx[:n]]
        absmax = np.repeat(self.block_absmax(), NF4_BLOCK)[:n]
        return (levels * absmax).reshape(shape)
