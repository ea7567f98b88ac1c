"""The publish stage: the outputs of a run (GGUF files and safetensors folders) + a generated model card -> a
Hugging Face model repo. A quantized safetensors folder given by itself is published whole, with a card that
says how to load it (plan_folder_publish).

The plan (`plan_publish` for a folder, `plan_run_publish` for the manifest of one run, which is what convert
--publish uses) reads every GGUF and its manifest entry (type, verify figures, model-level figures, source commit,
recipe with its publish settings), and every folder output its manifest lists, file by file. GGUF files go at the
repo's root; each folder output under a subfolder named after it, except a run whose only output is one folder,
which goes at the root where loaders look for config.json (docs/pipeline.md says why). The plan decides which
GGUF files must be split (above `max_shard_size`, and always above the hub's 50 GB per-file limit). `run_publish` writes the shards into a hidden staging folder beside the
outputs, then creates the repo and uploads everything in one commit with huggingface_hub (create_repo +
create_commit, which pre-uploads large files through the hub's LFS/Xet path before committing). Nothing is
uploaded when a file failed its verification or changed since its manifest was written.

    plan = plan_publish(Path("out"), repo_id="me/SmolLM2-135M-Instruct-GGUF")
    [f.name for f in plan.files], plan.card.splitlines()[1]
    # -> (['SmolLM2-135M-Instruct-Q8_0.gguf'], 'base_model: HuggingFaceTB/SmolLM2-135M-Instruct')
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError, OutputError
from ..io.gguf_split import SHARD_PATTERN, parse_size, plan_shards, shard_name, split_gguf
from .model_card import (CardFile, CardInfo, FolderCardInfo, RunCardFolder, RunCardInfo, render_card,
                         render_folder_card, render_run_card, scheme_name)
from .verify_model import VERIFY_RECORD

HUB_FILE_LIMIT = parse_size("50G")       # the hub refuses single files above this
CARD_NAME = "README.md"
STAGING_PREFIX = ".quantcli-publish-"

Warn = Callable[[str], None]


@dataclass
class ModelFile:
    """One GGUF of the folder with what its manifest says about it."""

    path: Path
    type: str
    arch: str
    size: int
    bits_per_weight: float
    n_tensor_bytes: list[int]
    sha256: str | None = None
    verify: dict | None = None
    verify_level: str | None = None
    manifest: dict | None = None           # the whole manifest it is listed in
    quality: dict | None = None            # the manifest's model_verify figures (PPL, KLD), when they were computed
    shards: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class FolderUpload:
    """One folder output of a run (its manifest entry) and where its files go in the repo."""

    path: Path
    prefix: str                            # "" (the repo's root) or "<folder name>/"
    format: str                            # the manifest's format: compressed-tensors, bnb-nf4, gptq, awq, dense, ...
    type: str                              # W4A16, NF4, splitquant, ...
    method: str | None
    files: list[tuple[str, int, str | None]]   # (path relative to the folder, bytes, sha256 from the manifest)
    quality: dict | None = None            # the manifest's model_verify figures
    scheme: dict | None = None             # the folder reader's scheme, when it has a quantization_config

    @property
    def size(self) -> int:
        return sum(n for _, n, _ in self.files)


@dataclass
class PublishPlan:
    repo_id: str
    private: bool
    max_shard_size: int
    files: list[ModelFile]
    card: str
    commit_message: str
    folder: Path
    kind: str = "gguf"                     # or "folder": a quantized safetensors folder, every file uploaded
    outputs: list[FolderUpload] = field(default_factory=list)   # folder outputs of a run, each under its prefix

    def uploads(self) -> list[tuple[str, int]]:
        """(path in repo, bytes) of everything the commit adds, the card last."""
        out: list[tuple[str, int]] = []
        for f in self.files:
            if f.shards:
                per = _shard_sizes(f, self.max_shard_size)
                out.extend(zip(f.shards, per))
            else:
                out.append((f.name, f.size))
        for up in self.outputs:
            out.extend((up.prefix + name, size) for name, size, _ in up.files)
        out.append((CARD_NAME, len(self.card.encode("utf-8"))))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "private": self.private, "max_shard_size": self.max_shard_size,
                "commit_message": self.commit_message,
                "files": [{"file": f.name, "type": f.type, "bytes": f.size, "bits_per_weight": round(f.bits_per_weight, 4),
                           "sha256": f.sha256, "verify": f.verify, "shards": f.shards} for f in self.files],
                "folders": [{"folder": str(up.path), "path_in_repo": up.prefix or "/", "format": up.format,
                             "type": up.type} for up in self.outputs],
                "uploads": [{"path_in_repo": p, "bytes": n} for p, n in self.uploads()],
                "card": self.card}


def _shard_sizes(f: ModelFile, max_bytes: int) -> list[int]:
    """Approximate shard sizes for display: their tensor bytes (headers are small next to them)."""
    return [sum(f.n_tensor_bytes[i] for i in members) for members in plan_shards(f.n_tensor_bytes, max_bytes)]


def _describe(path: Path) -> tuple[str, str, int, float, list[int]]:
    """(mix from general.file_type, arch, bytes, bits per weight, tensor byte sizes) from the GGUF header."""
    from ..io.gguf_layout import read_layout
    from ..quant.mixes import MIXES

    layout = read_layout(path)
    ftype = layout.values.get("general.file_type")
    mix = "?"
    if isinstance(ftype, int):
        mix = next((m.name for m in MIXES.values() if int(m.ftype) == ftype), f"file type {ftype}")
    arch = str(layout.values.get("general.architecture", "?"))
    return mix, arch, layout.size, layout.bits_per_weight, [t.n_bytes for t in layout.tensors]


def _manifest_entries(folder: Path) -> dict[Path, tuple[dict, dict]]:
    """Resolved output path -> (its manifest entry, the manifest), newest manifest winning."""
    from ..io.manifests import read_manifests

    out: dict[Path, tuple[dict, dict]] = {}
    for manifest in sorted(read_manifests(folder), key=lambda m: str(m.get("created", ""))):
        base = Path(manifest["_path"]).parent
        for entry in manifest.get("outputs", []):
            if isinstance(entry, dict) and isinstance(entry.get("file"), str):
                out[(base / entry["file"]).resolve()] = (entry, manifest)
    return out


def _settings(manifests: list[dict], recipe: Any | None) -> dict[str, Any]:
    """The publish section to fall back on: --recipe's, else the one recorded in the folder's manifests."""
    if recipe is not None:
        from dataclasses import asdict

        return asdict(recipe.publish)
    for m in manifests:
        section = (m.get("recipe") or {}).get("publish")
        if isinstance(section, dict):
            return section
    return {}


def plan_publish(folder: Path, repo_id: str | None = None, *, private: bool | None = None,
                 max_shard_size: str | None = None, base_model: str | None = None, quantized_by: str | None = None,
                 recipe: Any | None = None, commit_message: str | None = None, warn: Warn | None = None) -> PublishPlan:
    """Everything the upload will do, computed from the folder without network access or writing anything: its
    GGUF files, and the folder outputs its run manifests list (each under a subfolder of its own)."""
    warn = warn or (lambda message: None)
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder.", hint="Give the output folder of quantcli convert/quantize.")
    entries = _manifest_entries(folder)
    outputs = [(path, entry, manifest) for path, (entry, manifest) in entries.items()
               if entry.get("kind") == "folder" and path.is_dir()]
    if (folder / "config.json").is_file() and not any(folder.glob("*.gguf")) and not outputs:
        return plan_folder_publish(folder, repo_id, private=private, base_model=base_model, quantized_by=quantized_by,
                                   recipe=recipe, commit_message=commit_message)
    ggufs = sorted(p for p in folder.glob("*.gguf") if not p.name.startswith(".") and p.is_file())
    if not ggufs and not outputs:
        raise InputError(f"{folder} has no .gguf files to publish.",
                         hint="Convert into it first: quantcli convert MODEL --recipe release -o " + str(folder))
    manifests = list({id(m): m for _, m in entries.values()}.values())
    settings = _settings(manifests, recipe)
    names = _template_names(manifests)
    repo = publish_repo_id(repo_id, settings, "GGUF", **names)
    gguf_entries = [(path, *entries.get(path.resolve(), (None, None))) for path in ggufs]
    return _assemble(folder, repo, gguf_entries, sorted(outputs, key=lambda o: str(o[0])), settings,
                     private=private, max_shard_size=max_shard_size, base_model=base_model,
                     quantized_by=quantized_by, commit_message=commit_message, warn=warn)


def plan_run_publish(manifest_path: Path, repo_id: str, *, private: bool | None = None,
                     max_shard_size: str | None = None, base_model: str | None = None,
                     quantized_by: str | None = None, commit_message: str | None = None,
                     warn: Warn | None = None) -> PublishPlan:
    """The publish stage of one run (pipeline/publish_stage.py): every output its manifest lists, GGUF files and
    folders, to `repo_id` (already expanded and checked)."""
    from ..io.files import load_json

    manifest = load_json(Path(manifest_path), "run manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("outputs"), list):
        raise InputError(f"{manifest_path} is not a run manifest.", hint="Run quantcli convert again to rewrite it.")
    base = Path(manifest_path).parent
    ggufs, outputs = [], []
    for entry in manifest["outputs"]:
        path = (base / entry["file"]).resolve()
        if entry.get("kind") == "folder":
            outputs.append((path, entry, manifest))
        else:
            ggufs.append((path, entry, manifest))
    settings = _settings([manifest], None)
    return _assemble(base, publish_repo_id(repo_id, {}, "GGUF"), ggufs, outputs, settings, private=private,
                     max_shard_size=max_shard_size, base_model=base_model, quantized_by=quantized_by,
                     commit_message=commit_message, warn=warn or (lambda message: None))


def _assemble(folder: Path, repo_id: str, ggufs: list[tuple[Path, dict | None, dict | None]],
              outputs: list[tuple[Path, dict, dict]], settings: dict[str, Any], *, private: bool | None,
              max_shard_size: str | None, base_model: str | None, quantized_by: str | None,
              commit_message: str | None, warn: Warn) -> PublishPlan:
    """The plan for GGUF files (at the repo's root, split when too large) and folder outputs (each under its own
    subfolder; a run whose only output is one folder puts it at the root, where loaders look for config.json)."""
    from .. import __version__

    limit = parse_size(max_shard_size or settings.get("max_shard_size") or "50G")
    limit = min(limit, HUB_FILE_LIMIT)
    files = [_gguf_file(path, entry, manifest, limit, warn) for path, entry, manifest in ggufs]
    root = not files and len(outputs) == 1
    uploads = [_folder_upload(path, entry, "" if root else path.name + "/") for path, entry, _ in outputs]
    _refuse_shared_paths(files, uploads)
    base = base_model or settings.get("base_model")
    by = quantized_by or settings.get("quantized_by")
    if uploads:
        card = render_run_card(_run_card_info(repo_id, files, uploads, [m for _, _, m in outputs], base, by,
                                              __version__))
    else:
        card = render_card(_card_info(repo_id, files, base, by, __version__))
    kinds = [f.type for f in files] + [f"{up.type} {up.format}" for up in uploads]
    count = len(files) + len(uploads)
    what = "GGUF file" if not uploads else "output"
    message = (commit_message or settings.get("message")
               or f"Upload {count} {what}{'s' if count != 1 else ''} ({', '.join(kinds)}) with quantcli {__version__}")
    is_private = private if private is not None else bool(settings.get("private", False))
    return PublishPlan(repo_id, is_private, limit, files, card, message, folder, outputs=uploads)


def _gguf_file(path: Path, entry: dict | None, manifest: dict | None, limit: int, warn: Warn) -> ModelFile:
    """One GGUF with what its manifest entry says, refused when it failed a check or changed since."""
    if not path.is_file():
        raise InputError(f"{path} is listed in its run manifest but is not there.",
                         hint="Re-create it with quantcli convert, then publish again.")
    if SHARD_PATTERN.match(path.name):
        warn(f"{path.name} is already a shard; publishing it as is.")
    mix, arch, size, bpw, sizes = _describe(path)
    f = ModelFile(path, mix, arch, size, bpw, sizes)
    if entry is None:
        warn(f"{path.name} has no run manifest beside it: its card row will have no verify figures.")
    else:
        f.type = str(entry.get("type") or mix)
        f.sha256 = entry.get("sha256")
        f.verify = entry.get("verify_summary")
        f.verify_level = entry.get("verify_level")
        f.quality = entry.get("model_verify")
        f.manifest = manifest
        if entry.get("bytes") not in (None, size):
            raise InputError(f"{path.name} has {size} bytes but its manifest says {entry.get('bytes')}.",
                             hint="It changed after it was made; re-create it with quantcli convert.")
        _refuse_failed(path.name, entry)
    count = len(plan_shards(sizes, limit))
    if count > 1:
        f.shards = [shard_name(path.name.removesuffix(".gguf"), i, count) for i in range(count)]
    return f


def _refuse_failed(name: str, entry: dict) -> None:
    """An output whose verify or model-level verify failed when it was made is never published."""
    summary, quality = entry.get("verify_summary"), entry.get("model_verify")
    if isinstance(summary, dict) and summary.get("ok") is False:
        raise InputError(f"{name} failed verification when it was made; it will not be published.",
                         hint="Fix the recipe's thresholds or the model, re-run convert, or remove the file.")
    if isinstance(quality, dict) and quality.get("ok") is False:
        raise InputError(f"{name} missed its verify thresholds ({quality.get('failure')}); it will not be published.",
                         hint="Re-quantize, or relax the recipe's verify.max_kld / max_ppl_ratio and re-run convert.")


def _folder_upload(path: Path, entry: dict, prefix: str) -> FolderUpload:
    """A folder output as its manifest lists it: every file with its sha256, checked against the disk now (sizes)
    and again at upload (sha256). quantcli's verify record stays local; the folder's own README.md gives way to
    the repo's card at the root."""
    from ..io.checkpoint import Checkpoint
    from ..io.quantized_folder import open_folder_reader

    if not path.is_dir():
        raise InputError(f"{path} is listed in its run manifest but is not there.",
                         hint="Re-create it with quantcli convert, then publish again.")
    _refuse_failed(path.name + "/", entry)
    listed = entry.get("files")
    if not isinstance(listed, dict) or not listed:
        raise InputError(f"the manifest entry of {path} lists no files.", hint="Re-create it with quantcli convert.")
    on_disk = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}
    if set(listed) != on_disk:
        diff = sorted(set(listed) ^ on_disk)[0]
        raise InputError(f"{path} changed since it was made ({diff} was added or removed).",
                         hint="Re-create it with quantcli convert, then publish again.")
    files = [(name, (path / name).stat().st_size, sha) for name, sha in sorted(listed.items())
             if name != VERIFY_RECORD and not (prefix == "" and name == CARD_NAME)]
    scheme = None
    try:
        reader = open_folder_reader(Checkpoint.open(path))
        scheme = reader.scheme if reader is not None else None
    except InputError:
        scheme = None            # the three-branch SplitQuantV2 form: no loader reads it, the card says so
    return FolderUpload(path, prefix, str(entry.get("format") or "?"), str(entry.get("type") or "?"),
                        entry.get("method"), files, entry.get("model_verify"), scheme)


