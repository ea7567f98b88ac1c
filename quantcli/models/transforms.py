"""Tensor transforms applied between the HF checkpoint and the GGUF file.

A transform is a small frozen record, so the plan can print it and the cache can hash it. `exact` transforms
only move values (permute, reshape, concatenate); they can run on the stored 16-bit data without widening it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Transform:
    """Identity on a single source tensor."""

    exact = True

    def apply(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        (a,) = arrays
        return a

    def row_order(self, shapes: Sequence[tuple[int, ...]]) -> np.ndarray | None:
        """When apply() only reorders the rows of one 2-D source: for each output row, the source row it takes
        (so a reader can index the source instead of copying it); None for any other transform."""
        return None

    def describe(self) -> str:
        return ""


@dataclass(frozen=True)
class PermuteRope(Transform):
    """llama.cpp's rotary layout: within each head, interleave the two halves of the rotary dimensions.

    HF Llama checkpoints keep q/k rows as [first half of each head | second half]; llama.cpp's rope
    (mode 0) expects pairs (x0, x1) adjacent, so rows are regrouped head by head.
    """

    n_head: int

    def apply(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        (a,) = arrays
        rows = a.shape[0]
        return a.reshape(self.n_head, 2, rows // self.n_head // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)

    def row_order(self, shapes: Sequence[tuple[int, ...]]) -> np.ndarray | None:
        (shape,) = shapes
        if len(shape) != 2:
            return None
        return self.apply([np.arange(shape[0], dtype=np.int64)])

    def describe(self) -> str:
        return f"rope-permute({self.n_head} heads)"


@dataclass(frozen=True)
class AddOne(Transform):
    """Gemma stores RMSNorm weights as (w - 1); llama.cpp multiplies by w, so 1 is added back."""

    exact = False

    def apply(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        (a,) = arrays
        return a + np.float32(1.0)

    def describe(self) -> str:
        return "+1"


@dataclass(frozen=True)
class Concat(Transform):
    """Stack several source tensors along their first axis (fused projections)."""

    def apply(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate(list(arrays), axis=0)

    def describe(self) -> str:
        return "concat"


@dataclass(frozen=True)
class Reshape(Transform):
    shape: tuple[int, ...]

    def apply(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        (a,) = arrays
        return a.reshape(self.shape)

    def describe(self) -> str:
        return f"reshape{self.shape}"


@dataclass(frozen=True)
class Constant(Transform):
    """A tensor written from values in the config, with no source tensor (phi3's long/short rope factors)."""

    values: tuple[float, ...]
    exact = False

    def apply(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        if arrays:
            raise ValueError("Constant takes no source tensors")
        return np.asarray(self.values, dtype=np.float32)

    def describe(self) -> str:
        return f"from config ({len(self.values)} values)"


@dataclass(frozen=True)
class Llama3RopeFactors(Transform):
    """Llama 3.1's rope frequency scaling as the per-dimension divisors llama.cpp reads from rope_freqs.

    Llama 3.1 stretches only the low frequencies: a rotary pair whose wavelength is shorter than
    `original_context / high_freq_factor` keeps its frequency (divisor 1), one longer than
    `original_context / low_freq_factor` is slowed by `factor`, and the band between blends the two. llama.cpp
    divides each pair's angle by the tensor's entry, so the tensor holds those divisors. The arithmetic is float32
    with the roundings of llama.cpp's converter (which builds the table from float32 torch tensors).
    """

    head_dim: int
    rope_theta: float
    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_context: int
    exact = False

    def apply(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        if arrays:
            raise ValueError("Llama3RopeFactors takes no source tensors")
        f32, one = np.float32, np.float32(1.0)
        exponents = np.arange(0, self.head_dim, 2, dtype=f32) / f32(self.head_dim)
        # pow correctly rounded to float32; torch's own pow (used by llama.cpp's converter) is within one ulp of it,
        # so a rare entry of the converter's table can differ from ours in its last bit
        powers = np.power(np.float64(f32(self.rope_theta)), exponents.astype(np.float64)).astype(f32)
        inv_freq = one / powers
        # torch evaluates `scalar / tensor` as reciprocal(tensor) * scalar; the same two roundings here
        wavelen = (one / inv_freq) * f32(2 * math.pi)
        smooth = ((one / wavelen) * f32(self.original_context) - f32(self.low_freq_factor)) \
            / f32(self.high_freq_factor - self.low_freq_factor)
        with np.errstate(divide="ignore", over="ignore"):  # the blend may blow up outside its band, where it is unused
            blended = one / ((one - smooth) / f32(self.factor) + smooth)
        out = np.where(wavelen > f32(self.original_context / self.low_freq_factor), f32(self.factor), blended)
        return np.where(wavelen < f32(self.original_context / self.high_freq_factor), one, out).astype(f32)

    def describe(self) -> str:
        return f"llama3 rope factors (factor {self.factor:g}, original context {self.original_context})"
