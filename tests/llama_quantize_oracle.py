"""llama.cpp's whole-model quantizer (llama_model_quantize via llama-cpp-python): the oracle for per-tensor types.

It is what the llama-quantize binary runs, with the same switches:

    >>> run = QuantizeRun(LlamaFileType.MOSTLY_Q4_K_M, output_tensor_type=GGMLQuantizationType.Q8_0)
    >>> llama_quantize(Path("in-f32.gguf"), Path("out.gguf"), run)      # doctest: +SKIP
    0
    >>> tests.gguf_files.tensor_types(Path("out.gguf"))["output.weight"].name   # doctest: +SKIP
    'Q8_0'

Import this module only after `pytest.importorskip("llama_cpp")`.
"""
from __future__ import annotations

import ctypes
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np
from gguf import GGMLQuantizationType, Keys, LlamaFileType

from tests.gguf_files import scalar_metadata, tensor_shapes

# llama.cpp's "not set" value for a ggml type field (GGML_TYPE_COUNT at commit 0c1e570)
GGML_TYPE_UNSET = 43
ORACLE_THREADS = 2


@dataclass(frozen=True)
class QuantizeRun:
    """One llama_model_quantize call: the file type and llama-quantize's switches."""

    ftype: LlamaFileType
    output_tensor_type: GGMLQuantizationType | None = None
    token_embedding_type: GGMLQuantizationType | None = None
    pure: bool = False
    tensor_types: tuple[tuple[str, GGMLQuantizationType], ...] = ()
    # tensor name -> importance weights (ne[0] * ne[2] float32 values); None runs without an imatrix
    imatrix: Mapping[str, np.ndarray] | None = field(default=None, compare=False)


def llama_quantize(src: Path, dst: Path, run: QuantizeRun) -> int:
    """Quantize src into dst as llama-quantize would; returns llama.cpp's status (0 = success)."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = ORACLE_THREADS
    params.ftype = int(run.ftype)
    params.output_tensor_type = _type_or_unset(run.output_tensor_type)
    params.token_embedding_type = _type_or_unset(run.token_embedding_type)
    params.pure = run.pure
    keep_alive: list[object] = []
    if run.tensor_types:
        overrides = (llama_cpp.llama_model_tensor_override * (len(run.tensor_types) + 1))()
        for slot, (pattern, qtype) in zip(overrides, run.tensor_types):
            slot.pattern = pattern.encode()
            slot.type = int(qtype)
        overrides[len(run.tensor_types)].pattern = None      # terminator
        overrides[len(run.tensor_types)].type = GGML_TYPE_UNSET
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep_alive.append(overrides)
    if run.imatrix is not None:
        entries = (llama_cpp.llama_model_imatrix_data * (len(run.imatrix) + 1))()
        for slot, (name, values) in zip(entries, run.imatrix.items()):
            values = np.ascontiguousarray(values, dtype=np.float32)
            keep_alive.append(values)
            slot.name = name.encode()
            slot.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            slot.size = values.size
        entries[len(run.imatrix)].name = None                # terminator
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep_alive.append(entries)
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    del keep_alive
    return int(status)


def _type_or_unset(qtype: GGMLQuantizationType | None) -> int:
    return GGML_TYPE_UNSET if qtype is None else int(qtype)


def gguf_file_type(path: Path) -> int:
    return int(scalar_metadata(path)[Keys.General.FILE_TYPE])


def random_imatrix(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Positive importance weights for every matrix of a GGUF (ne[0] values per expert), as an imatrix file holds."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in tensor_shapes(path).items():
        if len(shape) >= 2:
            n_matrices = shape[2] if len(shape) > 2 else 1
            weights[name] = rng.uniform(0.1, 2.0, size=shape[0] * n_matrices).astype(np.float32)
    return weights
