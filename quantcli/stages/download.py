"""The download stage: a hub id (`org/name[@revision]`) -> a snapshot folder in the shared Hugging Face cache.

Only what conversion reads is fetched: config, generation config, tokenizer files, the safetensors shard index
and the safetensors it names. Pickled weights (.bin, .pt, .pth, .ckpt) are never downloaded: quantcli does
not unpickle. The hub cache (HF_HOME / HF_HUB_CACHE) is the one transformers and the `hf` CLI use, so a model
already downloaded by them costs nothing; HF_TOKEN and HF_HUB_OFFLINE are honoured by huggingface_hub itself.

The returned Snapshot names the commit the revision resolved to and the blob id of every file (the hub's
content address: the sha256 of LFS files, the git blob sha of the others), which is what the stage cache keys on.

    snap = download("HuggingFaceTB/SmolLM2-135M-Instruct@main")
    snap.commit, sorted(snap.files)[:2]
    # -> ('12fd25f77366fa6b3b4b768ec3050bf629380bac', ['config.json', 'generation_config.json'])
"""
from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError

# The files a conversion reads besides the weights. Weights are chosen afterwards from the index or the listing.
SIDE_FILES: tuple[str, ...] = (
    "config.json", "generation_config.json", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
)
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Checkpoints that ship both HF-layout shards and a second, differently named copy of the same weights
# (Mistral's consolidated.safetensors): the HF layout is what the adapters read.
DUPLICATE_WEIGHTS = ("consolidated.safetensors",)

# org/name as the hub validates it (ASCII letters, digits, '-', '_', '.'), then an optional @revision.
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96})(?:@(?P<rev>[^\s@]+))?$", re.ASCII)


def repo_id_problem(repo_id: str) -> str | None:
    """Why the hub would refuse `repo_id` as a new repository name (its own rules), or None.

    >>> repo_id_problem("me/模型")
    'it may only use ASCII letters, digits, -, _ and ., at most 96 of them per part'
    """
    org, _, name = repo_id.partition("/")
    if not org or not name or "/" in name:
        return "it must be org/name"
    if not all(re.fullmatch(r"[A-Za-z0-9_.-]{1,96}", part) for part in (org, name)):
        return "it may only use ASCII letters, digits, -, _ and ., at most 96 of them per part"
    if "--" in repo_id or ".." in repo_id:
        return "it may not contain -- or .."
    if any(part[0] in "-." or part[-1] in "-." for part in (org, name)) or name.endswith(".git"):
        return "a part may not start or end with - or ., and the name may not end with .git"
    return None
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SNAPSHOT_DIR = re.compile(r"^models--(?P<org>[^/]+?)--(?P<name>[^/]+)$")


@dataclass(frozen=True)
class HubRef:
    """A model on the hub: `repo_id` and the revision asked for (None: the default branch)."""

    repo_id: str
    revision: str | None = None

    @classmethod
    def parse(cls, text: str) -> "HubRef | None":
        """`org/name@v1.0` -> HubRef("org/name", "v1.0"); None when `text` is not shaped like a hub id.

        >>> HubRef.parse("HuggingFaceTB/SmolLM2-135M-Instruct@main")
        HubRef(repo_id='HuggingFaceTB/SmolLM2-135M-Instruct', revision='main')
        """
        m = _HUB_ID.match(text.strip())
        if m is None or ".." in m.group("repo") or m.group("repo").endswith((".", "-")):
            return None
        return cls(m.group("repo"), m.group("rev"))

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class Snapshot:
    """A model folder and where it came from; `commit` is None for a plain local folder."""

    path: Path
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None
    files: dict[str, str] = field(default_factory=dict)     # relative name -> hub blob id
    fetched: tuple[str, ...] = ()                            # files this call downloaded (empty: all were cached)

    @property
    def name(self) -> str:
        """The model's name for output files: the repo's name, or the folder's name."""
        if self.repo_id:
            return self.repo_id.split("/")[-1]
        return self.path.resolve().name

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "repo_id": self.repo_id, "revision": self.revision, "commit": self.commit,
                "files": dict(sorted(self.files.items())), "fetched": list(self.fetched)}


