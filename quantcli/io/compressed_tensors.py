"""The compressed-tensors folder layout (the package's version 0.20 as pinned in pyproject): tensor names, dtypes,
shapes and the quantization_config block of config.json. formats/compressed-tensors.md describes the same bytes.

pack-quantized (W4A16, W4A16_ASYM, W8A16), per Linear module M with weight (out, in), g groups per row:
  M.weight_packed      I32  (out, ceil(in * bits / 32))   codes + 2^(bits-1), bit stream per row (io/int_packing.py)
  M.weight_scale       the model's float dtype (out, g)
  M.weight_shape       I64  (2,)                          [out, in]
  M.weight_zero_point  I32  (ceil(out * bits / 32), g)    asymmetric only; signed zero points packed down columns
int-quantized (W8A8): M.weight I8 (out, in) and M.weight_scale (out, 1).
A loader rebuilds (code - zero_point) * scale in the scale's dtype.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, UnsupportedError
from .checkpoint import Checkpoint
from .int_codes import IntCodes, round_to, scale_to_f32
from .int_packing import pack_int32, packed_words, unpack_int32
from .int_scheme import INT_QUANTIZED, PACK_QUANTIZED, IntScheme
from .quantized_folder import FolderReader, QuantizedModule, expect_shape, require
from .safetensors_writer import TensorEntry

CT_VERSION = "0.20.0"   # the compressed-tensors release whose layout this writes (and the tests load with)


def module_entries(module: str, shape: tuple[int, ...], scheme: IntScheme, scale_dtype: str) -> list[TensorEntry]:
    """The tensors one quantized Linear becomes, in the order pack() yields them."""
    out, n = shape
    groups = scheme.groups_per_row(n)
    if scheme.storage == INT_QUANTIZED:
        entries = [TensorEntry(f"{module}.weight", "I8", (out, n)), TensorEntry(f"{module}.weight_scale", scale_dtype, (out, groups))]
        if not scheme.symmetric:
            entries.append(TensorEntry(f"{module}.weight_zero_point", "I8", (out, groups)))
        return entries
    entries = [TensorEntry(f"{module}.weight_packed", "I32", (out, packed_words(n, scheme.bits))),
               TensorEntry(f"{module}.weight_scale", scale_dtype, (out, groups)),
               TensorEntry(f"{module}.weight_shape", "I64", (2,))]
    if not scheme.symmetric:
        entries.append(TensorEntry(f"{module}.weight_zero_point", "I32", (packed_words(out, scheme.bits), groups)))
    return entries


def module_arrays(module: str, codes: IntCodes, scheme: IntScheme, packed: np.ndarray | None = None) -> list[tuple[str, np.ndarray]]:
    """The arrays of module_entries, from the codes (packed: the codes already packed, e.g. by the C kernel)."""
    out, n = codes.codes.shape
    if scheme.storage == INT_QUANTIZED:
        arrays = [(f"{module}.weight", codes.codes), (f"{module}.weight_scale", codes.scale)]
        if codes.zero_point is not None:
            arrays.append((f"{module}.weight_zero_point", codes.zero_point))
        return arrays
    arrays = [(f"{module}.weight_packed", pack_int32(codes.codes, scheme.bits) if packed is None else packed),
              (f"{module}.weight_scale", codes.scale),
              (f"{module}.weight_shape", np.array([out, n], dtype=np.int64))]
    if codes.zero_point is not None:
        arrays.append((f"{module}.weight_zero_point",
                       np.ascontiguousarray(pack_int32(np.ascontiguousarray(codes.zero_point.T), scheme.bits).T)))
    return arrays


def _args(bits: int, group_size: int | None, symmetric: bool, strategy: str, dynamic: bool,
          actorder: str | None = None) -> dict[str, Any]:
    # Every field of compressed-tensors' QuantizationArgs that is not at its default, plus the ones its own
    # model_dump always writes; the loader validates this block with pydantic.
    return {"num_bits": bits, "type": "int", "symmetric": symmetric, "group_size": group_size,
            "strategy": strategy, "dynamic": dynamic, "actorder": actorder, "block_structure": None,
            "observer": None if dynamic else "minmax", "observer_kwargs": {}}


# compressed-tensors 0.20 knows one act-order that a folder can carry: "weight" (columns quantized in activation
# order, groups kept contiguous, no g_idx; the bytes are those of a plain group scheme). Its "group" order with
# weight_g_idx was removed and is refused by the loader's validator.
ACTORDERS = ("weight",)


def quantization_config(scheme: IntScheme, ignore: list[str], actorder: str | None = None) -> dict[str, Any]:
    """config.json's quantization_config for one scheme applied to every targeted Linear (`actorder`: how a GPTQ
    run ordered the columns, recorded for the reader; it does not change the bytes)."""
    if actorder is not None and actorder not in ACTORDERS:
        raise ValueError(f"compressed-tensors stores no actorder {actorder!r}")
    strategy = "channel" if scheme.group_size is None else "group"
    group: dict[str, Any] = {
        "targets": ["Linear"],
        "weights": _args(scheme.bits, scheme.group_size, scheme.symmetric, strategy, False, actorder),
        "input_activations": None if scheme.act_bits is None else _args(scheme.act_bits, None, True, "token", True),
        "output_activations": None,
        "format": scheme.storage,
    }
    return {"config_groups": {"group_0": group}, "format": scheme.storage, "global_compression_ratio": None,
            "ignore": ignore, "kv_cache_scheme": None, "quant_method": "compressed-tensors",
            "quantization_status": "compressed", "sparsity_config": {}, "transform_config": {}, "version": CT_VERSION}


# ---- reading a folder back (verify, inspect, tests) ---------------------------------------------------------

def quantized_modules(names: list[str] | dict[str, Any]) -> list[str]:
    """Modules stored quantized in a folder: those with a weight_scale."""
    return [n[: -len(".weight_scale")] for n in names if n.endswith(".weight_scale")]



# ---- the folder reader (io/quantized_folder.py's table) --------------------------------------------------

READ_FORMATS = (PACK_QUANTIZED, INT_QUANTIZED)
SCALE_DTYPES = ("F32", "F16", "BF16")
STRATEGIES = ("group", "channel")


def _matches(targets: list[Any], module: str) -> bool:
    """compressed-tensors' target rule as it applies to a stored module: a class name ("Linear": every module
    stored with a weight_scale is one), a "re:" regular expression, or the module's (suffix) name."""
    for t in targets:
        if not isinstance(t, str):
            continue
        if t == "Linear" or module == t or module.endswith("." + t):
            return True
        if t.startswith("re:") and re.match(t[3:], module):
            return True
    return False