def _refuse_shared_paths(files: list[ModelFile], uploads: list[FolderUpload]) -> None:
    """No two outputs may write the same path in the repo (nor the card's)."""
    taken: dict[str, str] = {CARD_NAME: "the model card"}
    for f in files:
        for name in f.shards or [f.name]:
            if name in taken:
                raise InputError(f"{f.name} and {taken[name]} would both be {name} in the repo.",
                                 hint="Rename one of the outputs (its recipe `file:`), then publish again.")
            taken[name] = f.name
    for up in uploads:
        top = up.prefix.rstrip("/")
        if top and top in taken:
            raise InputError(f"the folder {up.path} and {taken[top]} would both be {top} in the repo.",
                             hint="Give the folder output another `dir:` name, then publish again.")
        if top:
            taken[top] = str(up.path)


def _template_names(manifests: list[dict]) -> dict[str, str]:
    """{model} and {recipe} of a repo template, from the (newest) manifest of the folder."""
    for m in reversed(manifests):
        src = m.get("source") or {}
        model = (src.get("repo_id") or "").split("/")[-1] or Path(str(src.get("path") or "")).name
        return {"model": model, "recipe": str((m.get("recipe") or {}).get("name") or "")}
    return {}


def expand_repo_id(template: str, *, model: str, recipe: str) -> str:
    """A publish.repo template ({model}, {recipe}; recipe/schema.py checks its fields) with the run's names."""
    return template.replace("{model}", model).replace("{recipe}", recipe)


