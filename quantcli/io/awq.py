"""The AWQ GEMM folder layout (what AutoAWQ writes with version "gemm"; transformers loads it through gptqmodel).
formats/awq.md describes the same bytes with golden vectors.

Per quantized Linear module M with weight (out, in), G = in / group_size groups, 4-bit unsigned codes:
  M.qweight  I32 (in, out / 8)   input row i, output columns 8c..8c+7 in one word, interleaved: the code of column
                                 8c + ORDER[k] sits at bit 4k, ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
  M.qzeros   I32 (G, out / 8)    unsigned zero points, the same interleave (stored as is, no offset)
  M.scales   F16 (G, out)
The bias, when the module has one, is stored as float16 (the loaders' buffer dtype; stages/pack_safetensors).
A loader rebuilds W[o, i] = scales[i // g, o] *
(u[i, o] - z[i // g, o]) in float16.

AWQ has zero points and no act order: only asymmetric 4-bit codes in input order are written.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError, UnsupportedError
from .checkpoint import Checkpoint
from .gptq import SCALE_DTYPE, default_g_idx, f16_scales, unsigned
from .int_codes import IntCodes, round_to
from .int_scheme import IntScheme
from .quantized_folder import FolderReader, QuantizedModule, expect_shape, require
from .safetensors_writer import TensorEntry

BITS = 4
PER_WORD = 8
ORDER = (0, 2, 4, 6, 1, 3, 5, 7)      # the column whose code goes into nibble k of a word
VERSION = "gemm"


def check_scheme(scheme: IntScheme) -> None:
    if scheme.bits != BITS:
        raise InputError(f"awq (GEMM) stores 4-bit codes only, not {scheme.bits}-bit.",
                         hint="Use --bits 4, or --format gptq for 2- and 8-bit codes.")
    if scheme.symmetric:
        raise InputError("awq stores asymmetric codes with zero points; --sym does not apply.",
                         hint="Drop --sym, or use --format gptq --sym.")
    if scheme.group_size is None:
        raise InputError("awq needs a group size (AutoAWQ has no per-channel layout).",
                         hint="Use --group-size 32, 64 or 128.")


def check_module(name: str, shape: tuple[int, ...], scheme: IntScheme) -> None:
    out, n = shape
    if out % PER_WORD:
        raise InputError(f"awq: {name!r} has {out} output rows, not a multiple of {PER_WORD} (eight codes per word).",
                         hint=f"Add --ignore {name.rsplit('.', 1)[0]}, or use --format compressed-tensors.")
    scheme.check_row(name, n)


def module_entries(module: str, shape: tuple[int, ...], scheme: IntScheme) -> list[TensorEntry]:
    out, n = shape
    groups = scheme.groups_per_row(n)
    return [TensorEntry(f"{module}.qweight", "I32", (n, out // PER_WORD)),
            TensorEntry(f"{module}.qzeros", "I32", (groups, out // PER_WORD)),
            TensorEntry(f"{module}.scales", SCALE_DTYPE, (groups, out))]


def pack_interleaved(values: np.ndarray) -> np.ndarray:
    """(rows, cols) 4-bit unsigned codes -> (rows, cols / 8) int32 in AWQ's nibble order."""
    rows, cols = values.shape
    v = np.ascontiguousarray(values, dtype=np.uint8).reshape(rows, cols // PER_WORD, PER_WORD)
    # Byte j of the little-endian word holds nibbles 2j (low) and 2j+1 (high).
    pairs = np.empty((rows, cols // PER_WORD, 4), dtype=np.uint8)
    for j in range(4):
        pairs[:, :, j] = v[:, :, ORDER[2 * j]] | (v[:, :, ORDER[2 * j + 1]] << np.uint8(4))
    return pairs.reshape(rows, -1).view("<u4").astype(np.uint32, copy=False).view(np.int32)


def unpack_interleaved(words: np.ndarray) -> np.ndarray:
    """The inverse of pack_interleaved: (rows, cols / 8) int32 -> (rows, cols) uint8."""
    w = words.view(np.uint32)
    out = np.empty((w.shape[0], w.shape[1], PER_WORD), dtype=np.uint8)
    for k, col in enumerate(ORDER):
        out[:, :, col] = (w >> np.uint32(4 * k)) & np.uint32(0xF)
    return out.reshape(w.shape[0], -1)


def module_arrays(module: str, codes: IntCodes, scheme: IntScheme,
                  g_idx: np.ndarray | None = None) -> list[tuple[str, np.ndarray]]:
    """The arrays of module_entries from (out, in) asymmetric codes. AWQ stores no g_idx: a g_idx other than
    the in-order grouping (GPTQ's act order) cannot be written."""
    n = codes.codes.shape[1]
    if codes.zero_point is None:
        raise ValueError(f"{module}: AWQ needs asymmetric codes with zero points")
    if g_idx is not None and not np.array_equal(np.asarray(g_idx), default_g_idx(n, scheme.group_size)):
        raise ValueError(f"{module}: AWQ has no g_idx; act-order groupings cannot be stored")
    u, z = unsigned(codes, BITS)
    return [(f"{module}.qweight", pack_interleaved(u.T)),
            (f"{module}.qzeros", pack_interleaved(np.ascontiguousarray(z.T))),
            (f"{module}.scales", np.ascontiguousarray(f16_scales(codes).T))]


def quantization_config(scheme: IntScheme, ignore: list[str]) -> dict[str, Any]:
    """config.json's quantization_config as AutoAWQ writes it (transformers' AwqConfig fields)."""
    return {"quant_method": "awq", "version": VERSION, "bits": BITS, "group_size": scheme.group_size,
            "zero_point": True, "modules_to_not_convert": list(ignore)}


# ---- reading a folder back -------------------------------------------------------------------------------

def quantized_modules(names: list[str] | dict[str, Any]) -> list[str]:
    return [n[: -len(".qweight")] for n in names if n.endswith(".qweight")]


def read_codes(read: Any, module: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u (in, out) uint8, z (G, out) uint8, scales (G, out) float16) of one module."""
    return unpack_interleaved(read(f"{module}.qweight")), unpack_interleaved(read(f"{module}.qzeros")), read(f"{module}.scales")


def dequantize_module(read: Any, module: str, group_size: int) -> np.ndarray:
    """The dense (out, in) float32 weight a loader rebuilds, rounded to float16 as its kernel computes it."""
    u, z, scales = read_codes(read, module)
    g = np.arange(u.shape[0]) // group_size
    dense = (u.astype(np.float32) - z[g].astype(np.float32)) * scales.astype(np.float32)[g]
    return np.ascontiguousarray(round_to(dense, SCALE_DTYPE)[1].T)


class AWQReader(FolderReader):
    """An AWQ GEMM folder opened for inspect, verify and the engine; every module's tensors checked on open."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt, path = ckpt, ckpt.path
        qc = ckpt.config["quantization_config"]
        where = "quantization_config"
        self.group = require(qc, "group_size", (int,), where, path)
        if require(qc, "bits", (int,), where, path) != BITS or str(qc.get("version", VERSION)).lower() != VERSION:
            raise UnsupportedError(f"{path}: an AWQ folder with bits {qc.get('bits')}, version {qc.get('version')!r}.",
                                   hint=f"quantcli reads {BITS}-bit AWQ {VERSION} folders.")
        if self.group < 1:
            raise InputError(f"{path}: {where}.group_size is {self.group}.", hint="The folder's config is damaged.")
        self.modules: dict[str, QuantizedModule] = {}
        for module in quantized_modules(ckpt.tensors):
            n, words = ckpt.tensors[f"{module}.qweight"].shape
            out, groups = words * PER_WORD, -(-n // self.group)
            expect_shape(ckpt, f"{module}.qweight", (n, words), ("I32",))
            expect_shape(ckpt, f"{module}.qzeros", (groups, words), ("I32",))
            expect_shape(ckpt, f"{module}.scales", (groups, out), ("F16",))
            self.modules[module] = QuantizedModule(module, (out, n), tuple(f"{module}.{s}" for s in
                                                   ("qweight", "qzeros", "scales")), BITS)
        self.scheme: dict[str, Any] = {
            "quant_method": "awq", "format": f"awq-{VERSION}", "num_bits": BITS, "group_size": self.group,
            "symmetric": False, "ignore": qc.get("modules_to_not_convert") or []}

    def dense(self, module: str) -> np.ndarray:
        return dequantize_module(self.ckpt.read_raw, module, self.group)


def open_reader(ckpt: Checkpoint) -> AWQReader:
    return AWQReader(ckpt)
