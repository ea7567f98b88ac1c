"""Reading quantized safetensors folders back: one table from config.json's quantization_config.quant_method to
the io module that decodes that format, and the reader interface every such module implements.

A format module (io/compressed_tensors.py, io/bnb.py, ...) provides

    def open_reader(ckpt: Checkpoint) -> FolderReader

which validates the folder's quantization_config and the stored tensors of every quantized module against each
other (raising InputError naming the field or tensor, exit 2) and returns a reader whose `dense(module)` rebuilds
a module's float32 weight as that format's loader does. Adding a format is one row of READERS.

    reader = open_folder_reader(Checkpoint.open(Path("smol-W4A16")))
    reader.scheme["format"], len(reader.modules)
    # -> ('pack-quantized', 210)
    reader.dense("model.layers.0.self_attn.q_proj").shape
    # -> (576, 576)
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, UnsupportedError
from .checkpoint import Checkpoint

# quant_method -> the module (under quantcli.io) whose open_reader decodes it.
READERS: dict[str, str] = {
    "compressed-tensors": "compressed_tensors",
    "bitsandbytes": "bnb",
    "gptq": "gptq",
    "awq": "awq",
}


@dataclass(frozen=True)
class QuantizedModule:
    """One Linear stored quantized: its dense shape (out, in), the stored tensors it is made of, code bits."""

    name: str
    shape: tuple[int, int]
    tensors: tuple[str, ...]
    bits: int

    def stored_bytes(self, ckpt: Checkpoint) -> int:
        return sum(ckpt.tensors[n].nbytes for n in self.tensors)

    def bits_per_weight(self, ckpt: Checkpoint) -> float:
        return 8.0 * self.stored_bytes(ckpt) / (self.shape[0] * self.shape[1])


class FolderReader(ABC):
    """A quantized folder opened for reading: the scheme summary and, per quantized module, its dense weight."""

    ckpt: Checkpoint
    # What inspect and the model card show: at least "quant_method", "format", "num_bits", "group_size" (None:
    # per channel), "symmetric"; a format adds its own keys (double_quant, activations, ...).
    scheme: dict[str, Any]
    modules: dict[str, QuantizedModule]

    @abstractmethod
    def dense(self, module: str) -> np.ndarray:
        """The module's weight (out, in) float32 as the format's loader rebuilds it."""

    def input_activations(self, module: str) -> dict[str, Any] | None:
        """The quantization_config block that says how the loader rounds this module's input at run time
        (compressed-tensors' input_activations), None when the input stays in the model's float dtype."""
        return None

    def stored_names(self) -> set[str]:
        """Every tensor of the folder that belongs to a quantized module."""
        return {n for m in self.modules.values() for n in m.tensors}


def quantization_config(config: dict[str, Any]) -> dict[str, Any] | None:
    qc = config.get("quantization_config")
    if qc is None:
        return None
    if not isinstance(qc, dict):
        raise InputError(f"config.json's quantization_config is a {type(qc).__name__}, not an object.",
                         hint="Re-create the folder with the tool that quantized it.")
    return qc


def open_folder_reader(ckpt: Checkpoint) -> FolderReader | None:
    """The reader of a quantized folder, or None when config.json has no quantization_config."""
    qc = quantization_config(ckpt.config)
    if qc is None:
        return None
    method = qc.get("quant_method")
    if method not in READERS:
        known = ", ".join(sorted(READERS))
        raise UnsupportedError(f"{ckpt.path}: quantization_config.quant_method is {method!r}, which quantcli does "
                               f"not read.", hint=f"quantcli reads folders quantized as {known}.")
    module = importlib.import_module(f"{__package__}.{READERS[method]}")
    return module.open_reader(ckpt)


def require(block: dict[str, Any], key: str, kinds: tuple[type, ...], where: str, path: object) -> Any:
    """block[key], required and of one of the given JSON kinds; a missing or mistyped field is bad input."""
    if key not in block:
        raise InputError(f"{path}: {where} has no {key!r}.",
                         hint="The folder's config.json is incomplete; re-create it with the tool that quantized it.")
    value = block[key]
    # JSON true/false are Python bools, which are also ints: a bool only passes where bool is asked for
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise InputError(f"{path}: {where}.{key} is {value!r}, not a {' or '.join(k.__name__ for k in kinds)}.",
                         hint="The folder's config.json is damaged; re-create it with the tool that quantized it.")
    return value


def expect_shape(ckpt: Checkpoint, name: str, shape: tuple[int, ...], dtypes: tuple[str, ...]) -> None:
    """A stored tensor must exist with this shape and one of these dtypes."""
    info = ckpt.tensors.get(name)
    if info is None:
        raise InputError(f"{ckpt.path}: tensor {name!r} is missing.",
                         hint="The folder is incomplete; re-create or re-download it.")
    if tuple(info.shape) != tuple(shape) or info.dtype not in dtypes:
        raise InputError(f"{ckpt.path}: tensor {name!r} is {info.dtype} {list(info.shape)}, the quantization_config "
                         f"implies {'/'.join(dtypes)} {list(shape)}.",
                         hint="The folder's tensors and its config.json disagree; re-create the folder.")


METHOD_KEY = "quantcli.method"     # safetensors header metadata quantcli's writers add (stages/pack_safetensors.py)


def folder_method(ckpt: Checkpoint) -> str | None:
    """How the codes were chosen, when a quantcli writer recorded it in the safetensors header (minmax, mse, nf4,
    ...); None for folders written by other tools."""
    from .safetensors import SafetensorsFile

    first = next(iter(ckpt.tensors.values()), None)
    if first is None:
        return None
    return SafetensorsFile.open(first.path).metadata.get(METHOD_KEY)