def publish_repo_id(repo_id: str | None, settings: dict[str, Any], suffix: str, *, model: str | None = None,
                    recipe: str | None = None, flag: str = "--repo") -> str:
    """The repo to publish to (the command line's, else the publish section's), templates expanded, checked
    against the hub's naming rules: no path traversal, no revision, org/name only."""
    from .download import HubRef, repo_id_problem

    repo_id = repo_id or settings.get("repo")
    if repo_id and "{" in repo_id and model is not None:
        repo_id = expand_repo_id(repo_id, model=model, recipe=recipe or "")
    problem = repo_id_problem(repo_id) if repo_id else None
    if not repo_id or problem or HubRef.parse(repo_id) is None or "@" in repo_id:
        why = f" ({problem})" if problem else ""
        raise InputError(f"{repo_id!r} is not a repo id to publish to{why}." if repo_id else "no repo to publish to.",
                         hint=f"Pass {flag} you/model-{suffix} (or set publish.repo in the recipe).")
    return repo_id


def plan_folder_publish(folder: Path, repo_id: str | None = None, *, private: bool | None = None,
                        base_model: str | None = None, quantized_by: str | None = None, recipe: Any | None = None,
                        commit_message: str | None = None) -> PublishPlan:
    """A quantized safetensors folder: every file of it (weights, config, tokenizer, generation config) goes up as
    it is, with a card that says how to load it; verify --data's figures go on the card when recorded."""
    from .. import __version__
    from ..io.checkpoint import Checkpoint
    from ..io.files import load_json
    from ..io.quantized_folder import folder_method, open_folder_reader
    from ..io.files import file_sha256

    ckpt = Checkpoint.open(folder)
    reader = open_folder_reader(ckpt)
    if reader is None:
        raise InputError(f"{folder} has neither .gguf files nor a quantized model (no quantization_config).",
                         hint="Publish the output of quantcli convert (GGUF files, or --format compressed-tensors|bnb-nf4).")
    settings = _settings([], recipe)
    name = scheme_name(reader.scheme).split()[0]
    repo_id = publish_repo_id(repo_id, settings, name)
    paths = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name not in (CARD_NAME, VERIFY_RECORD) and ".partial" not in p.name)
    files = [ModelFile(p, "safetensors" if p.suffix == ".safetensors" else "file", ckpt.config.get("model_type", "?"),
                       p.stat().st_size, 0.0, [], file_sha256(p) if p.suffix == ".safetensors" else None)
             for p in paths]
    quality = None
    record = folder / VERIFY_RECORD
    if record.is_file():
        quality = load_json(record, VERIFY_RECORD)
        if not isinstance(quality, dict):
            raise InputError(f"{record} is not a verify record.", hint=f"Delete it, or re-run quantcli verify {folder} --data ...")
        if quality.get("ok") is False:
            raise InputError(f"{folder} failed its verify thresholds ({quality.get('failure')}); it will not be published.",
                             hint=f"Re-quantize, or run quantcli verify {folder} --data ... again with other thresholds.")
    weights = sum(m.shape[0] * m.shape[1] for m in reader.modules.values())
    stored = sum(m.stored_bytes(ckpt) for m in reader.modules.values())
    info = FolderCardInfo(repo_id=repo_id, quantized_by=quantized_by or repo_id.split("/")[0], scheme=reader.scheme,
                          files=[CardFile(f.name, f.type, f.size, 0.0, (), f.sha256) for f in files if f.sha256],
                          n_modules=len(reader.modules), bits_per_weight=8.0 * stored / weights if weights else None,
                          total_bytes=sum(f.size for f in files), method=folder_method(ckpt),
                          base_model=base_model, quantcli_version=__version__, quality=quality)
    card = render_folder_card(info)
    message = commit_message or f"Upload a {name} model ({reader.scheme.get('quant_method')}) with quantcli {__version__}"
    is_private = private if private is not None else bool(settings.get("private", False))
    return PublishPlan(repo_id, is_private, HUB_FILE_LIMIT, files, card, message, folder, kind="folder")


