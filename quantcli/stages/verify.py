"""The verify stage: reopen a written GGUF and check it.

The file is read back by the layout scan (io/gguf_layout.py), which shares no code with the writer, and the
values are decoded by gguf-py's dequantizers, an independent implementation of every block format. (gguf-py's
GGUFReader would also do, but it decodes each vocabulary entry into numpy objects: seconds per file on a
50k-token vocabulary, tens of seconds on 150k.)

Structure: required metadata, every tensor's type, shape, byte size, alignment and bounds. With a source
checkpoint: dequantize each tensor and compare it with the source values after the same transform, reporting
RMSE, max abs error and SNR per tensor, against the recipe's thresholds.
"""
from __future__ import annotations

import math
import mmap
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from gguf.quants import dequantize

from ..errors import InputError, VerifyError
from ..io.checkpoint import Checkpoint
from ..io.gguf_layout import GGUFLayout, TensorSpan, read_layout
from ..io.safetensors import to_float32
from ..models.base import adapter_for

# Per-type SNR floors (dB) used when a recipe sets none: well below what each type gives on real weights,
# so a failure means a broken file, not an unlucky tensor.
DEFAULT_MIN_SNR_DB: dict[str, float] = {
    "F32": 100, "F16": 60, "BF16": 40, "Q8_0": 35, "Q6_K": 25, "Q5_K": 20, "Q5_0": 20, "Q5_1": 20,
    "Q4_K": 15, "Q4_0": 14, "Q4_1": 14, "IQ4_NL": 15, "IQ4_XS": 15, "Q3_K": 8, "Q2_K": 3, "TQ1_0": 0, "TQ2_0": 0,
}
REQUIRED_KEYS = ("general.architecture", "{arch}.block_count", "{arch}.embedding_length",
                 "tokenizer.ggml.model", "tokenizer.ggml.tokens")


@dataclass
class TensorReport:
    name: str
    type: str
    shape: list[int]
    nbytes: int
    rmse: float | None = None
    max_abs: float | None = None
    snr_db: float | None = None
    min_snr_db: float | None = None
    ok: bool = True


@dataclass
class VerifyReport:
    path: str
    arch: str
    n_tensors: int
    problems: list[str] = field(default_factory=list)
    tensors: list[TensorReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(t.ok for t in self.tensors)

    def to_json(self) -> dict:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def open_layout(path: Path) -> GGUFLayout:
    """The file's layout; a file that cannot be scanned is a failed verification, not bad input."""
    if not path.exists():
        raise InputError(f"{path} does not exist.", hint="Check the path of the GGUF file.")
    try:
        return read_layout(path)
    except InputError as exc:
        raise VerifyError(f"{path} is not a readable GGUF file: {exc.args[0]}",
                          hint="Re-create it with quantcli convert.") from exc


def check_structure(layout: GGUFLayout, report: VerifyReport) -> None:
    """What a loader needs beyond a consistent layout (the scan already checked types, sizes, bounds, alignment)."""
    present = set(layout.values) | set(layout.array_lengths)
    for key in REQUIRED_KEYS:
        if key.format(arch=report.arch) not in present:
            report.problems.append(f"missing metadata key {key.format(arch=report.arch)}")
    n_tokens = layout.array_lengths.get("tokenizer.ggml.tokens")
    if n_tokens == 0:
        report.problems.append("tokenizer.ggml.tokens is empty")


def error_figures(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, float]:
    """(RMSE, max abs error, SNR in dB) of `got` against `ref`, computed in float64."""
    r = ref.astype(np.float64).ravel()
    d = got.astype(np.float64).ravel() - r
    with np.errstate(over="ignore", invalid="ignore"):
        err = float(np.dot(d, d))
        sig = float(np.dot(r, r))
    if not math.isfinite(err):  # Inf/NaN decoded values: no finite figure describes them; the worst ones do
        return math.inf, math.inf, -math.inf
    rmse = math.sqrt(err / max(1, d.size))
    ratio = sig / err if err > 0 else math.inf
    snr = math.inf if ratio == math.inf else (10 * math.log10(ratio) if ratio > 0 else -math.inf)
    return rmse, float(np.abs(d).max(initial=0.0)), snr


def verify_file(path: Path, source: Path | None = None, *, min_snr_db: float | None = None,
                max_rmse: float | None = None) -> VerifyReport:
    """Check `path`; with `source`, compare every tensor against the checkpoint it was made from."""
    layout = open_layout(Path(path))
    arch = layout.values.get("general.architecture")
    report = VerifyReport(str(path), arch if isinstance(arch, str) else "", len(layout.tensors))
    check_structure(layout, report)
    specs = {}
    ckpt = None
    if source is not None:
        ckpt = Checkpoint.open(source)
        specs = {s.name: s for s in adapter_for(ckpt.config, ckpt.path).tensor_specs(ckpt.tensors)}
        missing = sorted(set(specs) - {t.name for t in layout.tensors})
        if missing:
            report.problems.append(f"{len(missing)} source tensors are not in the file (first: {missing[0]})")
    if ckpt is None:
        report.tensors = [TensorReport(t.name, t.qtype.name, list(t.shape), t.n_bytes) for t in layout.tensors]
        return report
    with open(layout.path, "rb") as fp, mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for t in layout.tensors:
            report.tensors.append(_compare_tensor(t, mm, specs, ckpt, report, min_snr_db, max_rmse))
    return report


def _compare_tensor(t: TensorSpan, mm: mmap.mmap, specs: dict, ckpt: Checkpoint, report: VerifyReport,
                    min_snr_db: float | None, max_rmse: float | None) -> TensorReport:
    """Decode one tensor with gguf-py and set its error figures against the source tensor."""
    tr = TensorReport(t.name, t.qtype.name, list(t.shape), t.n_bytes)
    spec = specs.get(t.name)
    if spec is None:
        report.problems.append(f"{t.name} does not come from any source tensor")
        return tr
    ref = spec.transform.apply([to_float32(ckpt.read_raw(s), ckpt.tensors[s].dtype) for s in spec.sources])
    got = dequantize(np.frombuffer(mm, dtype=np.uint8, count=t.n_bytes, offset=t.data_offset), t.qtype).reshape(-1)
    if got.size != ref.size:
        report.problems.append(f"{t.name}: {got.size} values, source has {ref.size}")
        return tr
    tr.rmse, tr.max_abs, tr.snr_db = error_figures(ref, got)
    tr.min_snr_db = min_snr_db if min_snr_db is not None else DEFAULT_MIN_SNR_DB.get(t.qtype.name)
    has_signal = float(np.dot(ref.ravel(), ref.ravel())) > 0
    tr.ok = (bool(np.isfinite(got).all())
             and not (tr.min_snr_db is not None and has_signal and tr.snr_db < tr.min_snr_db)
             and not (max_rmse is not None and tr.rmse > max_rmse))
    return tr
