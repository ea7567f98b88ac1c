"""The GPTQ folder layout, checkpoint_format "gptq" (v1): what AutoGPTQ and GPTQModel write and what transformers
loads through optimum + gptqmodel. formats/gptq.md describes the same bytes with golden vectors.

Per quantized Linear module M with weight (out, in), G groups, b bits, f = 32 / b codes per int32 word:
  M.qweight  I32 (in / f, out)   unsigned codes u = code + 2^(b-1); input i of column o sits in word [i // f, o]
                                 at bit (i % f) * b (packed down the input dimension)
  M.qzeros   I32 (G, out / f)    unsigned zero points z packed the same way along the output dimension, then the
                                 whole word minus sum_k 1 << (k * b): v1 stores zero - 1 in every field
  M.scales   F16 (G, out)
  M.g_idx    I32 (in,)           the group of each input column (i // group_size unless act order reorders them)
The bias, when the module has one, is stored as float16 (the loaders' buffer dtype; stages/pack_safetensors).
A loader rebuilds W[o, i] = scales[g, o] *
(u[i, o] - z[g, o]) with g = g_idx[i], in float16.

Why the whole-word subtraction: gptqmodel turns a v1 checkpoint into its internal v2 by adding the same constant
to every qzeros word, so subtracting it as a 32-bit word (borrows included) is its exact inverse even for a zero
point of 0. A symmetric scheme stores zero 2^(b-1) in every field, so no field ever borrows there.

Only 2, 4 and 8 bits: those fill a word exactly. 3-bit GPTQ spans words and its v1 zero points get a per-field
correction of their own in gptqmodel, so quantcli refuses it rather than write a layout it does not test.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError, UnsupportedError
from .checkpoint import Checkpoint
from .int_codes import IntCodes, round_to, scale_to_f32
from .int_scheme import IntScheme
from .quantized_folder import FolderReader, QuantizedModule, expect_shape, require
from .safetensors_writer import TensorEntry

BITS = (2, 4, 8)            # bit widths whose codes fill an int32 word
WORD = 32
ROW_MULTIPLE = 32           # gptqmodel packs inputs and zero-point columns in blocks of 32
CHECKPOINT_FORMAT = "gptq"  # v1, the format every GPTQ loader reads
SCALE_DTYPE = "F16"
QUANTIZE_CONFIG = "quantize_config.json"   # AutoGPTQ/GPTQModel read this beside config.json


def per_word(bits: int) -> int:
    return WORD // bits


def v1_offset(bits: int) -> int:
    """The constant a v1 checkpoint subtracts from every qzeros word: 1 in each b-bit field."""
    return sum(1 << (k * bits) for k in range(per_word(bits)))


def check_scheme(scheme: IntScheme) -> None:
    if scheme.bits not in BITS:
        raise InputError(f"gptq: {scheme.bits}-bit codes are not written (3-bit GPTQ spans int32 words).",
                         hint=f"Use --bits {', '.join(map(str, BITS))}.")
    if scheme.act_bits is not None:
        raise InputError("gptq stores weight-only schemes; activations stay 16-bit.",
                         hint="Drop the W8A8 scheme, or use --format compressed-tensors --scheme W8A8.")


def check_module(name: str, shape: tuple[int, ...], scheme: IntScheme) -> None:
    """Refuse, before writing, a weight this format cannot hold."""
    out, n = shape
    module = name.rsplit(".", 1)[0]
    if n % ROW_MULTIPLE or out % ROW_MULTIPLE:
        raise InputError(f"gptq: {name!r} is {out}x{n}; GPTQ loaders need both dimensions to be multiples of {ROW_MULTIPLE}.",
                         hint=f"Add --ignore {module}, or use --format compressed-tensors.")
    scheme.check_row(name, n)


def default_g_idx(n: int, group_size: int | None) -> np.ndarray:
    return np.zeros(n, dtype=np.int32) if group_size is None else (np.arange(n, dtype=np.int32) // group_size)


def module_entries(module: str, shape: tuple[int, ...], scheme: IntScheme) -> list[TensorEntry]:
    """The tensors one quantized Linear becomes, in the order module_arrays yields them."""
    out, n = shape
    f = per_word(scheme.bits)
    groups = scheme.groups_per_row(n)
    return [TensorEntry(f"{module}.qweight", "I32", (n // f, out)),
            TensorEntry(f"{module}.qzeros", "I32", (groups, out // f)),
            TensorEntry(f"{module}.scales", SCALE_DTYPE, (groups, out)),
            TensorEntry(f"{module}.g_idx", "I32", (n,))]


def pack_along(values: np.ndarray, bits: int) -> np.ndarray:
    """(rows, cols) unsigned codes -> (rows, cols / f) uint32 packed along each row: column c goes to word c // f
    at bit (c % f) * bits. Codes are first merged into bytes (lowest bits first), then every 4 bytes are read as
    one little-endian word, which puts code k of a word at bits k * bits."""
    rows, cols = values.shape
    v = np.ascontiguousarray(values, dtype=np.uint8)
    per_byte = 8 // bits
    if per_byte > 1:
        parts = v.reshape(rows, cols // per_byte, per_byte)
        merged = parts[:, :, 0].copy()
        for k in range(1, per_byte):
            merged |= parts[:, :, k] << np.uint8(k * bits)
        v = merged
    return np.ascontiguousarray(v).view("<u4").astype(np.uint32, copy=False)


def pack_down(values: np.ndarray, bits: int) -> np.ndarray:
    """(rows, cols) unsigned codes -> (rows / f, cols) int32: row r goes to word r // f at bit (r % f) * bits."""
    return np.ascontiguousarray(pack_along(np.ascontiguousarray(values.T), bits).T).view(np.int32)


