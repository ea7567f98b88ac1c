"""Tensor transforms applied between the HF checkpoint and the GGUF file.

A transform is a small frozen record, so the plan can print it and the cache can hash it. `exact` transforms
only move values (permute, reshape, concatenate); they can run on the stored 16-bit data without widening it.
"""
from __future__ import annotations

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
