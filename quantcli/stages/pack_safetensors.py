"""The pack stage for safetensors folders: read each source tensor once, encode the planned Linear weights,
stream everything into the folder (sharded past the plan's size limit), then config.json and the tokenizer files.

The folder is built under a hidden name and renamed into place when complete (io/safetensors_writer.atomic_folder).

After a calibrated method (stages/calibrated.py) the tensors it chose come from its spool instead of the source:
a quantized module with codes is written from those codes (with its g_idx where the format stores one), one with
dense values is RTN-encoded (min-max) from them, and any other tensor with dense values is written as spooled
(already in its stored dtype). Quantized modules the method never saw (outside the blocks) are RTN-encoded from
the source, min-max.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..io import bnb, gptq
from ..io import compressed_tensors as ct
from ..io.atomic import atomic_file
from ..io.checkpoint import Checkpoint
from ..io.quantized_folder import METHOD_KEY
from ..io.safetensors_writer import TensorEntry, atomic_folder, write_tensors
from ..quant.algorithms.registry import is_calibrated
from ..quant.backend import Backend, get_backend
from ..quant.int.encode import encode_weight, nf4_kernels
from ..quant.int.nf4 import encode_nf4
from ..io.int_codes import IntCodes
from ..plan.safetensors import PACKED_FORMATS, IntPlan, ModulePlan
from .spool import ChoiceSpool, Spooled

# Files of a model folder that a quantized folder does not carry over: the weights and their index (rewritten),
# config.json (rewritten with quantization_config) and weights in other containers.
SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx")
SKIP_NAMES = ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json", "quantize_config.json")
PACKED_SCALE_DTYPE = "F16"      # GPTQ and AWQ store float16 scales whatever the model's dtype


def scale_dtype(m: ModulePlan, fmt: str = "compressed-tensors") -> str:
    """The dtype the folder stores this module's scales in (what a method must round its scales to)."""
    if fmt in PACKED_FORMATS:
        return PACKED_SCALE_DTYPE
    return "F32" if m.dtype == "F32" else m.dtype


def f16_bias(plan: IntPlan, m: ModulePlan) -> bool:
    """GPTQ and AWQ keep a quantized Linear's bias in float16 (their loaders' buffer dtype, what their own
    writers store), so the folder holds it that way instead of as stored in the source."""
    if plan.options.format not in PACKED_FORMATS or not m.source.endswith(".bias"):
        return False
    return any(q.quantized and q.module == m.module for q in plan.modules)


def plan_entries(plan: IntPlan) -> list[TensorEntry]:
    scheme = plan.options.scheme
    entries: list[TensorEntry] = []
    for m in plan.modules:
        if f16_bias(plan, m):
            entries.append(TensorEntry(m.source, "F16", m.shape))
        elif m.quantized and plan.options.format == "bnb-nf4":
            entries += bnb.module_entries(m.module, m.shape, m.dtype, plan.options.double_quant)
        elif m.quantized and plan.options.format in PACKED_FORMATS:
            entries += PACKED_FORMATS[plan.options.format].module_entries(m.module, m.shape, scheme)
        elif m.quantized:
            entries += ct.module_entries(m.module, m.shape, scheme, scale_dtype(m))
        else:
            entries.append(TensorEntry(m.source, m.dtype, m.shape))
    return entries


def gptq_keep_list(plan: IntPlan) -> list[str] | None:
    """The quantized modules by full name when --ignore left some out (optimum converts every Linear of the
    blocks unless the config lists the ones to keep), else None."""
    return [m.module for m in plan.modules if m.quantized] if plan.options.ignore else None


def _encode(plan: IntPlan, m: ModulePlan, rows: np.ndarray, method: str, backend: Backend,
            threads: int) -> Iterator[tuple[str, np.ndarray]]:
    """RTN-encode one quantized module's float32 rows and yield the format's arrays."""
    scheme, fmt = plan.options.scheme, plan.options.format
    if fmt in PACKED_FORMATS:
        # the codes are packed by the format's module, not the compressed-tensors packer (storage cleared so
        # encode_weight skips it)
        codes, _ = encode_weight(rows, replace(scheme, storage=fmt), PACKED_SCALE_DTYPE, method, backend, threads)
        yield from PACKED_FORMATS[fmt].module_arrays(m.module, codes, scheme, None)
    else:
        codes, packed = encode_weight(rows, scheme, scale_dtype(m), method, backend, threads)
        yield from ct.module_arrays(m.module, codes, scheme, packed)


def _codes_arrays(plan: IntPlan, m: ModulePlan, codes: IntCodes, g_idx: np.ndarray | None) -> list[tuple[str, np.ndarray]]:
    fmt = plan.options.format
    if fmt in PACKED_FORMATS:
        return list(PACKED_FORMATS[fmt].module_arrays(m.module, codes, plan.options.scheme, g_idx))
    if g_idx is not None:
        # the driver refuses reordered groups for formats without g_idx; one reaching here is a bug
        raise ValueError(f"{m.source}: {fmt} stores no g_idx")
    return list(ct.module_arrays(m.module, codes, plan.options.scheme))


def _chosen_arrays(plan: IntPlan, m: ModulePlan, choice: Spooled, backend: Backend,
                   threads: int) -> list[tuple[str, np.ndarray]]:
    if not m.quantized:
        if choice.dense is None:
            raise ValueError(f"{m.source}: codes spooled for a tensor the plan keeps")
        if f16_bias(plan, m):
            return [(m.source, backend.to_float32(choice.dense, m.dtype, threads).astype(np.float16))]
        return [(m.source, choice.dense)]
    if plan.options.format == "bnb-nf4":
        raise ValueError(f"{m.source}: calibrated choices cannot be written as bnb-nf4")
    if choice.codes is not None:
        return _codes_arrays(plan, m, choice.codes, choice.g_idx)
    return list(_encode(plan, m, np.asarray(choice.dense, dtype=np.float32), "minmax", backend, threads))