@dataclass(frozen=True)
class _Args:
    """One config group's weight arguments, validated."""

    bits: int
    symmetric: bool
    group_size: int | None          # None: one scale per output row (strategy "channel")
    format: str
    activations: dict[str, Any] | None


def _group_args(name: str, group: Any, qc: dict[str, Any], path: object) -> _Args:
    where = f"quantization_config.config_groups.{name}"
    if not isinstance(group, dict):
        raise InputError(f"{path}: {where} is not an object.", hint="Re-create the folder with the tool that quantized it.")
    w = require(group, "weights", (dict,), where, path)
    wh = f"{where}.weights"
    bits = require(w, "num_bits", (int,), wh, path)
    kind = w.get("type", "int")
    if kind != "int":
        raise UnsupportedError(f"{path}: {wh}.type is {kind!r}; quantcli reads integer compressed-tensors folders.",
                               hint="Floating-point (FP8/FP4) compressed-tensors folders are not supported.")
    if not 1 <= bits <= 8:
        raise InputError(f"{path}: {wh}.num_bits is {bits}; integer weights have 1 to 8 bits.",
                         hint="The folder's config.json is damaged; re-create the folder.")
    symmetric = require(w, "symmetric", (bool,), wh, path)
    strategy = require(w, "strategy", (str,), wh, path)
    if strategy not in STRATEGIES:
        raise UnsupportedError(f"{path}: {wh}.strategy is {strategy!r}; quantcli reads {' and '.join(STRATEGIES)}.",
                               hint="Re-quantize with group or per-channel weight scales.")
    group_size = None
    if strategy == "group":
        group_size = require(w, "group_size", (int,), wh, path)
        if group_size < 1:
            raise InputError(f"{path}: {wh}.group_size is {group_size}.", hint="A group holds at least one weight.")
    fmt = group.get("format") or qc.get("format")
    if fmt not in READ_FORMATS:
        raise UnsupportedError(f"{path}: the compressed-tensors format is {fmt!r}; quantcli reads "
                               f"{' and '.join(READ_FORMATS)}.", hint="Re-quantize to W4A16, W8A16 or W8A8.")
    acts = group.get("input_activations")
    return _Args(bits, symmetric, group_size, fmt, acts if isinstance(acts, dict) else None)


