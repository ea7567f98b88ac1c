"""The compressed-tensors folder layout (the package's version 0.20 as pinned in pyproject): tensor names, dtypes,
shapes and the quantization_config block of config.json. formats/compressed-tensors.md describes the same bytes.

pack-quantized (W4A16, W4A16_ASYM, W8A16), per Linear module M with weight (out, in), g groups per row:
  M.weight_packed      I32  (out, ceil(in * bits / 32))   codes + 2^(bits-1), bit stream per row (quant/int/packing)
  M.weight_scale       the model's float dtype (out, g)
  M.weight_shape       I64  (2,)                          [out, in]
  M.weight_zero_point  I32  (ceil(out * bits / 32), g)    asymmetric only; signed zero points packed down columns
int-quantized (W8A8): M.weight I8 (out, in) and M.weight_scale (out, 1).
A loader rebuilds (code - zero_point) * scale in the scale's dtype.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..quant.int.packing import pack_int32, packed_words
from ..quant.int.rtn import IntCodes
from ..quant.int.scheme import INT_QUANTIZED, IntScheme
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

def folder_scheme(config: dict[str, Any]) -> dict[str, Any] | None:
    """The weights block of a compressed-tensors config (one config group), or None for an unquantized folder."""
    qc = config.get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") != "compressed-tensors":
        return None
    groups = qc.get("config_groups") or {}
    if len(groups) != 1:
        raise ValueError(f"quantization_config has {len(groups)} config groups; quantcli reads folders with one")
    group = next(iter(groups.values()))
    return {**group["weights"], "format": group.get("format") or qc.get("format"),
            "input_activations": group.get("input_activations"), "ignore": qc.get("ignore", [])}


def quantized_modules(names: list[str] | dict[str, Any]) -> list[str]:
    """Modules stored quantized in a folder: those with a weight_scale."""
    return [n[: -len(".weight_scale")] for n in names if n.endswith(".weight_scale")]


def dequantize_module(read: Any, names: dict[str, Any], module: str, weights: dict[str, Any],
                      dense_dtype: str | None = None) -> np.ndarray:
    """A quantized module's dense weight as a loader rebuilds it: (code - zero) * scale rounded to the scale's
    stored dtype (or to dense_dtype, e.g. "F32" for a loader that widens the scales first), as float32.

    `read(name)` returns a stored tensor (BF16 as uint16 bits); `names` is the folder's tensor table."""
    from ..quant.int.packing import unpack_int32
    from ..quant.int.rtn import IntCodes

    bits, group = int(weights["num_bits"]), weights.get("group_size")
    scale = read(f"{module}.weight_scale")
    zp = None
    if f"{module}.weight_packed" in names:
        out, n = (int(v) for v in read(f"{module}.weight_shape"))
        codes = unpack_int32(read(f"{module}.weight_packed"), bits, n)
        if f"{module}.weight_zero_point" in names:
            zp = unpack_int32(np.ascontiguousarray(read(f"{module}.weight_zero_point").T), bits, out).T
    else:
        codes = read(f"{module}.weight")
        if f"{module}.weight_zero_point" in names:
            zp = read(f"{module}.weight_zero_point")
    dtype = dense_dtype or names[f"{module}.weight_scale"].dtype
    return IntCodes(codes, scale, None if zp is None else np.ascontiguousarray(zp)).dequantize(
        dtype, None if weights.get("strategy") == "channel" else group)
