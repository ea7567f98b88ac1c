"""Importance matrices made by llama.cpp's imatrix tool, in its GGUF format or the legacy .dat format.

Each entry becomes one float32 weight per column of the tensor it names, normalised the way llama-quantize
normalises it (GGUF: in_sum2 / count per expert slice, 1 where the count is 0; legacy: sums / ncall), so the
kernels receive exactly the quant_weights llama.cpp would pass.

    im = load_imatrix(Path("imatrix.gguf"))
    im.weights["blk.0.attn_q.weight"].shape
    # -> (576,)
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..io.files import require_regular
from ..io.gguf_metadata import MetaKV, kv_str, kv_u32

# The keys llama-quantize records in the files it writes from an imatrix (counts as UINT32, as it stores them).
KEY_FILE = "quantize.imatrix.file"
KEY_DATASET = "quantize.imatrix.dataset"
KEY_ENTRIES = "quantize.imatrix.entries_count"
KEY_CHUNKS = "quantize.imatrix.chunks_count"
_SUM_SUFFIX, _COUNT_SUFFIX = ".in_sum2", ".counts"
# Importance weights are mean squared activations: real matrices hold values well under 1e8. The kernels sum
# weight x value^2 over a block in float32, so weights near float32's limit (3e38) overflow to Inf and the
# block quantizes to zeros; anything above this bound is refused as damage, not data.
MAX_WEIGHT = 1e20


@dataclass(frozen=True)
class ImportanceMatrix:
    path: Path
    weights: Mapping[str, np.ndarray]
    datasets: tuple[str, ...]
    chunk_count: int

    def metadata(self) -> list[MetaKV]:
        out = [kv_str(KEY_FILE, str(self.path)[:127])]
        if self.datasets:
            out.append(kv_str(KEY_DATASET, self.datasets[0][:127]))
        out.append(kv_u32(KEY_ENTRIES, len(self.weights)))
        if self.chunk_count > 0:
            out.append(kv_u32(KEY_CHUNKS, self.chunk_count))
        return out

    def for_tensor(self, name: str, n_per_row: int) -> np.ndarray | None:
        """The weights of one tensor, None when the matrix has no entry (llama.cpp then quantizes without)."""
        w = self.weights.get(name)
        if w is None:
            return None
        if w.size != n_per_row:
            if name.startswith("token_embd"):
                return None  # llama.cpp ignores a mismatched token embedding entry
            raise InputError(f"the imatrix entry for {name} has {w.size} values but the tensor rows have {n_per_row}.",
                             hint="The importance matrix was computed for another model; compute one for this model.")
        return w

    def coverage(self, quantized: Sequence[str]) -> tuple[list[str], list[str]]:
        """(tensors of `quantized` the matrix has weights for, its entries that name none of them)."""
        wanted = set(quantized)
        return [n for n in quantized if n in self.weights], sorted(n for n in self.weights if n not in wanted)

    def check_coverage(self, quantized: Sequence[str]) -> str | None:
        """Refuse a matrix that names none of the tensors it would weight; else a sentence saying what was used
        when it does not cover them all (None when every quantized tensor has its entry). The token embedding is
        left out: it is a row lookup, not a matrix product, so llama-imatrix never records it."""
        quantized = [n for n in quantized if not n.startswith("token_embd")]
        if not quantized:
            return None
        used, unused = self.coverage(quantized)
        if not used:
            raise InputError(f"the imatrix {self.path} has no entry for any of the {len(quantized)} tensors to quantize "
                             f"(it names e.g. {next(iter(self.weights), 'nothing')!r}; this model has e.g. {quantized[0]!r}).",
                             hint="The importance matrix was computed for another model; compute one for this model.")
        if len(used) == len(quantized) and not unused:
            return None
        return (f"imatrix {self.path.name}: used for {len(used)} of {len(quantized)} quantized tensors"
                + (f"; {len(quantized) - len(used)} have no entry and are quantized without" if len(used) < len(quantized) else "")
                + (f"; {len(unused)} entries name no tensor of this model (e.g. {unused[0]!r})" if unused else "") + ".")


def _bad(path: Path, what: str) -> InputError:
    return InputError(f"{path} is not a valid imatrix file: {what}.",
                      hint="Pass a file written by llama-imatrix (GGUF or legacy .dat).")


def _load_gguf(path: Path) -> ImportanceMatrix:
    from gguf import GGMLQuantizationType, GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # hostile file: gguf-py raises a variety of errors
        raise _bad(path, str(exc)) from exc

    def field(key: str) -> object:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    datasets, chunk_count, chunk_size = field("imatrix.datasets"), field("imatrix.chunk_count"), field("imatrix.chunk_size")
    if datasets is None or chunk_count is None or chunk_size is None:
        raise _bad(path, "missing imatrix.datasets / chunk_count / chunk_size metadata")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        if t.tensor_type != GGMLQuantizationType.F32:
            raise _bad(path, f"tensor {t.name} is {t.tensor_type.name}, expected F32")
        if t.name.endswith(_SUM_SUFFIX):
            sums[t.name[: -len(_SUM_SUFFIX)]] = np.asarray(t.data, dtype=np.float32).reshape(-1)
        elif t.name.endswith(_COUNT_SUFFIX):
            counts[t.name[: -len(_COUNT_SUFFIX)]] = np.asarray(t.data, dtype=np.float32).reshape(-1)
    weights: dict[str, np.ndarray] = {}
    for name in sorted(set(sums) | set(counts)):
        if name not in sums or name not in counts:
            raise _bad(path, f"{name} has sums without counts or counts without sums")
        s, c = sums[name], counts[name]
        if c.size == 0 or s.size % c.size:
            raise _bad(path, f"{name} has {s.size} sums for {c.size} counts")
        # counts are rounded half away from zero (lround) and divided as float, as llama.cpp does
        count = (np.sign(c) * np.floor(np.abs(c.astype(np.float64)) + 0.5)).astype(np.float32).repeat(s.size // c.size)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(count > 0, s / np.where(count > 0, count, np.float32(1)), np.float32(1)).astype(np.float32)
        weights[name] = w
    return ImportanceMatrix(path, weights, tuple(str(d) for d in datasets), int(chunk_count))  # type: ignore[arg-type]


def _load_legacy(path: Path, data: bytes) -> ImportanceMatrix:
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise _bad(path, "the file ends early")
        out = struct.unpack_from(fmt, data, pos)
        pos += size
        return out

    (n_entries,) = take("<i")
    if n_entries < 1:
        raise _bad(path, f"it declares {n_entries} entries")
    weights: dict[str, np.ndarray] = {}
    for _ in range(n_entries):
        (n,) = take("<i")
        if not 0 < n <= 4096:
            raise _bad(path, f"a tensor name length of {n}")
        name = take(f"<{n}s")[0].decode("utf-8", "replace")
        ncall, nval = take("<ii")
        if nval < 1:
            raise _bad(path, f"{name} has {nval} values")
        sums = np.frombuffer(data, dtype="<f4", count=nval, offset=pos) if pos + 4 * nval <= len(data) else None
        if sums is None:
            raise _bad(path, "the file ends early")
        pos += 4 * nval
        weights[name] = (sums / np.float32(ncall)).astype(np.float32) if ncall > 0 else sums.astype(np.float32)
    chunk_count, datasets = 0, ()
    if pos + 4 <= len(data):
        (chunk_count,) = take("<i")
        if pos + 4 <= len(data):
            (n,) = take("<i")
            if 0 < n <= len(data) - pos:
                datasets = (take(f"<{n}s")[0].decode("utf-8", "replace"),)
    return ImportanceMatrix(path, weights, datasets, chunk_count)


def load_imatrix(path: Path) -> ImportanceMatrix:
    path = Path(path)
    if path.exists():
        require_regular(path, "imatrix file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read imatrix {path}: {exc.strerror}.", hint="Check the --imatrix path.") from exc
    im = _load_gguf(path) if data[:4] == b"GGUF" else _load_legacy(path, data)
    for name, w in im.weights.items():
        _check_entry(path, name, w)
    return im


def _check_entry(path: Path, name: str, w: np.ndarray) -> None:
    """Weights must be finite, non-negative, below MAX_WEIGHT and not all zero: any other value makes the
    weighted kernels write zeros (or garbage) for the whole tensor without failing."""
    hint = "Recompute the importance matrix with llama-imatrix for this model."
    if not np.isfinite(w).all():
        raise InputError(f"{path}: the imatrix entry for {name} holds NaN/Inf values.",
                         hint="Recompute the importance matrix; llama.cpp refuses it too.")
    if (w < 0).any():
        raise InputError(f"{path}: the imatrix entry for {name} holds negative values (min {float(w.min()):g}); "
                         "importance weights are sums of squares.", hint=hint)
    if float(w.max(initial=0.0)) > MAX_WEIGHT:
        raise InputError(f"{path}: the imatrix entry for {name} holds {float(w.max()):g}, above {MAX_WEIGHT:g}; "
                         "weighted quantization would overflow.", hint=hint)
    if not w.any():
        raise InputError(f"{path}: the imatrix entry for {name} is all zeros, which would quantize the tensor to zeros.",
                         hint=hint)
