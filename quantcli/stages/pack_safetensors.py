"""The pack stage for safetensors folders: read each source tensor once, encode the planned Linear weights,
stream everything into the folder (sharded past the plan's size limit), then config.json and the tokenizer files.

The folder is built under a hidden name and renamed into place when complete (io/safetensors_writer.atomic_folder).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..io import awq, bnb, gptq
from ..io import compressed_tensors as ct
from ..io.atomic import atomic_file
from ..io.checkpoint import Checkpoint
from ..io.quantized_folder import METHOD_KEY
from ..io.safetensors_writer import TensorEntry, atomic_folder, write_tensors
from ..quant.backend import Backend, get_backend
from ..quant.int.encode import encode_weight, nf4_kernels
from ..quant.int.nf4 import encode_nf4
from ..safetensors_plan import PACKED_FORMATS, IntPlan, ModulePlan

# Files of a model folder that a quantized folder does not carry over: the weights and their index (rewritten),
# config.json (rewritten with quantization_config) and weights in other containers.
SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx")
SKIP_NAMES = ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json", "quantize_config.json")


def scale_dtype(m: ModulePlan) -> str:
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


def _arrays(plan: IntPlan, ckpt: Checkpoint, backend: Backend, threads: int,
            progress: Callable[[ModulePlan], None] | None) -> Iterator[tuple[str, np.ndarray]]:
    scheme, method = plan.options.scheme, plan.options.method
    for m in plan.modules:
        if m.quantized:
            rows = backend.to_float32(ckpt.read_raw(m.source), m.dtype, threads)
            if plan.options.format == "bnb-nf4":
                codes = encode_nf4(rows, plan.options.double_quant, nf4_kernels(backend), threads)
                yield from bnb.module_arrays(m.module, m.shape, m.dtype, codes)
            elif plan.options.format in PACKED_FORMATS:
                # float16 scales in both formats; the codes are packed by the format's module, not the
                # compressed-tensors packer (storage cleared so encode_weight skips it).
                codes, _ = encode_weight(rows, replace(scheme, storage="gptq"), "F16", method, backend, threads)
                yield from PACKED_FORMATS[plan.options.format].module_arrays(m.module, codes, scheme, None)
            else:
                codes, packed = encode_weight(rows, scheme, scale_dtype(m), method, backend, threads)
                yield from ct.module_arrays(m.module, codes, scheme, packed)
        elif f16_bias(plan, m):
            yield m.source, backend.to_float32(ckpt.read_raw(m.source), m.dtype, threads).astype(np.float16)
        else:
            yield m.source, ckpt.read_raw(m.source)
        if progress is not None:
            progress(m)


def header_metadata(plan: IntPlan) -> dict[str, str]:
    """The safetensors header's metadata: it names the rounding method, which quantization_config has no field
    for, so inspect and publish's model card can say how the codes were chosen (loaders read only "format")."""
    method = "nf4" if plan.options.format == "bnb-nf4" else plan.options.method
    return {"format": "pt", METHOD_KEY: method}


def write_int_folder(plan: IntPlan, ckpt: Checkpoint, out: Path, *, threads: int = 1,
                     progress: Callable[[ModulePlan], None] | None = None) -> list[Path]:
    """Write the planned folder at `out`; returns the files written (relative to out)."""
    backend = get_backend()
    with atomic_folder(out) as tmp:
        files = write_tensors(tmp, plan_entries(plan), _arrays(plan, ckpt, backend, threads, progress),
                              plan.options.max_shard_bytes, metadata=header_metadata(plan))
        config = dict(ckpt.config)
        if plan.options.format == "bnb-nf4":
            config["quantization_config"] = bnb.quantization_config(plan.options.double_quant, list(plan.ignore))
        elif plan.options.format == "gptq":
            # In-order groups until a calibrated method hands over g_idx (desc_act then).
            config["quantization_config"] = gptq.quantization_config(plan.options.scheme, False, gptq_keep_list(plan))
            with atomic_file(tmp / gptq.QUANTIZE_CONFIG) as fp:
                fp.write((json.dumps(config["quantization_config"], indent=2, sort_keys=True) + "\n").encode())
        elif plan.options.format == "awq":
            config["quantization_config"] = awq.quantization_config(plan.options.scheme, list(plan.ignore))
        else:
            config["quantization_config"] = ct.quantization_config(plan.options.scheme, list(plan.ignore))
        with atomic_file(tmp / "config.json") as fp:
            fp.write((json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
        for f in sorted(ckpt.path.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.suffix not in SKIP_SUFFIXES and f.name not in SKIP_NAMES:
                shutil.copyfile(f, tmp / f.name)
                files.append(tmp / f.name)
        names = [p.name for p in files] + ["config.json"] + ([gptq.QUANTIZE_CONFIG] if plan.options.format == "gptq" else [])
    return [out / n for n in names]