def snapshot_of_folder(path: Path) -> Snapshot:
    """Describe a local folder; a folder inside a hub cache (`models--org--name/snapshots/<commit>`) is recognised.

    >>> snapshot_of_folder(Path("~/.cache/huggingface/hub/models--org--m/snapshots/" + "a" * 40).expanduser()).repo_id
    'org/m'
    """
    path = Path(path)
    parent = path.parent
    if _COMMIT.match(path.name) and parent.name == "snapshots":
        m = _SNAPSHOT_DIR.match(parent.parent.name)
        if m is not None:
            return Snapshot(path, f"{m.group('org')}/{m.group('name')}", None, path.name, _blob_ids(path))
    return Snapshot(path)


def _blob_ids(folder: Path) -> dict[str, str]:
    """name -> blob id for the files of a hub snapshot folder, read from their symlinks into ../../blobs."""
    out: dict[str, str] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            target = Path(os.readlink(p))
            if target.parent.name == "blobs":
                out[p.relative_to(folder).as_posix()] = target.name
    return out


@contextmanager
def _hub_progress(enabled: bool) -> Iterator[None]:
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not enabled and not was_disabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


def _translate(exc: Exception, ref: HubRef, cache: str) -> InputError | None:
    """A huggingface_hub exception as one of ours, with what to do; None for an exception we do not know."""
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    url = f"https://huggingface.co/{ref.repo_id}"
    if isinstance(exc, GatedRepoError):
        return InputError(f"{ref.repo_id} is a gated model and this machine has no token with access to it.",
                          hint=f"Accept its terms at {url}, then set HF_TOKEN to a read token (or run `hf auth login`).")
    if isinstance(exc, RepositoryNotFoundError):
        has_token = bool(_token())
        why = ("it does not exist or your token cannot see it" if has_token
               else "it does not exist, or it is private and no token is set")
        return InputError(f"the hub has no model {ref.repo_id} that this machine can read: {why}.",
                          hint="Check the id (org/name); for a private model set HF_TOKEN (or run `hf auth login`).")
    if isinstance(exc, RevisionNotFoundError):
        return InputError(f"{ref.repo_id} has no revision {ref.revision!r}.",
                          hint=f"Use a branch, tag or commit listed at {url}/tree/main (or drop @{ref.revision}).")
    if isinstance(exc, LocalEntryNotFoundError):
        offline = _offline()
        why = "HF_HUB_OFFLINE is set and" if offline else "the hub could not be reached and"
        return InputError(f"{why} {ref} is not (completely) in the hub cache at {cache}.",
                          hint=("Run `quantcli download " + str(ref) + "` once with network access"
                                + (" (unset HF_HUB_OFFLINE)" if offline else "") + ", or set HF_HOME to the cache that holds it."))
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        return InputError(f"the hub answered HTTP {status} for {ref}: {str(exc).splitlines()[0]}",
                          hint="Try again later; set HF_HUB_OFFLINE=1 to use only what is already in the cache.")
    if isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__module__.startswith(("httpx", "httpcore")):
        return InputError(f"cannot reach the hub for {ref} ({type(exc).__name__}: {exc}).",
                          hint="Check the network (or HF_ENDPOINT); with HF_HUB_OFFLINE=1 quantcli uses the cache only.")
    return None


def _token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _weight_files(listing: list[str], index: dict | None) -> list[str]:
    """The safetensors a conversion needs: those the index names, else the top-level ones (minus duplicates)."""
    if index is not None:
        weight_map = index.get("weight_map")
        if isinstance(weight_map, dict) and weight_map:
            return sorted({str(v) for v in weight_map.values()})
    top = [f for f in listing if "/" not in f and f.endswith(".safetensors")]
    preferred = [f for f in top if f not in DUPLICATE_WEIGHTS]
    return sorted(preferred or top)


