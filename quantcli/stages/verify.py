"""The verify stage: reopen a GGUF with gguf-py's reader (an independent implementation) and check it.

Structure: required metadata, every tensor's type, shape, byte size, alignment and bounds. With a source
checkpoint: dequantize each tensor and compare it with the source values after the same transform, reporting
RMSE, max abs error and SNR per tensor, against the recipe's thresholds.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.quants import dequantize

from ..errors import InputError, VerifyError
from ..io.checkpoint import Checkpoint
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


def _field_value(reader: GGUFReader, key: str) -> object:
    f = reader.fields.get(key)
    if f is None:
        return None
    if f.types and f.types[0] == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8", "replace")
    if f.types and f.types[0] == GGUFValueType.ARRAY:
        return len(f.data)
    return f.parts[f.data[0]][0].item()


def open_reader(path: Path) -> GGUFReader:
    try:
        return GGUFReader(path)
    except FileNotFoundError as exc:
        raise InputError(f"{path} does not exist.", hint="Check the path of the GGUF file.") from exc
    except Exception as exc:  # gguf-py raises ValueError/struct errors/IndexError on hostile files
        raise VerifyError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}).",
                          hint="Re-create it with quantcli convert.") from exc


def check_structure(reader: GGUFReader, report: VerifyReport) -> None:
    arch = report.arch
    for key in REQUIRED_KEYS:
        if reader.fields.get(key.format(arch=arch)) is None:
            report.problems.append(f"missing metadata key {key.format(arch=arch)}")
    align = int(_field_value(reader, "general.alignment") or 32)
    size = Path(reader.data.filename).stat().st_size if hasattr(reader.data, "filename") else len(reader.data)
    for t in reader.tensors:
        qtype = GGMLQuantizationType(int(t.tensor_type))
        block, tsize = GGML_QUANT_SIZES[qtype]
        n = int(np.prod(t.shape, dtype=np.int64))
        if int(t.shape[0]) % block:
            report.problems.append(f"{t.name}: row of {int(t.shape[0])} is not a multiple of {qtype.name}'s block {block}")
            continue
        expected = n // block * tsize
        if int(t.n_bytes) != expected:
            report.problems.append(f"{t.name}: {int(t.n_bytes)} bytes, expected {expected}")
        if int(t.data_offset) % align:
            report.problems.append(f"{t.name}: data offset {int(t.data_offset)} not aligned to {align}")
        if int(t.data_offset) + expected > size:
            report.problems.append(f"{t.name}: data runs past the end of the file")


def error_figures(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, float]:
    """(RMSE, max abs error, SNR in dB) of `got` against `ref`, computed in float64."""
    r = ref.astype(np.float64).ravel()
    d = got.astype(np.float64).ravel() - r
    err = float(np.dot(d, d))
    sig = float(np.dot(r, r))
    rmse = math.sqrt(err / max(1, d.size))
    snr = math.inf if err == 0 else (10 * math.log10(sig / err) if sig > 0 else -math.inf)
    return rmse, float(np.abs(d).max(initial=0.0)), snr


def verify_file(path: Path, source: Path | None = None, *, min_snr_db: float | None = None,
                max_rmse: float | None = None) -> VerifyReport:
    """Check `path`; with `source`, compare every tensor against the checkpoint it was made from."""
    reader = open_reader(Path(path))
    arch = str(_field_value(reader, "general.architecture") or "")
    report = VerifyReport(str(path), arch, len(reader.tensors))
    if not arch:
        report.problems.append("missing metadata key general.architecture")
    check_structure(reader, report)
    specs = {}
    ckpt = None
    if source is not None:
        ckpt = Checkpoint.open(source)
        specs = {s.name: s for s in adapter_for(ckpt.config, ckpt.path).tensor_specs(ckpt.tensors)}
        missing = sorted(set(specs) - {t.name for t in reader.tensors})
        if missing:
            report.problems.append(f"{len(missing)} source tensors are not in the file (first: {missing[0]})")
    for t in reader.tensors:
        qtype = GGMLQuantizationType(int(t.tensor_type))
        tr = TensorReport(t.name, qtype.name, [int(x) for x in t.shape], int(t.n_bytes))
        spec = specs.get(t.name)
        if ckpt is not None and spec is None:
            report.problems.append(f"{t.name} does not come from any source tensor")
        elif spec is not None and ckpt is not None:
            ref = spec.transform.apply([to_float32(ckpt.read_raw(s), ckpt.tensors[s].dtype) for s in spec.sources])
            got = dequantize(np.asarray(t.data), qtype).reshape(-1)
            if got.size != ref.size:
                report.problems.append(f"{t.name}: {got.size} values, source has {ref.size}")
            else:
                tr.rmse, tr.max_abs, tr.snr_db = error_figures(ref, got)
                tr.min_snr_db = min_snr_db if min_snr_db is not None else DEFAULT_MIN_SNR_DB.get(qtype.name)
                if not np.isfinite(got).all():
                    tr.ok = False
                if tr.min_snr_db is not None and float(np.dot(ref.ravel(), ref.ravel())) > 0 and tr.snr_db < tr.min_snr_db:
                    tr.ok = False
                if max_rmse is not None and tr.rmse > max_rmse:
                    tr.ok = False
        report.tensors.append(tr)
    return report
