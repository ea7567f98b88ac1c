"""The stage cache: skip work whose inputs, parameters and code have not changed, and never trust it blindly.

A stage's key is the sha256 of (stage name, stage version, resolved parameters, content hashes of the inputs).
A record, stored under the cache folder and named by the key and the output path, says which file that key
produced and the file's size and sha256 (for a folder output: the total size of its files and one sha256 over
their names and sha256s, `path_sha256`). A lookup is a hit only when the record parses, names the same key
and path, and the file on disk still has that size and sha256: outputs are re-hashed on every hit, so a file
edited, truncated or replaced since it was cached is rebuilt, never reused. An unreadable record is a miss
with a warning and is removed.

Input content hashes (see `fingerprint_folder`): a hub snapshot is identified by its commit and the blob id
(the hub's content address) of every file; a plain local folder by each file's name, size and mtime. The
latter is cheap but trusts mtimes, which is why the outputs, not the inputs, are re-hashed on a hit.

    >>> cache = StageCache(default_cache_dir())
    >>> key = StageKey("quantize", 1, {"type": "Q8_0"}, {"source": "..."})
    >>> cache.lookup(key, Path("out/model-Q8_0.gguf")) is None     # first run
    True
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..io.atomic import atomic_file
from ..io.files import file_sha256

CACHE_ENV = "QUANTCLI_CACHE_DIR"
RECORD_FORMAT = 1           # bump when the record layout changes; older records then read as misses
# Files in a model folder that are ours or irrelevant to a conversion, left out of a folder's fingerprint so
# that writing outputs into the model folder does not change its fingerprint.
FINGERPRINT_SKIP_SUFFIXES = (".gguf", ".manifest.json", ".partial")

Warn = Callable[[str], None]


def default_cache_dir() -> Path:
    """$QUANTCLI_CACHE_DIR, else $XDG_CACHE_HOME/quantcli, else ~/.cache/quantcli."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "quantcli"


def canonical_json(value: Any) -> bytes:
    """The one serialisation keys are hashed from: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def folder_files(path: Path) -> dict[str, str]:
    """sha256 of every file under a folder output, by path relative to it (sorted): what the manifest lists."""
    root = Path(path)
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def files_digest(files: dict[str, str]) -> str:
    """One sha256 for a folder output: over its files' relative names and sha256s, in sorted order. Any file
    added, removed, renamed or changed changes it."""
    return hash_parts([name, sha] for name, sha in sorted(files.items()))


def path_sha256(path: Path) -> str:
    """file_sha256 for a file; files_digest(folder_files()) for a folder output."""
    return files_digest(folder_files(path)) if Path(path).is_dir() else file_sha256(path)


def path_size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    if not path.is_dir():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def fingerprint_folder(path: Path, hub_files: dict[str, str] | None = None, commit: str | None = None) -> dict[str, Any]:
    """Content identity of a model folder: commit + blob ids for a hub snapshot, else name/size/mtime per file."""
    if commit is not None and hub_files:
        return {"kind": "hub-snapshot", "commit": commit, "files": dict(sorted(hub_files.items()))}
    files = {}
    for p in sorted(Path(path).iterdir()):
        if p.name.startswith(".") or p.name.endswith(FINGERPRINT_SKIP_SUFFIXES) or not p.is_file():
            continue
        st = p.stat()
        files[p.name] = [st.st_size, st.st_mtime_ns]
    return {"kind": "local-folder", "path": str(Path(path).resolve()), "files": files}


@dataclass(frozen=True)
class StageKey:
    """What a stage's output depends on. `params` and `inputs` must be JSON-able."""

    stage: str
    version: int
    params: Any
    inputs: Any

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(canonical_json({"stage": self.stage, "version": self.version}))
        h.update(b"\0")
        h.update(canonical_json(self.params))
        h.update(b"\0")
        h.update(canonical_json(self.inputs))
        return h.hexdigest()