def _cached_listing(repo_id: str, commit: str, cache_dir: str) -> list[str] | None:
    """Every file of the repo at `commit`, from the tree listing huggingface_hub cached; None when absent."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        return sorted(f.path for f in get_cached_repo_tree(repo_id, revision=commit, cache_dir=cache_dir))
    except (CachedRepoTreeNotFoundError, OSError, ValueError, KeyError):
        return None


def download(model: str | HubRef, *, cache_dir: Path | None = None, force: bool = False,
             progress: bool = True) -> Snapshot:
    """Fetch (or find in the hub cache) what converting `model` needs; return the snapshot folder.

    `model` is `org/name` or `org/name@revision` (branch, tag or commit). Errors are InputErrors that say
    what to do: a gated or private model without a token, an unknown revision, no safetensors, offline
    without the files in the cache.
    """
    from huggingface_hub import constants, snapshot_download

    ref = model if isinstance(model, HubRef) else HubRef.parse(model)
    if ref is None:
        raise InputError(f"{model!r} is not a hub model id.", hint="Write it as org/name or org/name@revision.")
    cache = str(Path(cache_dir).expanduser()) if cache_dir is not None else constants.HF_HUB_CACHE
    revision = ref.revision or constants.DEFAULT_REVISION
    blobs_dir = Path(cache) / f"models--{ref.repo_id.replace('/', '--')}" / "blobs"
    before = set(os.listdir(blobs_dir)) if blobs_dir.is_dir() else set()

    def fetch(patterns: list[str], rev: str) -> Path:
        try:
            with _hub_progress(progress):
                return Path(snapshot_download(ref.repo_id, revision=rev, cache_dir=cache, allow_patterns=patterns,
                                              force_download=force))
        except Exception as exc:  # noqa: BLE001 - translated below, re-raised when unknown
            ours = _translate(exc, ref, cache)
            if ours is None:
                raise
            raise ours from exc

    folder = fetch(list(SIDE_FILES), revision)
    commit = folder.name
    listing = _cached_listing(ref.repo_id, commit, cache)
    index = _read_index(folder)
    weights = _weight_files(listing if listing is not None else _local_listing(folder), index)
    if not weights:
        raise _no_safetensors(ref, commit, listing)
    missing = [w for w in weights if not (folder / w).is_file()]
    if missing or force:
        # The commit is pinned now, so this second call needs no repo lookup and cannot drift to a newer commit.
        folder = fetch(weights, commit)
        missing = [w for w in weights if not (folder / w).is_file()]
        if missing:
            raise InputError(f"{ref} at commit {commit[:12]} lacks {len(missing)} weight files (first: {missing[0]}).",
                             hint="Run `quantcli download " + str(ref) + " --force` with network access.")
    if not (folder / "config.json").is_file():
        raise InputError(f"{ref} has no config.json at commit {commit[:12]}.",
                         hint="quantcli converts Hugging Face transformers checkpoints; check the model id.")
    after = set(os.listdir(blobs_dir)) if blobs_dir.is_dir() else set()
    files = _blob_ids(folder)
    fetched = tuple(sorted(n for n, b in files.items() if b in after - before))
    return Snapshot(folder, ref.repo_id, revision, commit, files, fetched)


def _read_index(folder: Path) -> dict | None:
    path = folder / INDEX_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}).", hint="Download it again with --force.") from exc
    return data if isinstance(data, dict) else None


def _local_listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _no_safetensors(ref: HubRef, commit: str, listing: list[str] | None) -> InputError:
    pickled = [f for f in listing or () if f.endswith(PICKLE_SUFFIXES)]
    if pickled:
        hint = (f"It only has pickled weights ({', '.join(pickled[:3])}), which quantcli never loads. Look for a "
                "safetensors revision or conversion of this model (the hub's 'convert to safetensors' PR, say).")
    elif listing is None:
        hint = "Its file list is not in the cache; run once with network access to see what it holds."
    else:
        hint = "Check that it is a transformers checkpoint (it should hold model.safetensors or an index)."
    return InputError(f"{ref.repo_id} has no .safetensors weights at commit {commit[:12]}.", hint=hint)
