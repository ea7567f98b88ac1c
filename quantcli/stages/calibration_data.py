"""Where calibration text comes from: a text file, a folder of them, JSONL or parquet with a text field, a dataset
repository on the Hugging Face hub, or the built-in default that ships inside the package.

Every source becomes one string (files joined in sorted order by a blank line, records by a newline), because
llama.cpp's imatrix tool tokenizes its input once, whole. The string's sha256 identifies the data in the cache key
and in the manifest.

    >>> data = load_calibration_text("calib.txt")                      # doctest: +SKIP
    >>> data.name, len(data.text), data.sha256[:12]
    ('calib.txt', 183004, '5a0c1f...')
"""
from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import InputError, UnsupportedError

DEFAULT_FIELD = "text"
BUILTIN_PREFIX = "builtin:"
# Built-in texts (quantcli/data/, sources and licenses in its README.md). Calibration and evaluation use different
# texts so that a quality check never scores a model on the text its importance matrix was fitted to.
BUILTIN_TEXTS = {"calibration": "calibration.txt.gz", "eval": "eval.txt.gz"}
DEFAULT_TEXT = "calibration"
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
DATA_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
HUB_PREFIX = "hf://datasets/"


@dataclass(frozen=True)
class CalibrationText:
    """The text to calibrate on, what to call it in the imatrix file, and the sha256 of its UTF-8 bytes."""

    text: str
    name: str
    sha256: str
    files: tuple[str, ...] = ()


def _finish(text: str, name: str, files: tuple[str, ...]) -> CalibrationText:
    if not text.strip():
        raise InputError(f"the calibration data {name} holds no text.",
                         hint="Give a text of a few thousand words (--data), or leave --data out for the built-in text.")
    return CalibrationText(text, name, hashlib.sha256(text.encode("utf-8")).hexdigest(), files)


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where} is not UTF-8 text (invalid byte at offset {exc.start}).",
                         hint="Convert it to UTF-8 first, e.g. `iconv -f latin1 -t utf-8`.") from None


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"calibration data {path} does not exist.", hint="Check the --data path.") from None
    except OSError as exc:
        raise InputError(f"cannot read calibration data {path}: {exc.strerror}.", hint="Check the path and its permissions.") from None
    return gzip.decompress(raw) if path.suffix == ".gz" else raw


def _jsonl_records(path: Path, field: str) -> list[str]:
    out = []
    for lineno, line in enumerate(_decode(_read_bytes(path), str(path)).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{lineno} is not valid JSON ({exc.msg}).",
                             hint="Give one JSON object per line (JSONL).") from None
        value = record.get(field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise InputError(f"{path}:{lineno} has no string field {field!r}.",
                             hint="Name the field that holds the text with --data-field.")
        out.append(value)
    return out


def _parquet_records(path: Path, field: str) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UnsupportedError(f"{path} is a parquet file and reading parquet needs pyarrow.",
                               hint="pip install 'quantcli[parquet]' (or pyarrow), or give text or JSONL files.") from None
    try:
        table = pq.read_table(path, columns=[field])
    except (KeyError, ValueError) as exc:
        raise InputError(f"{path} has no column {field!r} ({exc}).",
                         hint="Name the column that holds the text with --data-field.") from None
    except OSError as exc:
        raise InputError(f"{path} is not a readable parquet file ({exc}).", hint="Check the file.") from None
    values = table.column(field).to_pylist()
    if not all(isinstance(v, str) for v in values if v is not None):
        raise InputError(f"{path}'s column {field!r} does not hold text.", hint="Name a string column with --data-field.")
    return [v for v in values if v]


def _file_text(path: Path, field: str) -> str:
    name = path.name[:-3] if path.suffix == ".gz" else path.name
    suffix = Path(name).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "\n".join(_jsonl_records(path, field))
    if suffix in PARQUET_SUFFIXES:
        return "\n".join(_parquet_records(path, field))
    return _decode(_read_bytes(path), str(path))


def _folder_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
                   and (p.name[:-3] if p.name.endswith(".gz") else p.name).lower().endswith(DATA_SUFFIXES))
    if not files:
        raise InputError(f"{folder} holds no calibration files ({', '.join(DATA_SUFFIXES)}).",
                         hint="Put text, JSONL or parquet files in it, or give one file with --data.")
    return files