@dataclass
class CacheHit:
    """A verified cached output: the file matches the record; `extra` holds what the stage stored beside it."""

    path: Path
    sha256: str
    size: int
    extra: dict[str, Any] = field(default_factory=dict)


class StageCache:
    """Records of finished stage outputs under `root/stages/<stage>/`; see the module docstring."""

    def __init__(self, root: Path, *, warn: Warn | None = None) -> None:
        self.root = Path(root)
        self._warn = warn or (lambda message: None)
        self.enabled = self._probe()

    def _probe(self) -> bool:
        """Can records be written under root? Checked before any output is written: a cache folder that is a
        file, read-only or on a full disk turns the cache off with one warning (outputs are still written and
        verified, only not remembered), instead of failing after the GGUF is on disk."""
        probe = self.root / "stages" / f".probe-{os.getpid()}"
        try:
            probe.parent.mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as fp:
                fp.write(b"ok")
            probe.unlink()
            return True
        except OSError as exc:
            self._warn(f"the stage cache {self.root} cannot be written ({exc.strerror}); running without it. "
                       f"Set {CACHE_ENV} to a writable folder to cache outputs.")
            return False

    def _record_path(self, key: StageKey, output: Path) -> Path:
        where = hashlib.sha256(str(Path(output).resolve()).encode()).hexdigest()[:16]
        digest = key.digest
        return self.root / "stages" / key.stage / digest[:2] / f"{digest}-{where}.json"

    def _read(self, record: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
                raise ValueError("unknown record format")
            for name, kind in (("key", str), ("path", str), ("sha256", str), ("size", int), ("extra", dict)):
                if not isinstance(data.get(name), kind):
                    raise ValueError(f"field {name!r} is missing or has the wrong type")
            return data
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self._warn(f"cache entry {record} is unreadable ({exc}); ignoring it and redoing the work.")
            try:
                record.unlink()
            except OSError:
                pass
            return None

    def lookup(self, key: StageKey, output: Path) -> CacheHit | None:
        """The cached output for `key` at `output`, re-hashed and checked; None on any doubt."""
        if not self.enabled:
            return None
        record_path = self._record_path(key, output)
        data = self._read(record_path)
        if data is None:
            return None
        output = Path(output)
        if data["key"] != key.digest or data["path"] != str(output.resolve()):
            self._warn(f"cache entry {record_path} belongs to another key or file; ignoring it.")
            return None
        try:
            size = path_size(output)
        except FileNotFoundError:
            return None
        if size != data["size"] or path_sha256(output) != data["sha256"]:
            self._warn(f"{output} changed since it was made (its sha256 no longer matches the cache); rebuilding it.")
            return None
        return CacheHit(output, data["sha256"], size, data["extra"])

    def store(self, key: StageKey, output: Path, *, sha256: str, extra: dict[str, Any] | None = None) -> None:
        """Record that `key` produced `output` (already complete on disk, with this sha256)."""
        if not self.enabled:
            return
        output = Path(output)
        record = {"format": RECORD_FORMAT, "key": key.digest, "stage": key.stage, "version": key.version,
                  "path": str(output.resolve()), "sha256": sha256, "size": path_size(output),
                  "extra": extra or {}}
        try:
            atomic_write(self._record_path(key, output), json.dumps(record, indent=1).encode("utf-8"))
        except OSError as exc:  # the disk filled up after the probe: the output is fine, it is just not remembered
            self.enabled = False
            self._warn(f"cannot write to the stage cache {self.root} ({exc.strerror}); running without it.")

    def forget(self, key: StageKey, output: Path) -> None:
        try:
            self._record_path(key, output).unlink()
        except FileNotFoundError:
            pass


def atomic_write(path: Path, data: bytes) -> None:
    """Readers see the old record or the new one, never half of one."""
    with atomic_file(path) as fp:
        fp.write(data)


def hash_parts(parts: Iterable[Any]) -> str:
    """sha256 over a stream of JSON-able parts (used for large parameters such as a plan's metadata)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(canonical_json(part))
        h.update(b"\n")
    return h.hexdigest()
