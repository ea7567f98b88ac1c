"""The pack stage of --method splitquant: read each source tensor once, split and quantize the planned Linear
weights (quant/algorithms/splitquant.py), and write either

- the dense folder: a plain HF checkpoint whose Linear weights are the dequantized sum of the three branches, in
  the source dtype, with a config.json that has no quantization_config (every loader reads it as an ordinary
  model; it is as large as the source), or
- the branch folder: the three int4 branches and the cluster ids (io/splitquant.py, formats/splitquant.md), which
  only quantcli's engine runs (engine/split_weights.py).

Both are built under a hidden name and renamed into place when complete, and get a model card (README.md) that
says which of the two they are. `write_dense_folder` also takes any per-weight function, so benchmarks write
fake-quantized baselines (RTN dequantized to dense) through the same code.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..io import splitquant as sq
from ..io.atomic import atomic_file
from ..io.checkpoint import Checkpoint
from ..io.safetensors_writer import SINGLE_NAME, TensorEntry, atomic_folder, write_tensors
from ..quant.algorithms.splitquant import SplitLinear, split_linear
from ..quant.backend import Backend, get_backend
from ..io.int_codes import round_to
from ..io.int_scheme import IntScheme
from ..plan.safetensors import IntPlan, ModulePlan
from .pack_safetensors import SKIP_NAMES, SKIP_SUFFIXES, scale_dtype

# weight (rows, n) float32, its bias or None -> the dense float32 weight that replaces it
DenseFn = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


def _bias(ckpt: Checkpoint, m: ModulePlan) -> np.ndarray | None:
    name = f"{m.module}.bias"
    return ckpt.read_f32(name) if name in ckpt.tensors else None


def _stored(values: np.ndarray, dtype: str) -> np.ndarray:
    return round_to(values, dtype)[0]       # F32/F16 as is, BF16 as uint16 bits (round to nearest even)


def splitquant_dense(scheme: IntScheme, dtype: str, backend: Backend, threads: int) -> DenseFn:
    def fn(w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        return split_linear(w, scheme, dtype, backend, bias, threads).dense()
    return fn


def _copy_side_files(ckpt: Checkpoint, tmp: Path, files: list[Path]) -> None:
    for f in sorted(ckpt.path.iterdir()):
        if (f.is_file() and not f.name.startswith(".") and f.suffix not in SKIP_SUFFIXES and f.name not in SKIP_NAMES
                and f.name != "README.md"):
            shutil.copyfile(f, tmp / f.name)
            files.append(tmp / f.name)


def _write_json(path: Path, data: dict) -> None:
    with atomic_file(path) as fp:
        fp.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def _write_text(path: Path, text: str) -> None:
    with atomic_file(path) as fp:
        fp.write(text.encode())


def write_dense_folder(plan: IntPlan, ckpt: Checkpoint, out: Path, dense: DenseFn, *, card: str,
                       progress: Callable[[ModulePlan], None] | None = None) -> list[Path]:
    """A plain HF folder: planned weights replaced by dense(weight, bias) in their source dtype."""
    entries = [TensorEntry(m.source, m.dtype, m.shape) for m in plan.modules]

    def arrays() -> Iterator[tuple[str, np.ndarray]]:
        for m in plan.modules:
            if m.quantized:
                yield m.source, _stored(dense(ckpt.read_f32(m.source), _bias(ckpt, m)), m.dtype)
            else:
                yield m.source, ckpt.read_raw(m.source)
            if progress is not None:
                progress(m)

    with atomic_folder(out) as tmp:
        files = write_tensors(tmp, entries, arrays(), plan.options.max_shard_bytes, metadata={"format": "pt"})
        config = dict(ckpt.config)
        config.pop("quantization_config", None)
        _write_json(tmp / "config.json", config)
        _copy_side_files(ckpt, tmp, files)
        _write_text(tmp / "README.md", card)
        names = [p.name for p in files] + ["config.json", "README.md"]
    return [out / n for n in names]


def write_branch_folder(plan: IntPlan, ckpt: Checkpoint, out: Path, *, threads: int = 1, card: str,
                        progress: Callable[[ModulePlan], None] | None = None) -> list[Path]:
    """The three-branch layout of formats/splitquant.md in one splitquant.safetensors."""
    backend = get_backend()
    scheme = plan.options.scheme
    quantized = [m for m in plan.modules if m.quantized]
    dtypes = {scale_dtype(m) for m in quantized}
    sdtype = "F32" if len(dtypes) > 1 else dtypes.pop()      # one scale dtype per folder (the config says it)
    entries: list[TensorEntry] = []
    for m in plan.modules:
        if m.quantized:
            entries += sq.module_entries(m.module, (m.shape[0], m.shape[1]), scheme, sdtype)
        else:
            entries.append(TensorEntry(m.source, m.dtype, m.shape))

    def arrays() -> Iterator[tuple[str, np.ndarray]]:
        for m in plan.modules:
            if m.quantized:
                split: SplitLinear = split_linear(ckpt.read_f32(m.source), scheme, sdtype, backend, _bias(ckpt, m), threads)
                yield from sq.module_arrays(m.module, split.ids, split.branches, scheme)
            else:
                yield m.source, ckpt.read_raw(m.source)
            if progress is not None:
                progress(m)

    with atomic_folder(out) as tmp:
        write_tensors(tmp, entries, arrays(), None, metadata={"format": "pt"})
        (tmp / SINGLE_NAME).rename(tmp / sq.FILE_NAME)
        files = [tmp / sq.FILE_NAME]
        config = dict(ckpt.config)
        config.pop("quantization_config", None)
        config[sq.SPLIT_KEY] = sq.config_block(scheme, sdtype, [m.module for m in quantized])
        _write_json(tmp / "config.json", config)
        _copy_side_files(ckpt, tmp, files)
        _write_text(tmp / "README.md", card)
        names = [p.name for p in files] + ["config.json", "README.md"]
    return [out / n for n in names]
