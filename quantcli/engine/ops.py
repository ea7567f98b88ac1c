"""The engine's elementwise and reduction operations, in float32 with transformers' order of operations.

Everything here works on whole arrays (all tokens of a chunk at once); the matmuls are in forward.py, where
BLAS does them. Where transformers computes in float32 with a particular rounding order (rope tables, the RMS
norm, gemma's 1 + w), these functions do the same, so the engine's logits sit within float32 summation noise
of transformers'.
"""
from __future__ import annotations

import math

import numpy as np

from ..models.spec import RopeSpec

F32 = np.float32


def rms_norm(x: np.ndarray, scale: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * scale over the last axis (scale already holds gemma's 1 + w)."""
    var = np.mean(np.square(x), axis=-1, keepdims=True, dtype=F32)
    out = x * (F32(1.0) / np.sqrt(var + F32(eps)))
    out *= scale            # in place: the same products as (x * r) * scale, one full-size temporary fewer
    return out


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = np.mean(x, axis=-1, keepdims=True, dtype=F32)
    centered = x - mean
    var = np.mean(np.square(centered), axis=-1, keepdims=True, dtype=F32)
    return centered / np.sqrt(var + F32(eps)) * weight + bias


def silu(x: np.ndarray) -> np.ndarray:
    t = np.negative(x)       # one temporary, updated in place: this runs over every FFN activation
    np.exp(t, out=t)
    t += F32(1.0)
    return np.divide(x, t, out=t)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    inner = F32(math.sqrt(2.0 / math.pi)) * (x + F32(0.044715) * x * x * x)
    return F32(0.5) * x * (F32(1.0) + np.tanh(inner))


# Abramowitz & Stegun 7.1.26 for erf, |error| < 1.5e-7: below float32's resolution of gelu's result.
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """x * Phi(x) with the exact (erf) normal CDF, as BERT's "gelu"; evaluated in float64 (numpy has no erf)."""
    z = x.astype(np.float64) * (1.0 / math.sqrt(2.0))
    a = np.abs(z)
    t = 1.0 / (1.0 + _AS_P * a)
    poly = t * (_AS_A[0] + t * (_AS_A[1] + t * (_AS_A[2] + t * (_AS_A[3] + t * _AS_A[4]))))
    erf = np.copysign(1.0 - poly * np.exp(-a * a), z)
    return (0.5 * x.astype(np.float64) * (1.0 + erf)).astype(F32)


ACTIVATIONS = {"silu": silu, "gelu_tanh": gelu_tanh, "gelu": gelu_erf}


def softmax_inplace(scores: np.ndarray) -> np.ndarray:
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    return np.tanh(x / F32(cap)) * F32(cap)


def inv_freq(rope: RopeSpec, seq_len: int) -> tuple[np.ndarray, float]:
    """The rotary frequencies (float32, dims/2) and the cos/sin scale, computed as transformers does."""
    dims = rope.dims
    exponents = np.arange(0, dims, 2, dtype=np.int64).astype(F32) / F32(dims)
    powers = np.power(F32(rope.theta), exponents, dtype=F32)
    base = F32(1.0) / powers
    if rope.kind == "default":
        return base, 1.0
    if rope.kind == "linear":
        return base / F32(rope.factor), 1.0
    if rope.kind == "llama3":
        low_wavelen = rope.original_context / rope.low_freq_factor
        high_wavelen = rope.original_context / rope.high_freq_factor
        wavelen = F32(2 * math.pi) / base
        scaled = np.where(wavelen > F32(low_wavelen), base / F32(rope.factor), base)
        smooth = (F32(rope.original_context) / wavelen - F32(rope.low_freq_factor)) / F32(
            rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (F32(1.0) - smooth) * scaled / F32(rope.factor) + smooth * scaled
        medium = ~(wavelen < F32(high_wavelen)) & ~(wavelen > F32(low_wavelen))
        return np.where(medium, smoothed, scaled).astype(F32), 1.0
    if rope.kind == "yarn":
        def correction_dim(rotations: float) -> float:
            return (dims * math.log(rope.original_context / (rotations * 2 * math.pi))) / (2 * math.log(rope.theta))
        low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
        if rope.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dims - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dims // 2, dtype=F32) - F32(low)) / F32(high - low), 0, 1).astype(F32)
        extrapolation = F32(1.0) - ramp
        interpolation = F32(1.0) / (F32(rope.factor) * powers)
        return (interpolation * (F32(1.0) - extrapolation) + base * extrapolation).astype(F32), rope.attention_factor
    # longrope: the long factors once a sequence outgrows the original context
    factors = rope.long_factors if seq_len > rope.original_context else rope.short_factors
    return F32(1.0) / (np.asarray(factors, dtype=F32) * powers), rope.attention_factor


def rope_tables(rope: RopeSpec, n_pos: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, (n_pos, dims) float32, for positions 0..n_pos-1 (halves layout: each frequency twice)."""
    freq, scale = inv_freq(rope, n_pos)
    angles = np.arange(n_pos, dtype=F32)[:, None] * freq[None, :]
    emb = np.concatenate([angles, angles], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)
    if scale != 1.0:
        cos, sin = cos * F32(scale), sin * F32(scale)
    return cos.astype(F32), sin.astype(F32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate the first cos.shape[-1] values of each head. x: (..., ctx, heads, head_dim); cos/sin: (ctx, dims)."""
    dims = cos.shape[-1]
    half = dims // 2
    c, s = cos[:, None, :], sin[:, None, :]
    rot = x[..., :dims]
    # x * cos + rotate_half(x) * sin, with rotate_half(x) = (-x2, x1), without building rotate_half(x): the first
    # half takes x1*c - x2*s, the second x2*c + x1*s. Adding -(x2*s) and subtracting x2*s round the same, so the
    # values are bit for bit transformers' order of operations.
    out = rot * c
    out[..., :half] -= rot[..., half:] * s[..., :half]
    out[..., half:] += rot[..., :half] * s[..., half:]
    if dims == x.shape[-1]:
        return out
    return np.concatenate([out, x[..., dims:]], axis=-1)