class CompressedTensorsReader(FolderReader):
    """pack-quantized and int-quantized folders: (code - zero point) * scale, the scale and zero point of each
    input column picked by its group (col // group_size, or weight_g_idx[col] when the folder has one), exact in
    float32, then rounded to the scale's stored dtype as transformers' dequantize=True rebuilds the weight."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        path = ckpt.path
        qc = ckpt.config["quantization_config"]
        groups = require(qc, "config_groups", (dict,), "quantization_config", path)
        if not groups:
            raise InputError(f"{path}: quantization_config.config_groups is empty.",
                             hint="Re-create the folder with the tool that quantized it.")
        parsed: list[tuple[list[Any], _Args]] = []
        for n, g in groups.items():
            args = _group_args(n, g, qc, path)   # checks first that the group is an object
            parsed.append((require(g, "targets", (list,), f"quantization_config.config_groups.{n}", path), args))
        self.args: dict[str, _Args] = {}
        self.modules: dict[str, QuantizedModule] = {}
        for module in quantized_modules(list(ckpt.tensors)):
            args = next((a for targets, a in parsed if _matches(targets, module)), None)
            if args is None:
                raise InputError(f"{path}: {module} is stored quantized but no config group targets it.",
                                 hint="The folder's config.json and tensors disagree; re-create the folder.")
            shape, names = self._check(module, args)
            self.args[module] = args
            self.modules[module] = QuantizedModule(module, shape, names, args.bits)
        first = parsed[0][1]
        self.scheme: dict[str, Any] = {
            "quant_method": "compressed-tensors", "format": first.format, "num_bits": first.bits,
            "group_size": first.group_size, "symmetric": first.symmetric,
            "strategy": "channel" if first.group_size is None else "group",
            "activations": None if first.activations is None else
            f"int{first.activations.get('num_bits')} {first.activations.get('strategy')}"
            + (" dynamic" if first.activations.get("dynamic") else " static"),
            "config_groups": len(parsed), "ignore": qc.get("ignore") or [], "version": qc.get("version")}

    def _check(self, module: str, a: _Args) -> tuple[tuple[int, int], tuple[str, ...]]:
        """Every stored tensor of `module` against the config: its dense (out, in) and the tensor names."""

        ckpt, t = self.ckpt, self.ckpt.tensors
        if a.format == PACK_QUANTIZED:
            expect_shape(ckpt, f"{module}.weight_shape", (2,), ("I64", "I32"))
            out, n = (int(v) for v in ckpt.read_raw(f"{module}.weight_shape"))
            if out < 1 or n < 1:
                raise InputError(f"{ckpt.path}: {module}.weight_shape is [{out}, {n}].",
                                 hint="The folder is damaged; re-create it.")
            expect_shape(ckpt, f"{module}.weight_packed", (out, packed_words(n, a.bits)), ("I32",))
            names = [f"{module}.weight_packed", f"{module}.weight_scale", f"{module}.weight_shape"]
        else:
            if f"{module}.weight" not in t or len(t[f"{module}.weight"].shape) != 2:
                raise InputError(f"{ckpt.path}: {module} has a weight_scale but no 2-D int8 weight.",
                                 hint="The folder is incomplete; re-create or re-download it.")
            out, n = t[f"{module}.weight"].shape
            expect_shape(ckpt, f"{module}.weight", (out, n), ("I8",))
            names = [f"{module}.weight", f"{module}.weight_scale"]
        groups = 1 if a.group_size is None else -(-n // a.group_size)
        if f"{module}.weight_g_idx" in t:
            expect_shape(ckpt, f"{module}.weight_g_idx", (n,), ("I32", "I64"))
            names.append(f"{module}.weight_g_idx")
        expect_shape(ckpt, f"{module}.weight_scale", (out, groups), SCALE_DTYPES)
        if f"{module}.weight_zero_point" in t:
            zp_shape = (packed_words(out, a.bits), groups) if a.format == PACK_QUANTIZED else (out, groups)
            expect_shape(ckpt, f"{module}.weight_zero_point", zp_shape, ("I32",) if a.format == PACK_QUANTIZED else ("I8", "I32"))
            names.append(f"{module}.weight_zero_point")
        elif not a.symmetric:
            raise InputError(f"{ckpt.path}: {module} is asymmetric but has no weight_zero_point.",
                             hint="The folder is incomplete; re-create or re-download it.")
        return (int(out), int(n)), tuple(names)

    def input_activations(self, module: str) -> dict[str, Any] | None:
        return self.args[module].activations

    def dense(self, module: str, dtype: str | None = None) -> np.ndarray:
        """As the FolderReader; `dtype` rounds to another dtype than the scale's (e.g. "F32" for a loader that
        widens the scales before multiplying)."""
        a, (out, n), read, t = self.args[module], self.modules[module].shape, self.ckpt.read_raw, self.ckpt.tensors
        if a.format == PACK_QUANTIZED:
            codes = unpack_int32(read(f"{module}.weight_packed"), a.bits, n)
        else:
            codes = read(f"{module}.weight")
        scale = scale_to_f32(read(f"{module}.weight_scale"))
        if f"{module}.weight_g_idx" in t:
            col_group = read(f"{module}.weight_g_idx").astype(np.int64)
            if col_group.size and (col_group.min() < 0 or col_group.max() >= scale.shape[1]):
                raise InputError(f"{self.ckpt.path}: {module}.weight_g_idx names groups outside 0..{scale.shape[1] - 1}.",
                                 hint="The folder is damaged; re-create it.")
        elif a.group_size is None:
            col_group = np.zeros(n, dtype=np.int64)
        else:
            col_group = np.arange(n) // a.group_size
        q = codes.astype(np.float32)
        if f"{module}.weight_zero_point" in t:
            zp = read(f"{module}.weight_zero_point")
            if a.format == PACK_QUANTIZED:   # zero points are packed down the columns: unpack the transpose
                zp = unpack_int32(np.ascontiguousarray(zp.T), a.bits, out).T
            q = q - zp.astype(np.float32)[:, col_group]
        dense = q * scale[:, col_group]
        return round_to(dense, dtype or t[f"{module}.weight_scale"].dtype)[1]


def open_reader(ckpt: Checkpoint) -> CompressedTensorsReader:
    return CompressedTensorsReader(ckpt)
