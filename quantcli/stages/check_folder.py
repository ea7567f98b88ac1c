"""Reopen a quantized safetensors folder and check it: structure (config, every planned tensor present with its
shape) and, given the source, each quantized weight's error against the original (RMSE, max error, SNR).

This is what `convert --verify` runs on folders; the `verify` command can call the same function.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..io import awq, bnb, gptq
from ..io import compressed_tensors as ct
from ..io.checkpoint import Checkpoint


@dataclass(frozen=True)
class WeightError:
    name: str
    rmse: float
    max_abs: float
    snr_db: float


@dataclass
class FolderReport:
    path: Path
    scheme: dict
    quantized: int
    problems: list[str] = field(default_factory=list)
    weights: list[WeightError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        worst = min((w.snr_db for w in self.weights), default=None)
        mean = float(np.mean([w.snr_db for w in self.weights])) if self.weights else None
        return {"path": str(self.path), "ok": self.ok, "scheme": self.scheme, "quantized_modules": self.quantized,
                "problems": self.problems, "min_snr_db": worst, "mean_snr_db": mean,
                "weights": [asdict(w) for w in self.weights]}


def snr(ref: np.ndarray, got: np.ndarray) -> WeightError:
    diff = (got.astype(np.float64) - ref.astype(np.float64))
    noise = float(np.mean(diff * diff))
    signal = float(np.mean(ref.astype(np.float64) ** 2))
    db = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    return WeightError("", math.sqrt(noise), float(np.max(np.abs(diff))) if diff.size else 0.0, db)


def dense_weights(ckpt: Checkpoint) -> tuple[dict, list[str], Callable[[str], np.ndarray]]:
    """(scheme summary, quantized module names, module -> dense float32 weight) of a quantized folder."""
    qc = ckpt.config.get("quantization_config") or {}
    if qc.get("quant_method") == "bitsandbytes":
        modules = [n[: -len("." + bnb.STATE_KEY)] for n in ckpt.tensors if n.endswith("." + bnb.STATE_KEY)]

        def rebuild_nf4(module: str) -> np.ndarray:
            codes, shape, _ = bnb.read_module(ckpt.read_raw, ckpt.tensors, module)
            return codes.dequantize(shape)

        return ({"format": "bnb-nf4", "double_quant": bool(qc.get("bnb_4bit_use_double_quant"))}, modules, rebuild_nf4)
    if qc.get("quant_method") == "gptq":
        bits = int(qc["bits"])
        summary = {"format": "gptq", "bits": bits, "group_size": qc.get("group_size"), "sym": qc.get("sym"),
                   "desc_act": qc.get("desc_act"), "checkpoint_format": qc.get("checkpoint_format")}
        return (summary, gptq.quantized_modules(list(ckpt.tensors)),
                lambda module: gptq.dequantize_module(ckpt.read_raw, module, bits))
    if qc.get("quant_method") == "awq":
        group = int(qc["group_size"])
        summary = {"format": "awq", "bits": qc.get("bits"), "group_size": group, "version": qc.get("version")}
        return (summary, awq.quantized_modules(list(ckpt.tensors)),
                lambda module: awq.dequantize_module(ckpt.read_raw, module, group))
    weights = ct.folder_scheme(ckpt.config)
    if weights is None:
        raise ValueError("config.json has no compressed-tensors, bitsandbytes, gptq or awq quantization_config")
    summary = {k: weights[k] for k in ("num_bits", "group_size", "symmetric", "strategy", "format")}
    return (summary, ct.quantized_modules(list(ckpt.tensors)),
            lambda module: ct.dequantize_module(ckpt.read_raw, ckpt.tensors, module, weights))


def check_folder(folder: Path, source: Path | None = None) -> FolderReport:
    ckpt = Checkpoint.open(folder)
    try:
        summary, modules, rebuild = dense_weights(ckpt)
    except (ValueError, KeyError) as exc:
        return FolderReport(folder, {}, 0, [str(exc)])
    report = FolderReport(folder, summary, len(modules))
    if not modules:
        report.problems.append("no quantized module in the folder")
    src = Checkpoint.open(source) if source is not None else None
    for module in modules:
        try:
            dense = rebuild(module)
        except (KeyError, ValueError) as exc:
            report.problems.append(f"{module}: cannot rebuild the weight ({exc})")
            continue
        if src is None:
            continue
        name = f"{module}.weight"
        if name not in src.tensors:
            report.problems.append(f"{name} is not in the source")
            continue
        ref = src.read_f32(name)
        if ref.shape != dense.shape:
            report.problems.append(f"{name}: shape {dense.shape} but the source has {ref.shape}")
            continue
        e = snr(ref, dense)
        report.weights.append(WeightError(name, e.rmse, e.max_abs, e.snr_db))
    if src is not None:
        for name in src.tensors:
            stored = name in ckpt.tensors or name.rsplit(".", 1)[0] in modules
            if not stored:
                report.problems.append(f"{name} from the source is missing")
    return report