def _from_files(files: list[Path], name: str, field: str) -> CalibrationText:
    parts = [_file_text(p, field) for p in files]
    return _finish("\n\n".join(parts), name, tuple(str(p) for p in files))


def builtin_text(which: str = DEFAULT_TEXT) -> CalibrationText:
    """One of the texts shipped in quantcli/data/ ("calibration" or "eval")."""
    if which not in BUILTIN_TEXTS:
        raise InputError(f"there is no built-in text {which!r}.", hint=f"Built-in texts: {', '.join(BUILTIN_TEXTS)}.")
    raw = resources.files("quantcli.data").joinpath(BUILTIN_TEXTS[which]).read_bytes()
    return _finish(gzip.decompress(raw).decode("utf-8"), BUILTIN_PREFIX + which, ())


def _hub_dataset(spec: str, field: str) -> CalibrationText:
    from ..stages.download import HubRef

    ref = HubRef.parse(spec.removeprefix(HUB_PREFIX))
    if ref is None:
        raise InputError(f"{spec} is neither a local path nor a hub dataset id.",
                         hint="Give a text file, a folder, or a dataset id like org/name[@revision].")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise UnsupportedError("reading a hub dataset needs huggingface_hub.", hint="pip install huggingface_hub") from None
    patterns = [f"*{s}" for s in DATA_SUFFIXES] + [f"*{s}.gz" for s in TEXT_SUFFIXES + JSONL_SUFFIXES]
    try:
        folder = Path(snapshot_download(ref.repo_id, repo_type="dataset", revision=ref.revision, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        raise InputError(f"the dataset {ref.repo_id} is not in the hub cache and the hub cannot be reached.",
                         hint="Connect (unset HF_HUB_OFFLINE) or download it once with `hf download --repo-type dataset`.") from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise InputError(f"the dataset {spec} was not found on the hub ({type(exc).__name__}).",
                         hint="Check the dataset id and revision (org/name[@revision]); gated data needs HF_TOKEN.") from None
    files = _folder_files(folder)
    data = _from_files(files, HUB_PREFIX + ref.repo_id + (f"@{ref.revision}" if ref.revision else ""), field)
    return CalibrationText(data.text, data.name, data.sha256, tuple(str(p.relative_to(folder)) for p in files))


def load_calibration_text(spec: str | Path | None, *, field: str = DEFAULT_FIELD) -> CalibrationText:
    """The calibration text that `spec` names.

    None or "builtin:NAME": a built-in text. An existing file: plain text (UTF-8, optionally .gz), JSONL (.jsonl,
    the string `field` of every record) or parquet (column `field`, needs pyarrow). An existing folder: every such
    file in it, in sorted order. "hf://datasets/org/name[@rev]" or "org/name[@rev]" that is no local path: a
    dataset repository on the hub (its text, JSONL and parquet files), through huggingface_hub and its cache.
    """
    if spec is None:
        return builtin_text(DEFAULT_TEXT)
    text = str(spec)
    if text.startswith(BUILTIN_PREFIX):
        return builtin_text(text.removeprefix(BUILTIN_PREFIX))
    path = Path(text).expanduser()
    if path.is_dir():
        return _from_files(_folder_files(path), text, field)
    if path.is_file():
        return _from_files([path], text, field)
    looks_like_id = text.startswith(HUB_PREFIX) or (text.count("/") == 1 and not text.startswith((".", "/", "~")))
    if looks_like_id:
        return _hub_dataset(text, field)
    raise InputError(f"calibration data {text} does not exist.",
                     hint="Give a text file, a folder of them, a hub dataset id (org/name), or no --data for the built-in text.")
