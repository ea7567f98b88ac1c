"""The verify stage: reopen a written GGUF and check it.

The file is read back by the layout scan (io/gguf_layout.py), which shares no code with the writer, and the
values are decoded by gguf-py's dequantizers, an independent implementation of every block format. (gguf-py's
GGUFReader would also do, but it decodes each vocabulary entry into numpy objects: seconds per file on a
50k-token vocabulary, tens of seconds on 150k.)

Structure: required metadata, every tensor's type, shape, byte size, alignment and bounds. With a source
checkpoint: dequantize each tensor and compare it with the source values after the same transform, reporting
RMSE, max abs error and SNR per tensor, against the recipe's thresholds.

This module returns data (VerifyReport, and `summarize` for the figures a reader wants first); printing is
the CLI's. Model-level checks (perplexity, KL divergence) belong beside the per-tensor ones as further data.
"""
from __future__ import annotations

import math
import mmap
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_MAGIC
from gguf.quants import dequantize

from ..errors import InputError, UnsupportedError, VerifyError
from ..io.checkpoint import Checkpoint
from ..io.gguf_layout import GGUFLayout, TensorSpan, read_layout
from ..io.safetensors import to_float32
from ..plan.gguf import SourceModel

# Per-type SNR floors (dB) used when a recipe sets none: well below what each type gives on real weights,
# so a failure means a broken file, not an unlucky tensor.
DEFAULT_MIN_SNR_DB: dict[str, float] = {
    "F32": 100, "F16": 60, "BF16": 40, "Q8_0": 35, "Q6_K": 25, "Q5_K": 20, "Q5_0": 20, "Q5_1": 20,
    "Q4_K": 15, "Q4_0": 14, "Q4_1": 14, "IQ4_NL": 15, "IQ4_XS": 15, "Q3_K": 8, "Q2_K": 3, "TQ1_0": 0, "TQ2_0": 0,
}
REQUIRED_KEYS = ("general.architecture", "{arch}.block_count", "{arch}.embedding_length",
                 "tokenizer.ggml.model", "tokenizer.ggml.tokens")
WORST_SHOWN = 5            # tensors named in a summary
# Values per step of the error sums: two float64 chunks of this size (1 MB) stay in a core's L2 cache, where
# widening a whole 28M-value embedding to float64 three times over costs seconds of memory traffic. The sums
# use einsum, not np.dot: dot goes to OpenBLAS, whose threads spin against the rest of a busy machine (a
# 64k-value dot measured 11 us alone and 1-4 ms with other work running).
FIGURE_CHUNK = 1 << 16


@dataclass
class TensorReport:
    name: str
    type: str
    shape: list[int]            # ggml order (row length first), as llama.cpp prints it
    nbytes: int
    rmse: float | None = None
    max_abs: float | None = None
    snr_db: float | None = None
    min_snr_db: float | None = None
    ok: bool = True
    failure: str | None = None  # which check failed, with its figure and threshold


@dataclass
class VerifyReport:
    path: str
    arch: str
    n_tensors: int
    problems: list[str] = field(default_factory=list)
    tensors: list[TensorReport] = field(default_factory=list)
    compared: bool = False      # tensors were compared with a source checkpoint
    max_rmse: float | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and all(t.ok for t in self.tensors)

    def to_json(self) -> dict:
        data = asdict(self)
        data["ok"] = self.ok
        return data

    def summary(self, worst: int = WORST_SHOWN) -> dict[str, Any]:
        return summarize(self.to_json(), worst)


