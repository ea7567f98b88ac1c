"""Where a run's files go: the one place output names become paths, and the checks every such path must pass.

Names come from recipe templates (`file:`), recipe names, model names and `-o`. Before any byte is written,
convert and batch both resolve every name here and refuse:

- a name that is not a plain file name (empty, `..`, a `/` or `\\`, an absolute path): a recipe must not be
  able to write outside its output folder;
- a name that resolves outside the folder through a symlink already at that name;
- a name that is an existing folder;
- two outputs (GGUF files or manifests) that resolve to one file. Names are compared case-insensitively,
  because on macOS and Windows `X.gguf` and `x.gguf` are the same file.

`-o` rule: an existing folder is a folder; a name ending in `.gguf` (any case) is one output file; a name ending
in another suffix of letters only (`out.bin`, `model.txt`) is refused, since it looks like a file but would
silently become a folder; any other name is a folder, created when needed (so `out/Qwen2.5-0.5B`, whose
"suffix" holds digits, is a folder).

    >>> layout = resolve_layout(Path("out"), ["m-Q8_0.gguf"], model="m", recipe="q8_0")
    >>> layout.files, layout.manifest
    ((PosixPath('out/m-Q8_0.gguf'),), PosixPath('out/m.q8_0.manifest.json'))
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import InputError, OutputError
from .manifest import MANIFEST_SUFFIX, manifest_path

GGUF_SUFFIX = ".gguf"
FILE_LIKE_SUFFIX = re.compile(r"\.[A-Za-z]+")      # `.bin`, `.txt`: a file name, not a folder name
MAX_NAME_BYTES = 200         # leaves room for the hidden partial and lock names within NAME_MAX (255)


@dataclass(frozen=True)
class OutputLayout:
    """Every file one conversion may write, in the spelling the user gave (for messages)."""

    folder: Path
    files: tuple[Path, ...]
    manifest: Path
    single_file: bool        # -o named the one output file itself

    @property
    def all_paths(self) -> tuple[Path, ...]:
        return (*self.files, self.manifest)


def output_target(output: Path | None, n_outputs: int) -> tuple[Path, Path | None]:
    """(folder, the single output file or None) for `-o`, by the rule in the module docstring."""
    if output is None:
        return Path("."), None
    output = Path(output)
    if output.is_dir():
        return output, None
    suffix = output.suffix
    if suffix.lower() == GGUF_SUFFIX:
        if n_outputs != 1:
            raise InputError(f"-o {output} names one file but the recipe has {n_outputs} outputs.",
                             hint="Give a folder with -o, or a recipe with one output.")
        return output.parent, output
    if FILE_LIKE_SUFFIX.fullmatch(suffix):
        raise InputError(f"-o {output} ends in {suffix!r}, which is not a GGUF file name.",
                         hint="Name the output file *.gguf, or give a folder: an existing one, or a new name "
                              "without a file suffix.")
    return output, None


def check_name(name: str, what: str, folder: Path) -> None:
    """Refuse a name that is not one plain, visible file name inside `folder`."""
    if not name.strip():
        raise InputError(f"{what} gives an empty file name.",
                         hint="Give `file:` a template such as {model}-{type}.gguf.")
    if ("/" in name or "\\" in name or "\0" in name or name in (".", "..") or name.startswith(".")
            or os.path.isabs(name)):
        raise InputError(f"{what}: {name!r} is not a plain file name; it would be written outside {folder} "
                         "or hidden in it.",
                         hint="Use `file:` templates, recipe names and model names without '/', '\\', '..' or "
                              "a leading dot.")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise InputError(f"{what} gives a file name of {len(name.encode('utf-8'))} bytes.",
                         hint=f"Keep file names under {MAX_NAME_BYTES} bytes (shorten the template or the name).")


def _check_target(path: Path, what: str, real_folder: Path) -> Path:
    """The resolved path of `path`; refused when it is a folder or a symlink leading out of the folder."""
    real = Path(os.path.realpath(path))
    if real.parent != real_folder:
        how = "is a symlink to" if path.is_symlink() else "resolves to"
        raise InputError(f"{what}: {path} {how} {real}, outside the output folder {real_folder}.",
                         hint="Remove the symlink or choose another output folder.")
    if path.is_dir():
        raise OutputError(f"{path} is a folder, so {what} cannot be written there.",
                          hint="Remove or rename that folder, or choose another output name.")
    return real


def refuse_collisions(entries: Iterable[tuple[str, Path]], hint: str) -> None:
    """Refuse two entries (description, resolved path) naming one file, compared case-insensitively."""
    seen: dict[str, tuple[str, Path]] = {}
    for what, path in entries:
        key = str(path).casefold()
        if key in seen:
            first, first_path = seen[key]
            same = f"{path}" if first_path == path else f"{first_path} and {path} (names that differ only in case)"
            raise InputError(f"{first} and {what} would both write {same}.", hint=hint)
        seen[key] = (what, path)


def resolve_layout(output: Path | None, names: Sequence[str], *, model: str, recipe: str,
                   labels: Sequence[str] | None = None, folder_only: bool = False) -> OutputLayout:
    """Check and place every output of one run: `names` are the expanded file names, one per output.

    `folder_only`: `output` is a folder whatever its name (a batch job's folder), not subject to the -o rule."""
    labels = list(labels) if labels is not None else [f"output {i + 1}" for i in range(len(names))]
    folder, single = (Path(output), None) if folder_only and output is not None else output_target(output, len(names))
    real_folder = Path(os.path.realpath(folder))
    if single is not None:
        files = [single]
        if not single.name.strip() or single.name.startswith("."):
            raise InputError(f"-o {single} is a hidden or empty file name.", hint="Name the output file like model-Q8_0.gguf.")
    else:
        for name, label in zip(names, labels):
            check_name(name, label, folder)
        files = [folder / name for name in names]
    if single is None:   # the name is built from the model and recipe names: check the string, not a Path's tail
        check_name(f"{model}.{recipe}{MANIFEST_SUFFIX}", f"the run manifest (named after model {model!r} and recipe "
                                                         f"{recipe!r})", folder)
    manifest = manifest_path(folder, model=model, recipe=recipe, single_file=single)
    resolved = [(label, _check_target(f, label, real_folder)) for f, label in zip(files, labels)]
    resolved.append(("the run manifest", _check_target(manifest, "the run manifest", real_folder)))
    refuse_collisions(resolved, hint="Give each output its own `file:` template or type.")
    return OutputLayout(folder, tuple(files), manifest, single is not None)