def unpack_down(words: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of pack_down: (rows / f, cols) int32 -> (rows, cols) uint8."""
    f = per_word(bits)
    w = words.view(np.uint32)
    mask = np.uint32((1 << bits) - 1)
    parts = [(w >> np.uint32(k * bits)) & mask for k in range(f)]
    return np.stack(parts, axis=1).reshape(w.shape[0] * f, w.shape[1]).astype(np.uint8)


def unsigned(codes: IntCodes, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Signed codes and zero points (rows, ...) -> unsigned (code + 2^(b-1), zero + 2^(b-1)); no zero point
    (symmetric) is the middle code 2^(b-1)."""
    half = np.uint8(1 << (bits - 1))
    # int8 -> uint8 keeps the bits; adding 2^(b-1) modulo 256 gives c + 2^(b-1) for c >= -2^(b-1).
    u = codes.codes.astype(np.uint8) + half
    z = (np.full(codes.scale.shape, half, dtype=np.uint8) if codes.zero_point is None
         else codes.zero_point.astype(np.uint8) + half)
    return u, z


def f16_scales(codes: IntCodes) -> np.ndarray:
    """The scales as float16; scales encoded for another dtype are rounded (the encoder is asked for F16)."""
    if codes.scale.dtype == np.float16:
        return codes.scale
    return round_to(scale_to_f32(codes.scale), SCALE_DTYPE)[0]


def module_arrays(module: str, codes: IntCodes, scheme: IntScheme,
                  g_idx: np.ndarray | None = None) -> list[tuple[str, np.ndarray]]:
    """The arrays of module_entries from (out, in) codes with (out, G) scales and zero points. g_idx gives the
    group of each input column (GPTQ's act order); None means in order, i // group_size."""
    n = codes.codes.shape[1]
    gi = default_g_idx(n, scheme.group_size) if g_idx is None else np.ascontiguousarray(g_idx, dtype=np.int32)
    if gi.shape != (n,) or (gi.size and (gi.min() < 0 or gi.max() >= codes.scale.shape[1])):
        raise ValueError(f"{module}: g_idx must hold {n} group numbers below {codes.scale.shape[1]}")
    u, z = unsigned(codes, scheme.bits)
    qweight = np.ascontiguousarray(pack_along(u, scheme.bits).T).view(np.int32)      # u is (out, in): along inputs
    zeros = pack_along(np.ascontiguousarray(z.T), scheme.bits)                        # (G, out): along outputs
    zeros = (zeros - np.uint32(v1_offset(scheme.bits))).view(np.int32)               # wraps mod 2^32
    return [(f"{module}.qweight", qweight),
            (f"{module}.qzeros", zeros),
            (f"{module}.scales", np.ascontiguousarray(f16_scales(codes).T)),
            (f"{module}.g_idx", gi)]


def act_order(g_idx: np.ndarray | None, n: int, group_size: int | None) -> bool:
    """True when g_idx is not the in-order grouping (the folder then needs desc_act)."""
    return g_idx is not None and not np.array_equal(np.asarray(g_idx), default_g_idx(n, group_size))


def quantization_config(scheme: IntScheme, desc_act: bool, quantized: list[str] | None = None) -> dict[str, Any]:
    """config.json's quantization_config (transformers' GPTQConfig fields); quantize_config.json holds the same.
    `quantized`: the full names of the quantized modules when some Linear in a block was left out (optimum then
    converts only those; None: every Linear in the blocks)."""
    qc: dict[str, Any] = {
        "quant_method": "gptq", "bits": scheme.bits, "group_size": scheme.group_size or -1, "desc_act": desc_act,
        "sym": scheme.symmetric, "checkpoint_format": CHECKPOINT_FORMAT, "format": CHECKPOINT_FORMAT,
        "true_sequential": True, "damp_percent": 0.01, "static_groups": False, "lm_head": False,
        "pack_dtype": "int32", "meta": {"quantizer": ["quantcli"]},
    }
    if quantized is not None:
        qc["modules_in_block_to_quantize"] = [list(quantized)]
    return qc


# ---- reading a folder back (verify, the engine's readers, tests) --------------------------------------------

def quantized_modules(names: list[str] | dict[str, Any]) -> list[str]:
    return [n[: -len(".qweight")] for n in names if n.endswith(".qweight")]


def read_codes(read: Any, module: str, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(u (in, out) uint8, z (G, out) uint8, scales (G, out) float16, g_idx (in,) int32) of one module."""
    u = unpack_down(read(f"{module}.qweight"), bits)
    qz = (read(f"{module}.qzeros").view(np.uint32) + np.uint32(v1_offset(bits))).view(np.int32)   # back to v2
    z = unpack_down(np.ascontiguousarray(qz.T), bits).T
    return u, np.ascontiguousarray(z), read(f"{module}.scales"), read(f"{module}.g_idx").astype(np.int32)


def dequantize_module(read: Any, module: str, bits: int) -> np.ndarray:
    """The dense (out, in) float32 weight a loader rebuilds: scales[g, o] * (u[i, o] - z[g, o]), in float16."""
    u, z, scales, g_idx = read_codes(read, module, bits)
    g = g_idx.astype(np.int64)
    dense = (u.astype(np.float32) - z[g].astype(np.float32)) * scales.astype(np.float32)[g]   # exact in float32
    return np.ascontiguousarray(round_to(dense, SCALE_DTYPE)[1].T)


class GPTQReader(FolderReader):
    """A GPTQ (v1) folder opened for inspect, verify and the engine; every module's tensors checked on open."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt, path = ckpt, ckpt.path
        qc = ckpt.config["quantization_config"]
        where = "quantization_config"
        self.bits = require(qc, "bits", (int,), where, path)
        group = require(qc, "group_size", (int,), where, path)
        if self.bits not in BITS:
            raise UnsupportedError(f"{path}: a {self.bits}-bit GPTQ folder.", hint=f"quantcli reads {BITS} bits.")
        f = per_word(self.bits)
        self.modules: dict[str, QuantizedModule] = {}
        for module in quantized_modules(ckpt.tensors):
            words, out = ckpt.tensors[f"{module}.qweight"].shape
            n = words * f
            groups = 1 if group in (-1, 0) else -(-n // group)
            expect_shape(ckpt, f"{module}.qweight", (words, out), ("I32",))
            expect_shape(ckpt, f"{module}.scales", (groups, out), ("F16",))
            expect_shape(ckpt, f"{module}.g_idx", (n,), ("I32",))
            expect_shape(ckpt, f"{module}.qzeros", (groups, out // f), ("I32",))
            self.modules[module] = QuantizedModule(module, (out, n), tuple(f"{module}.{s}" for s in
                                                   ("qweight", "qzeros", "scales", "g_idx")), self.bits)
        self.scheme: dict[str, Any] = {
            "quant_method": "gptq", "format": qc.get("checkpoint_format", CHECKPOINT_FORMAT), "num_bits": self.bits,
            "group_size": None if group in (-1, 0) else group, "symmetric": bool(qc.get("sym")),
            "desc_act": bool(qc.get("desc_act"))}

    def dense(self, module: str) -> np.ndarray:
        return dequantize_module(self.ckpt.read_raw, module, self.bits)


def open_reader(ckpt: Checkpoint) -> GPTQReader:
    return GPTQReader(ckpt)
