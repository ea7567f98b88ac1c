"""Reopen a quantized safetensors folder and check it: structure (config, every planned tensor present with its
shape) and, given the source, each quantized weight's error against the original (RMSE, max error, SNR).

This is what `convert --verify` runs on folders; the `verify` command can call the same function.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.checkpoint import Checkpoint
from ..io.quantized_folder import open_folder_reader


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

    def apply_thresholds(self, min_snr_db: float | None = None, max_rmse: float | None = None) -> None:
        """Record every compared weight whose SNR is below min_snr_db or whose RMSE is above max_rmse."""
        for w in self.weights:
            if min_snr_db is not None and not w.snr_db >= min_snr_db:
                self.problems.append(f"{w.name}: SNR {w.snr_db:.1f} dB is below {min_snr_db:g} dB")
            if max_rmse is not None and not w.rmse <= max_rmse:
                self.problems.append(f"{w.name}: RMSE {w.rmse:.4g} is above {max_rmse:g}")

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


def check_folder(folder: Path, source: Path | None = None) -> FolderReport:
    """Open the folder through its format's reader (a config or tensor that does not fit the format is bad input,
    exit 2) and, with `source`, compare every quantized weight the reader rebuilds with the source's."""
    ckpt = Checkpoint.open(folder)
    reader = open_folder_reader(ckpt)
    if reader is None:
        raise InputError(f"{folder} has no quantization_config in its config.json: it is not a quantized folder.",
                         hint="Give a folder written by quantcli convert --format compressed-tensors|bnb-nf4|gptq|awq.")
    summary = {k: v for k, v in reader.scheme.items() if k != "ignore"}
    modules = list(reader.modules)
    rebuild = reader.dense
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