def summarize(report: dict[str, Any], worst: int = WORST_SHOWN) -> dict[str, Any]:
    """The figures to lead with, from a report in its JSON form (as the cache and manifests keep it).

    Returns ok, tensor counts (checked, compared, failed), the structural problems, the worst SNR and RMSE,
    and the `worst` tensors: failing ones first, then the lowest SNR.

        >>> summarize({"ok": True, "n_tensors": 1, "problems": [], "compared": True, "tensors": [
        ...     {"name": "a", "type": "Q8_0", "rmse": 0.01, "max_abs": 0.05, "snr_db": 40.0, "min_snr_db": 35,
        ...      "ok": True, "failure": None}]})["min_snr_db"]
        40.0
    """
    tensors = report.get("tensors") or []
    figured = [t for t in tensors if isinstance(t.get("rmse"), (int, float))]
    failed = [t for t in tensors if not t.get("ok", True)]
    snrs = [float(t["snr_db"]) for t in figured if isinstance(t.get("snr_db"), (int, float))]
    ordered = sorted(figured, key=lambda t: (bool(t.get("ok", True)), _sort_snr(t.get("snr_db"))))
    keep = ("name", "type", "snr_db", "min_snr_db", "rmse", "max_abs", "ok", "failure")
    return {
        "ok": bool(report.get("ok")),
        "n_tensors": report.get("n_tensors"),
        "n_compared": len(figured),
        "n_failed": len(failed),
        "problems": list(report.get("problems") or []),
        "min_snr_db": min(snrs) if snrs else None,
        "max_rmse": max(float(t["rmse"]) for t in figured) if figured else None,
        "max_rmse_threshold": report.get("max_rmse"),
        "worst": [{k: t.get(k) for k in keep} for t in ordered[:worst]],
    }


def _sort_snr(value: object) -> float:
    # NaN sorts first (it is the worst figure there is); a missing SNR sorts last.
    if not isinstance(value, (int, float)):
        return math.inf
    return -math.inf if math.isnan(value) else float(value)


def failure_line(report: dict[str, Any]) -> str:
    """One line saying why a report failed: the checks, their figures and thresholds (at most three of each)."""
    parts = list((report.get("problems") or [])[:3])
    failed = [t for t in report.get("tensors") or [] if not t.get("ok", True)]
    if failed:
        shown = "; ".join(f"{t['name']} ({t['type']}) {t.get('failure') or 'failed'}" for t in failed[:3])
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        parts.append(f"{len(failed)} of {report.get('n_tensors')} tensors over their threshold: {shown}{more}")
    return "; ".join(parts) or "the report says it failed"


