"""Dynamic per-token integer activations, rounded the way a W8A8 compressed-tensors folder's loader rounds them.

A W8A8 folder's quantization_config says `input_activations: {num_bits: 8, strategy: token, dynamic: true,
symmetric: true}`. The loader (compressed-tensors, and vLLM's int8 kernels) then rounds every quantized Linear's
input, one row (token) at a time, before the matmul:

    scale = max(|x|) / ((qmax - qmin) / 2)        # 8 bits: absmax / 127.5, in the activation dtype
    scale = eps of the dtype where it is 0        # an all-zero token divides by something
    x'    = clamp(x / scale + 0, qmin, qmax) rounded half to even, times scale

compressed-tensors 0.20 (quantization/utils/helpers.py calculate_qparams, lifecycle/forward_helpers.py
_quantize_dequantize) computes exactly these float32 operations, each rounded once, so the NumPy version below
gives the same bits for the same input. The range always holds 0, so the absmax is the larger of |min| and |max|.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import UnsupportedError
from ...io.int_scheme import signed_range

F32 = np.float32


@dataclass(frozen=True)
class TokenActivations:
    """Symmetric dynamic per-token integer rounding of a Linear's input."""

    bits: int

    @property
    def qmin(self) -> int:
        return signed_range(self.bits)[0]

    @property
    def qmax(self) -> int:
        return signed_range(self.bits)[1]

    def fake_quantize(self, x: np.ndarray) -> np.ndarray:
        """x (..., features) float32 -> the same shape, every row rounded to its own int grid and scaled back."""
        x = np.asarray(x, dtype=F32)
        amax = np.abs(x).max(axis=-1, keepdims=True)
        scale = amax / F32((self.qmax - self.qmin) / 2)
        scale = np.where(scale == 0, np.finfo(F32).eps, scale).astype(F32)
        # "+ 0": the loader adds its zero point (0 for symmetric) before rounding, which turns -0.0 into +0.0
        scaled = x / scale + F32(0)
        return np.rint(np.clip(scaled, self.qmin, self.qmax)) * scale


def token_activations(config: dict[str, Any] | None, where: str) -> TokenActivations | None:
    """The rounding an `input_activations` block asks for: None for 16-bit activations (no block); a
    TokenActivations for dynamic symmetric per-token integers; anything else is refused, since running it with
    float activations would report figures for a model the loader does not run."""
    if config is None:
        return None
    kind = config.get("type", "int")
    strategy, dynamic, symmetric, bits = (config.get("strategy"), config.get("dynamic"), config.get("symmetric"),
                                          config.get("num_bits"))
    if kind == "int" and strategy == "token" and dynamic is True and symmetric is True and isinstance(bits, int) \
            and not isinstance(bits, bool) and 2 <= bits <= 8:
        return TokenActivations(bits)
    raise UnsupportedError(f"{where}: input_activations {config!r} are not simulated by quantcli's engine.",
                           hint="quantcli runs folders with 16-bit activations or dynamic symmetric per-token integer "
                                "activations (W8A8).")