def _card_info(repo_id: str, files: list[ModelFile], base_model: str | None, quantized_by: str | None,
               version: str) -> CardInfo:
    sources = [f.manifest.get("source") or {} for f in files if f.manifest]
    recipes = [(f.manifest.get("recipe") or {}).get("name") for f in files if f.manifest]
    base = base_model or next((s.get("repo_id") for s in sources if s.get("repo_id")), None)
    commit = next((s.get("commit") for s in sources if s.get("repo_id") == base and s.get("commit")), None)
    card_files = [CardFile(f.name, f.type, f.size, f.bits_per_weight, tuple(f.shards), f.sha256, f.verify, f.verify_level,
                           f.quality) for f in files]
    return CardInfo(repo_id=repo_id, quantized_by=quantized_by or repo_id.split("/")[0], files=card_files,
                    base_model=base, source_commit=commit, arch=files[0].arch if files else None,
                    recipe=", ".join(sorted({r for r in recipes if r})) or None, quantcli_version=version)


def _run_card_info(repo_id: str, files: list[ModelFile], uploads: list[FolderUpload], manifests: list[dict],
                   base_model: str | None, quantized_by: str | None, version: str) -> RunCardInfo:
    """The card of a run with folder outputs: the GGUF part as _card_info has it, plus each folder."""
    gguf = _card_info(repo_id, files, base_model, quantized_by, version)
    sources = [m.get("source") or {} for m in manifests]
    base = gguf.base_model or next((s.get("repo_id") for s in sources if s.get("repo_id")), None)
    commit = gguf.source_commit or next((s.get("commit") for s in sources if s.get("repo_id") == base), None)
    recipes = {(m.get("recipe") or {}).get("name") for m in manifests} | ({gguf.recipe} if gguf.recipe else set())
    folders = [RunCardFolder(up.prefix, up.format, up.type, up.method, up.size, up.scheme, up.quality,
                             tuple(CardFile(n, "file", size, 0.0, (), sha) for n, size, sha in up.files
                                   if n.endswith(".safetensors")))
               for up in uploads]
    return RunCardInfo(repo_id=repo_id, quantized_by=gguf.quantized_by, ggufs=gguf.files, folders=folders,
                       base_model=base, source_commit=commit, arch=gguf.arch,
                       recipe=", ".join(sorted(r for r in recipes if r)) or None, quantcli_version=version)


