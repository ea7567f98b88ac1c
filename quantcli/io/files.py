"""Reading the small files of a model folder (JSON, text) as hostile input: one place that turns every way a file
can be unusable into an InputError naming the file.

- only regular files are opened: a FIFO or a device under a model file name would block a reader forever;
- text must be UTF-8;
- JSON nested deeper than Python's parser can recurse is an error, not a RecursionError.

    >>> load_json(Path("model/config.json"))["model_type"]     # doctest: +SKIP
    'llama'
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from ..errors import InputError

HASH_CHUNK = 1 << 22        # bytes per read when hashing files

def require_regular(path: Path, what: str = "file") -> os.stat_result:
    """stat() the path and insist on a regular file (symlinks to one are fine)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}.", hint=f"Check that the {what} exists and is readable.") from exc
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device")
        raise InputError(f"{path} is {kind}, not a regular file.",
                         hint=f"Give a regular {what}; quantcli does not read from pipes or devices.")
    return st


def read_text(path: Path, what: str = "file") -> str:
    """A regular file's text, which must be UTF-8."""
    require_regular(path, what)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}.", hint=f"Check that the {what} is readable.") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text (invalid byte at offset {exc.start}).",
                         hint=f"Save the {what} as UTF-8.") from exc


def parse_json(text: str, source: str, hint: str = "Fix or re-download the file.") -> Any:
    """JSON text from `source` (a file name for the message); too deep nesting is an error, not a crash."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source} is not valid JSON ({exc}).", hint=hint) from exc
    except RecursionError as exc:  # Python's parser recurses once per nesting level
        raise InputError(f"{source} nests JSON too deeply to be a real file.", hint=hint) from exc


def load_json(path: Path, what: str = "file") -> Any:
    return parse_json(read_text(path, what), str(path))


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks.

    >>> file_sha256(Path("/dev/null"))
    'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        while chunk := fp.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