def rtn_method(plan: IntPlan) -> str:
    """The calibration-free method the plan's quantized modules are encoded with from the source: the plan's
    own, or min-max for the modules a calibrated method did not see."""
    return "minmax" if is_calibrated(plan.options.method) else plan.options.method


def source_arrays(plan: IntPlan, m: ModulePlan, raw: np.ndarray, widened: Callable[[], np.ndarray],
                  backend: Backend, threads: int) -> list[tuple[str, np.ndarray]]:
    """The folder's arrays for one source tensor read as stored (`raw`), without calibration. `widened()` gives
    its float32 copy (called only when needed, so the shared pack pass widens a tensor once for all folders)."""
    if m.quantized:
        rows = widened()
        if plan.options.format == "bnb-nf4":
            codes = encode_nf4(rows, plan.options.double_quant, nf4_kernels(backend), threads)
            return list(bnb.module_arrays(m.module, m.shape, m.dtype, codes))
        return list(_encode(plan, m, rows, rtn_method(plan), backend, threads))
    if f16_bias(plan, m):
        return [(m.source, widened().astype(np.float16))]
    return [(m.source, raw)]


def _arrays(plan: IntPlan, ckpt: Checkpoint, backend: Backend, threads: int,
            progress: Callable[[ModulePlan], None] | None,
            choices: ChoiceSpool | None = None) -> Iterator[tuple[str, np.ndarray]]:
    for m in plan.modules:
        if choices is not None and m.source in choices:
            yield from _chosen_arrays(plan, m, choices.get(m.source), backend, threads)
        else:
            raw = ckpt.read_raw(m.source)
            yield from source_arrays(plan, m, raw, lambda: backend.to_float32(raw, m.dtype, threads),
                                     backend, threads)
        if progress is not None:
            progress(m)


def header_metadata(plan: IntPlan) -> dict[str, str]:
    """The safetensors header's metadata: it names the rounding method, which quantization_config has no field
    for, so inspect and publish's model card can say how the codes were chosen (loaders read only "format")."""
    method = "nf4" if plan.options.format == "bnb-nf4" else plan.options.method
    return {"format": "pt", METHOD_KEY: method}


def folder_quantization_config(plan: IntPlan, actorder: str | None) -> dict[str, Any]:
    """config.json's quantization_config for the plan's format. `actorder`: set after GPTQ with act-order
    (compressed-tensors records it; GPTQ folders then carry desc_act with their g_idx)."""
    fmt, ignore = plan.options.format, list(plan.ignore)
    if fmt == "bnb-nf4":
        return bnb.quantization_config(plan.options.double_quant, ignore)
    if fmt == "gptq":
        return gptq.quantization_config(plan.options.scheme, actorder is not None, gptq_keep_list(plan))
    if fmt in PACKED_FORMATS:
        return PACKED_FORMATS[fmt].quantization_config(plan.options.scheme, ignore)
    if actorder is None:
        return ct.quantization_config(plan.options.scheme, ignore)
    return ct.quantization_config(plan.options.scheme, ignore, actorder=actorder)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    with atomic_file(path) as fp:
        fp.write((json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def fill_int_folder(plan: IntPlan, ckpt: Checkpoint, folder: Path, *, threads: int = 1,
                    progress: Callable[[ModulePlan], None] | None = None, choices: ChoiceSpool | None = None,
                    actorder: str | None = None) -> list[str]:
    """Write the planned tensors, config.json and the tokenizer files into `folder` (a partial folder that the
    caller renames into place); returns the names of the files written. `choices`: a calibrated method's spool;
    `actorder`: set after GPTQ with act-order (see folder_quantization_config)."""
    backend = get_backend()
    files = [p.name for p in write_tensors(folder, plan_entries(plan),
                                           _arrays(plan, ckpt, backend, threads, progress, choices),
                                           plan.options.max_shard_bytes, metadata=header_metadata(plan))]
    return files + finish_int_folder(plan, ckpt, folder, actorder)


def finish_int_folder(plan: IntPlan, ckpt: Checkpoint, folder: Path, actorder: str | None = None) -> list[str]:
    """What a folder holds beside its tensors: config.json with the quantization_config (and GPTQ's
    quantize_config.json), and the source's tokenizer and other side files; returns their names."""
    files: list[str] = []
    config = dict(ckpt.config)
    config["quantization_config"] = folder_quantization_config(plan, actorder)
    _write_json(folder / "config.json", config)
    if plan.options.format == "gptq":   # AutoGPTQ and GPTQModel read it beside config.json
        _write_json(folder / gptq.QUANTIZE_CONFIG, config["quantization_config"])
        files.append(gptq.QUANTIZE_CONFIG)
    for f in sorted(ckpt.path.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.suffix not in SKIP_SUFFIXES and f.name not in SKIP_NAMES:
            shutil.copyfile(f, folder / f.name)
            files.append(f.name)
    return files + ["config.json"]


def write_int_folder(plan: IntPlan, ckpt: Checkpoint, out: Path, *, threads: int = 1,
                     progress: Callable[[ModulePlan], None] | None = None) -> list[Path]:
    """Write the planned folder at `out`; returns the files written (relative to out)."""
    with atomic_folder(out) as tmp:
        names = fill_int_folder(plan, ckpt, tmp, threads=threads, progress=progress)
    return [out / n for n in names]