@dataclass(frozen=True)
class PublishResult:
    repo_id: str
    commit_url: str | None
    uploaded: list[str]
    commit: str | None = None              # the commit's id on the hub

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}"


def hub_api() -> Any:
    """The HfApi a real upload goes through, refused up front (before any conversion work) when it cannot work:
    offline mode, or no token. Tests replace this function with a recording double."""
    from huggingface_hub import HfApi, constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise InputError("HF_HUB_OFFLINE is set, and publishing needs the hub.",
                         hint="Unset HF_HUB_OFFLINE, or use --dry-run to see the plan.")
    if not get_token():
        raise InputError("publishing needs a Hugging Face token with write access, and none is set.",
                         hint="Set HF_TOKEN (or run `hf auth login`); --dry-run shows the plan without one.")
    return HfApi()


def run_publish(plan: PublishPlan, *, api: Any | None = None, warn: Warn | None = None) -> PublishResult:
    """Split what must be split, create the repo, upload files + card in one commit; staging is removed after."""
    from huggingface_hub import CommitOperationAdd

    if api is None:
        api = hub_api()
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=plan.folder))
    try:
        operations = []
        for f in plan.files:
            if f.shards:
                parts = split_gguf(f.path, staging, plan.max_shard_size, prefix=f.name.removesuffix(".gguf"))
                if [p.name for p in parts] != f.shards:
                    raise OutputError(f"splitting {f.name} gave {len(parts)} parts, the plan said {len(f.shards)}.",
                                      hint="Please report this with the file's `quantcli inspect` output.")
                operations += [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in parts]
            else:
                op = CommitOperationAdd(path_in_repo=f.name, path_or_fileobj=str(f.path))
                if f.sha256 and op.upload_info.sha256.hex() != f.sha256:
                    raise InputError(f"{f.name} changed since it was made (its sha256 differs from the manifest).",
                                     hint="Re-create it with quantcli convert, then publish again.")
                operations.append(op)
        for up in plan.outputs:
            for name, _, sha in up.files:
                op = CommitOperationAdd(path_in_repo=up.prefix + name, path_or_fileobj=str(up.path / name))
                if sha and op.upload_info.sha256.hex() != sha:
                    raise InputError(f"{up.path / name} changed since it was made (its sha256 differs from the manifest).",
                                     hint="Re-create the folder with quantcli convert, then publish again.")
                operations.append(op)
        operations.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=plan.card.encode("utf-8")))
        try:
            api.create_repo(plan.repo_id, private=plan.private, exist_ok=True, repo_type="model")
            info = api.create_commit(plan.repo_id, operations, commit_message=plan.commit_message, repo_type="model")
        except Exception as exc:  # noqa: BLE001 - hub errors become ours, others propagate
            ours = _hub_error(exc, plan.repo_id)
            if ours is None:
                raise
            raise ours from exc
        return PublishResult(plan.repo_id, getattr(info, "commit_url", None), [op.path_in_repo for op in operations],
                             getattr(info, "oid", None))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _hub_error(exc: Exception, repo_id: str) -> InputError | None:
    """What the hub (or the way to it) said, as one line with the fix; None for errors that are not the hub's."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return InputError("HF_HUB_OFFLINE is set, and publishing needs the hub.", hint="Unset HF_HUB_OFFLINE.")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        if status in (401, 403):
            return InputError(f"the hub refused to let this token write to {repo_id} (HTTP {status}).",
                              hint="Use a token with write access to that namespace (HF_TOKEN or `hf auth login`).")
        if status == 404:
            return InputError(f"the hub has no repo {repo_id} this token can see (HTTP 404).",
                              hint="Check the namespace in the repo id, and that the token may create repos in it.")
        return InputError(f"the hub answered HTTP {status} while publishing to {repo_id}: {first}",
                          hint="Run the same command again: files already uploaded are not sent twice.")
    module = type(exc).__module__.split(".")[0]
    if isinstance(exc, (ConnectionError, TimeoutError)) or module in ("httpx", "httpx2", "requests", "urllib3"):
        return InputError(f"could not reach the hub while publishing to {repo_id} ({type(exc).__name__}: "
                          f"{(str(exc).splitlines() or [''])[0]}).",
                          hint="Check the network (and HF_ENDPOINT), then run the same command again.")
    return None
