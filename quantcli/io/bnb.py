"""The bitsandbytes 4-bit folder layout (bitsandbytes 0.50 as pinned): per quantized Linear module M with a
weight of shape (out, in) and B = ceil(out * in / 64) blocks:

  M.weight                                   U8   (ceil(out*in/2), 1)  two NF4 indices per byte, high nibble first
  M.weight.absmax                            F32 (B,), or U8 (B,) codes when double quantized
  M.weight.quant_map                         F32 (16,)  the NF4 levels
  M.weight.nested_absmax                     F32 (ceil(B/256),)             double quantization only
  M.weight.nested_quant_map                  F32 (256,) the 8-bit dynamic code   double quantization only
  M.weight.quant_state.bitsandbytes__nf4     U8   UTF-8 JSON: quant_type, blocksize, dtype, shape, and with double
                                                  quantization nested_blocksize, nested_dtype, nested_offset
config.json gets quantization_config with quant_method "bitsandbytes" and load_in_4bit.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..errors import InputError, UnsupportedError
from .checkpoint import Checkpoint
from .int_codes import round_to
from .nf4_codes import NESTED_BLOCK, NF4_BLOCK, NF4_LEVELS, NF4Codes, dynamic_code
from .quantized_folder import FolderReader, QuantizedModule, expect_shape, require
from .safetensors_writer import TensorEntry

TORCH_DTYPE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
STATE_KEY = "weight.quant_state.bitsandbytes__nf4"


OFFSET_WIDTH = 32   # room for any float's repr ("-1.2345678901234567e-308" is 24 characters)


def _state_json(shape: tuple[int, ...], dtype: str, double_quant: bool, offset: float) -> bytes:
    """The quant_state JSON, padded with spaces to a length that does not depend on the offset's digits, so
    the header can be planned before the weight is encoded (JSON allows trailing whitespace)."""
    state: dict[str, Any] = {"quant_type": "nf4", "blocksize": NF4_BLOCK, "dtype": TORCH_DTYPE[dtype], "shape": list(shape)}
    if not double_quant:
        return json.dumps(state).encode()
    state.update({"nested_blocksize": NESTED_BLOCK, "nested_dtype": "float32", "nested_offset": 0.0})
    width = len(json.dumps(state)) - len("0.0") + OFFSET_WIDTH
    state["nested_offset"] = offset
    return json.dumps(state).ljust(width).encode()


def module_entries(module: str, shape: tuple[int, ...], dtype: str, double_quant: bool) -> list[TensorEntry]:
    """The tensors one quantized Linear becomes, in the order module_arrays yields them."""
    n = int(np.prod(shape))
    blocks = -(-n // NF4_BLOCK)
    entries = [TensorEntry(f"{module}.weight", "U8", (-(-n // 2), 1)),
               TensorEntry(f"{module}.weight.absmax", "U8" if double_quant else "F32", (blocks,)),
               TensorEntry(f"{module}.weight.quant_map", "F32", (16,))]
    if double_quant:
        entries += [TensorEntry(f"{module}.weight.nested_absmax", "F32", (-(-blocks // NESTED_BLOCK),)),
                    TensorEntry(f"{module}.weight.nested_quant_map", "F32", (256,))]
    entries.append(TensorEntry(f"{module}.{STATE_KEY}", "U8", (len(_state_json(shape, dtype, double_quant, 0.0)),)))
    return entries


def module_arrays(module: str, shape: tuple[int, ...], dtype: str, codes: NF4Codes) -> list[tuple[str, np.ndarray]]:
    double = codes.nested_absmax is not None
    arrays = [(f"{module}.weight", codes.packed), (f"{module}.weight.absmax", codes.absmax),
              (f"{module}.weight.quant_map", NF4_LEVELS.copy())]
    if double:
        arrays += [(f"{module}.weight.nested_absmax", codes.nested_absmax.astype(np.float32)),
                   (f"{module}.weight.nested_quant_map", dynamic_code().copy())]
    state = _state_json(shape, dtype, double, codes.offset or 0.0)
    arrays.append((f"{module}.{STATE_KEY}", np.frombuffer(state, dtype=np.uint8)))
    return arrays


def quantization_config(double_quant: bool, ignore: list[str]) -> dict[str, Any]:
    # compute in float32 (BitsAndBytesConfig's default): weights are rebuilt in the model dtype, then the matmul
    # runs in float32, which on a CPU without bf16 units is also the faster choice.
    return {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
            "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": double_quant,
            "bnb_4bit_compute_dtype": "float32", "bnb_4bit_quant_storage": "uint8",
            "llm_int8_skip_modules": ignore, "llm_int8_threshold": 6.0, "llm_int8_has_fp16_weight": False,
            "llm_int8_enable_fp32_cpu_offload": False}


def read_module(read: Any, names: dict[str, Any], module: str) -> tuple[NF4Codes, tuple[int, ...], str]:
    """Read a quantized module back: (codes, weight shape, model dtype name)."""
    state = json.loads(bytes(read(f"{module}.{STATE_KEY}")).decode())
    nested = f"{module}.weight.nested_absmax" in names
    codes = NF4Codes(read(f"{module}.weight"), read(f"{module}.weight.absmax"),
                     read(f"{module}.weight.nested_absmax") if nested else None,
                     state.get("nested_offset") if nested else None)
    return codes, tuple(state["shape"]), state["dtype"]


# ---- the folder reader (io/quantized_folder.py's table) --------------------------------------------------

DTYPE_KEY = {v: k for k, v in TORCH_DTYPE.items()}     # the quant_state's dtype name -> ours


class NF4Reader(FolderReader):
    """bitsandbytes 4-bit NF4 folders: each block's absmax (itself decoded through the stored 8-bit code, per
    nested block, plus the offset, when double quantized) times the stored NF4 level of each index, in float32,
    then rounded to the model dtype of the quant_state, as bitsandbytes' dequantize_4bit returns it."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt, path = ckpt, ckpt.path
        qc = ckpt.config["quantization_config"]
        if not qc.get("load_in_4bit"):
            raise UnsupportedError(f"{path}: a bitsandbytes folder without load_in_4bit (8-bit LLM.int8).",
                                   hint="quantcli reads bitsandbytes 4-bit NF4 folders.")
        self.states: dict[str, dict[str, Any]] = {}
        self.modules: dict[str, QuantizedModule] = {}
        suffix = "." + STATE_KEY
        for name in ckpt.tensors:
            if not name.endswith(suffix):
                continue
            module = name[: -len(suffix)]
            where = f"{name} (quant_state)"
            try:
                state = json.loads(bytes(ckpt.read_raw(name)).decode())
            except (UnicodeDecodeError, ValueError):
                raise InputError(f"{path}: {where} is not UTF-8 JSON.", hint="The folder is damaged; re-create it.") from None
            if not isinstance(state, dict):
                raise InputError(f"{path}: {where} is not a JSON object.", hint="The folder is damaged; re-create it.")
            if state.get("quant_type") != "nf4":
                raise UnsupportedError(f"{path}: {where} has quant_type {state.get('quant_type')!r}.",
                                       hint="quantcli reads NF4 (bnb_4bit_quant_type nf4) folders.")
            shape = require(state, "shape", (list,), where, path)
            block = require(state, "blocksize", (int,), where, path)
            dtype = require(state, "dtype", (str,), where, path)
            if len(shape) != 2 or not all(isinstance(d, int) and d > 0 for d in shape) or block < 1 or dtype not in DTYPE_KEY:
                raise InputError(f"{path}: {where} has shape {shape}, blocksize {block}, dtype {dtype!r}.",
                                 hint="The folder is damaged; re-create it.")
            n = shape[0] * shape[1]
            blocks = -(-n // block)
            names = self._check(module, state, n, blocks, where)
            self.states[module] = state
            self.modules[module] = QuantizedModule(module, (shape[0], shape[1]), names, 4)
        double = bool(qc.get("bnb_4bit_use_double_quant"))
        first = next(iter(self.states.values()), {})
        self.scheme: dict[str, Any] = {
            "quant_method": "bitsandbytes", "format": "nf4", "num_bits": 4, "group_size": first.get("blocksize"),
            "symmetric": True, "double_quant": double, "compute_dtype": qc.get("bnb_4bit_compute_dtype"),
            "ignore": qc.get("llm_int8_skip_modules") or []}

    def _check(self, module: str, state: dict[str, Any], n: int, blocks: int, where: str) -> tuple[str, ...]:
        ckpt = self.ckpt
        expect_shape(ckpt, f"{module}.weight", (-(-n // 2), 1), ("U8",))
        expect_shape(ckpt, f"{module}.weight.quant_map", (16,), ("F32",))
        names = [f"{module}.weight", f"{module}.weight.absmax", f"{module}.weight.quant_map"]
        if f"{module}.weight.nested_absmax" in ckpt.tensors:
            nested = require(state, "nested_blocksize", (int,), where, ckpt.path)
            require(state, "nested_offset", (int, float), where, ckpt.path)
            if nested < 1:
                raise InputError(f"{ckpt.path}: {where} has nested_blocksize {nested}.", hint="The folder is damaged; re-create it.")
            expect_shape(ckpt, f"{module}.weight.absmax", (blocks,), ("U8",))
            expect_shape(ckpt, f"{module}.weight.nested_absmax", (-(-blocks // nested),), ("F32",))
            expect_shape(ckpt, f"{module}.weight.nested_quant_map", (256,), ("F32",))
            names += [f"{module}.weight.nested_absmax", f"{module}.weight.nested_quant_map"]
        else:
            expect_shape(ckpt, f"{module}.weight.absmax", (blocks,), ("F32",))
        return tuple(names) + (f"{module}.{STATE_KEY}",)

    def dense(self, module: str) -> np.ndarray:
        read, state, shape = self.ckpt.read_raw, self.states[module], self.modules[module].shape
        n, block = shape[0] * shape[1], int(state["blocksize"])
        absmax = read(f"{module}.weight.absmax")
        if f"{module}.weight.nested_absmax" in self.ckpt.tensors:
            nested = np.repeat(read(f"{module}.weight.nested_absmax"), int(state["nested_blocksize"]))[: absmax.shape[0]]
            absmax = read(f"{module}.weight.nested_quant_map")[absmax] * nested + np.float32(state["nested_offset"])
        packed = read(f"{module}.weight")[:, 0]
        idx = np.empty(packed.shape[0] * 2, dtype=np.uint8)
        idx[0::2], idx[1::2] = packed >> 4, packed & 0xF
        values = read(f"{module}.weight.quant_map")[idx[:n]] * np.repeat(absmax, block)[:n]
        return round_to(values.reshape(shape), DTYPE_KEY[state["dtype"]])[1]


def open_reader(ckpt: Checkpoint) -> NF4Reader:
    return NF4Reader(ckpt)