def file_magic(path: Path, accepted: str = "a .gguf file", size: int = 8) -> bytes:
    """The first bytes of `path`, which must be a regular file (a FIFO or a device would block the reader);
    `accepted` names what the command takes, for the hint."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist.", hint=f"Check the path; give {accepted}.")
    if path.is_dir():
        raise InputError(f"{path} is a folder.", hint=f"Give {accepted}.")
    if not path.is_file():
        raise InputError(f"{path} is not a regular file.", hint=f"Give {accepted}.")
    try:
        with open(path, "rb") as fp:
            return fp.read(size)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}.", hint="Check that the file is readable.") from exc


def is_gguf_magic(head: bytes) -> bool:
    return len(head) >= 4 and struct.unpack("<I", head[:4])[0] == GGUF_MAGIC


def open_layout(path: Path) -> GGUFLayout:
    """The layout of a file to verify.

    What is not a GGUF file at all (missing, a folder, other bytes) is bad input, exit 2. A GGUF file that
    cannot be scanned (truncated, damaged) failed verification, exit 1: it is the thing being judged.
    """
    path = Path(path)
    head = file_magic(path)
    if not is_gguf_magic(head):
        raise InputError(f"{path} is not a GGUF file (it does not start with the GGUF magic).",
                         hint="quantcli verify checks .gguf files; `quantcli inspect` shows safetensors files and "
                              "model folders.")
    try:
        return read_layout(path)
    except InputError as exc:
        raise VerifyError(str(exc.args[0]), hint=exc.hint) from exc


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
    """(RMSE, max abs error, SNR in dB) of `got` against `ref`, summed in float64, a chunk at a time.

    Never raises on the figures themselves: non-finite values give a non-finite error (NaN or infinity) and
    an SNR of -infinity; an exact match gives an SNR of +infinity.
    """
    r_all, g_all = ref.reshape(-1), got.reshape(-1)
    n = r_all.size
    r64, d64 = np.empty(min(n, FIGURE_CHUNK)), np.empty(min(n, FIGURE_CHUNK))
    err = sig = 0.0
    peaks = [0.0]
    for start in range(0, n, FIGURE_CHUNK):
        m = min(FIGURE_CHUNK, n - start)
        r, d = r64[:m], d64[:m]
        np.copyto(r, r_all[start:start + m])
        np.subtract(g_all[start:start + m], r, out=d)
        err += float(np.einsum("i,i->", d, d))
        sig += float(np.einsum("i,i->", r, r))
        np.abs(d, out=d)
        peaks.append(float(d.max()))
    rmse = math.sqrt(err / max(1, n)) if not math.isnan(err) else math.nan
    max_abs = float(np.max(peaks))          # np.max keeps a NaN, Python's max() would drop it
    if err == 0:
        snr = math.inf
    elif not math.isfinite(err) or not (sig > 0):
        snr = -math.inf
    else:
        ratio = sig / err
        snr = 10 * math.log10(ratio) if ratio > 0 else -math.inf
    return rmse, max_abs, snr


def undecodable_types(layout: GGUFLayout) -> list[str]:
    """Types in the file that gguf-py cannot dequantize (so verify cannot compare them with the source)."""
    bad: list[str] = []
    for qtype in sorted({t.qtype for t in layout.tensors}, key=lambda q: q.value):
        _, size = GGML_QUANT_SIZES[qtype]
        try:
            dequantize(np.zeros(size, dtype=np.uint8), qtype)
        except (NotImplementedError, ValueError, KeyError, TypeError):
            bad.append(qtype.name)
    return bad


def verify_file(path: Path, source: Path | None = None, *, min_snr_db: float | None = None,
                max_rmse: float | None = None) -> VerifyReport:
    """Check `path`; with `source`, compare every tensor against the checkpoint it was made from."""
    layout = open_layout(Path(path))
    arch = layout.values.get("general.architecture")
    report = VerifyReport(str(path), arch if isinstance(arch, str) else "", len(layout.tensors), max_rmse=max_rmse)
    check_structure(layout, report)
    if source is None:
        report.tensors = [TensorReport(t.name, t.qtype.name, list(t.shape), t.n_bytes) for t in layout.tensors]
        return report
    bad = undecodable_types(layout)
    if bad:
        raise UnsupportedError(f"{path} holds {', '.join(bad)} tensors, which gguf-py (verify's independent "
                               "decoder) cannot dequantize, so they cannot be compared with the source.",
                               hint=f"Check its structure only: quantcli verify {path} (without --source).")
    ckpt = Checkpoint.open(source)
    specs = {s.name: s for s in SourceModel.open(ckpt).specs}
    missing = sorted(set(specs) - {t.name for t in layout.tensors})
    if missing:
        report.problems.append(f"{len(missing)} source tensors are not in the file (first: {missing[0]})")
    report.compared = True
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
    floor = min_snr_db if min_snr_db is not None else DEFAULT_MIN_SNR_DB.get(t.qtype.name)
    tr.min_snr_db = floor
    if not math.isfinite(tr.rmse):
        tr.failure = "has NaN or infinite values (in the file, or in the source)"
    elif floor is not None and tr.snr_db < floor and tr.rmse > 0 and not _silent(ref):
        tr.failure = f"SNR {tr.snr_db:.1f} dB < {floor:g} dB"
    elif max_rmse is not None and tr.rmse > max_rmse:
        tr.failure = f"RMSE {tr.rmse:.4g} > {max_rmse:g}"
    tr.ok = tr.failure is None
    return tr


def _silent(ref: np.ndarray) -> bool:
    """An all-zero source tensor has no signal, so no SNR to hold it to (its RMSE still counts)."""
    return not bool(np.any(ref))
