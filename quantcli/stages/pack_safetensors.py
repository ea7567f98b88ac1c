"""The pack stage for safetensors folders: read each source tensor once, encode the planned Linear weights,
stream everything into the folder (sharded past the plan's size limit), then config.json and the tokenizer files.

The folder is built under a hidden name and renamed into place when complete (io/safetensors_writer.atomic_folder).

After a calibrated method (stages/calibrated.py) the tensors it chose come from its spool instead of the source:
a quantized module with codes is written from those codes, one with dense values is RTN-encoded (min-max) from
them, and any other tensor with dense values is written as spooled (already in its stored dtype). Quantized
modules the method never saw (outside the blocks) are RTN-encoded from the source, min-max.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..io import bnb
from ..io import compressed_tensors as ct
from ..io.atomic import atomic_file
from ..io.checkpoint import Checkpoint
from ..io.safetensors_writer import TensorEntry, atomic_folder, write_tensors
from ..quant.backend import Backend, get_backend
from ..quant.int.encode import encode_weight, nf4_kernels
from ..quant.int.nf4 import encode_nf4
from ..quant.algorithms.registry import is_calibrated
from ..safetensors_plan import IntPlan, ModulePlan
from .spool import ChoiceSpool, Spooled

# Files of a model folder that a quantized folder does not carry over: the weights and their index (rewritten),
# config.json (rewritten with quantization_config) and weights in other containers.
SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx")
SKIP_NAMES = ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def scale_dtype(m: ModulePlan) -> str:
    return "F32" if m.dtype == "F32" else m.dtype


def plan_entries(plan: IntPlan) -> list[TensorEntry]:
    scheme = plan.options.scheme
    entries: list[TensorEntry] = []
    for m in plan.modules:
        if m.quantized and plan.options.format == "bnb-nf4":
            entries += bnb.module_entries(m.module, m.shape, m.dtype, plan.options.double_quant)
        elif m.quantized:
            entries += ct.module_entries(m.module, m.shape, scheme, scale_dtype(m))
        else:
            entries.append(TensorEntry(m.source, m.dtype, m.shape))
    return entries


def _chosen_arrays(plan: IntPlan, m: ModulePlan, choice: Spooled, backend: Backend,
                   threads: int) -> list[tuple[str, np.ndarray]]:
    scheme = plan.options.scheme
    if not m.quantized:
        if choice.dense is None:
            raise ValueError(f"{m.source}: codes spooled for a tensor the plan keeps")
        return [(m.source, choice.dense)]
    if plan.options.format != "compressed-tensors":
        raise ValueError(f"{m.source}: calibrated choices cannot be written as {plan.options.format}")
    if choice.codes is not None:
        if choice.g_idx is not None:
            # the driver refuses reordered groups for formats without g_idx; one reaching here is a bug
            raise ValueError(f"{m.source}: compressed-tensors stores no g_idx")
        return ct.module_arrays(m.module, choice.codes, scheme)
    codes, packed = encode_weight(np.asarray(choice.dense, dtype=np.float32), scheme, scale_dtype(m), "minmax",
                                  backend, threads)
    return ct.module_arrays(m.module, codes, scheme, packed)


def _arrays(plan: IntPlan, ckpt: Checkpoint, backend: Backend, threads: int,
            progress: Callable[[ModulePlan], None] | None,
            choices: ChoiceSpool | None = None) -> Iterator[tuple[str, np.ndarray]]:
    scheme, method = plan.options.scheme, plan.options.method
    if is_calibrated(method):
        method = "minmax"   # for the quantized modules the calibrated method did not see
    for m in plan.modules:
        if choices is not None and m.source in choices:
            yield from _chosen_arrays(plan, m, choices.get(m.source), backend, threads)
        elif m.quantized:
            rows = backend.to_float32(ckpt.read_raw(m.source), m.dtype, threads)
            if plan.options.format == "bnb-nf4":
                codes = encode_nf4(rows, plan.options.double_quant, nf4_kernels(backend), threads)
                yield from bnb.module_arrays(m.module, m.shape, m.dtype, codes)
            else:
                codes, packed = encode_weight(rows, scheme, scale_dtype(m), method, backend, threads)
                yield from ct.module_arrays(m.module, codes, scheme, packed)
        else:
            yield m.source, ckpt.read_raw(m.source)
        if progress is not None:
            progress(m)


def fill_int_folder(plan: IntPlan, ckpt: Checkpoint, folder: Path, *, threads: int = 1,
                    progress: Callable[[ModulePlan], None] | None = None, choices: ChoiceSpool | None = None,
                    actorder: str | None = None) -> list[str]:
    """Write the planned tensors, config.json and the tokenizer files into `folder` (a partial folder that the
    caller renames into place); returns the names of the files written. `choices`: a calibrated method's spool;
    `actorder`: the compressed-tensors actorder recorded in the config ("weight" after GPTQ with act-order)."""
    backend = get_backend()
    files = write_tensors(folder, plan_entries(plan), _arrays(plan, ckpt, backend, threads, progress, choices),
                          plan.options.max_shard_bytes, metadata={"format": "pt"})
    config = dict(ckpt.config)
    if plan.options.format == "bnb-nf4":
        config["quantization_config"] = bnb.quantization_config(plan.options.double_quant, list(plan.ignore))
    elif actorder is None:
        config["quantization_config"] = ct.quantization_config(plan.options.scheme, list(plan.ignore))
    else:
        config["quantization_config"] = ct.quantization_config(plan.options.scheme, list(plan.ignore), actorder=actorder)
    with atomic_file(folder / "config.json") as fp:
        fp.write((json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    for f in sorted(ckpt.path.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.suffix not in SKIP_SUFFIXES and f.name not in SKIP_NAMES:
            shutil.copyfile(f, folder / f.name)
            files.append(folder / f.name)
    return [p.name for p in files] + ["config.json"]


def write_int_folder(plan: IntPlan, ckpt: Checkpoint, out: Path, *, threads: int = 1,
                     progress: Callable[[ModulePlan], None] | None = None) -> list[Path]:
    """Write the planned folder at `out`; returns the files written (relative to out)."""
    with atomic_folder(out) as tmp:
        names = fill_int_folder(plan, ckpt, tmp, threads=threads, progress=progress)
    return [out / n for n in names]
