"""The publish stage of a run: after every other stage succeeded, the outputs the run manifest lists (GGUF files
and folders) go to one Hugging Face model repo in one commit, with a card that says how to load each
(stages/publish.py plans and uploads; stages/model_card.py writes the card).

What to publish comes from `convert --publish REPO` (ConvertRequest.publish) or from a recipe whose `publish:`
section sets `on_convert: true`; the command line wins over the recipe key by key. Everything that can be refused
without the outputs is refused by `check_publish` before the runner downloads or writes anything: a repo id (or
template) the hub would not accept, offline mode, no token. A hub failure at the end is a one-line error (exit 2);
the outputs and their manifest stay as written, and the manifest records the failed stage.

    target = check_publish(ConvertRequest(model="./tiny-llama", recipe=r, publish=PublishRequest("me/{model}-GGUF")))
    target.repo_id
    # -> 'me/tiny-llama-GGUF'
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:
    from .convert import ConvertRequest, ConvertResult
    from .runner import Run


@dataclass(frozen=True)
class PublishRequest:
    """Publish the run's outputs: what `convert --publish` gives (None: the recipe's publish section decides)."""

    repo: str | None = None                # org/name, or a template with {model} and {recipe}
    private: bool | None = None
    max_shard_size: str | None = None
    base_model: str | None = None
    quantized_by: str | None = None
    message: str | None = None
    api: Any = field(default=None, compare=False, repr=False)   # an HfApi; None: stages.publish.hub_api()


@dataclass(frozen=True)
class PublishTarget:
    """A checked publish request: the repo id expanded, the settings merged, the api ready."""

    repo_id: str
    private: bool
    max_shard_size: str | None
    base_model: str | None
    quantized_by: str | None
    message: str | None
    api: Any = field(compare=False, repr=False)

    def record(self, status: str) -> dict[str, Any]:
        """The head of the manifest's and the JSON report's `publish` record: where the outputs go, and how far."""
        return {"repo": self.repo_id, "private": self.private, "url": f"https://huggingface.co/{self.repo_id}",
                "status": status}


def model_name(model: str) -> str:
    """{model} of a repo template, known before anything is downloaded: a local folder's name (the repo's for a
    hub-cache snapshot), else the name of a hub id org/name[@revision]. The runner's outputs use the same name."""
    from ..stages.download import HubRef, snapshot_of_folder

    path = Path(model).expanduser()
    if path.exists():
        return snapshot_of_folder(path).name
    ref = HubRef.parse(model)
    return ref.repo_id.split("/")[-1] if ref is not None else path.name


def check_publish(request: ConvertRequest) -> PublishTarget | None:
    """The publish stage this request asks for, checked before any work (InputError, exit 2), or None."""
    section = request.recipe.publish
    given = request.publish
    if given is None and not section.on_convert:
        return None
    # imported only now: the hub and model-card machinery costs start-up time a run without publish never uses
    from ..stages.publish import publish_repo_id

    given = given or PublishRequest()
    repo = publish_repo_id(given.repo or section.repo, {}, "GGUF", model=model_name(request.model),
                           recipe=request.recipe.name, flag="--publish")
    if given.max_shard_size or section.max_shard_size:
        from ..io.gguf_split import parse_size

        parse_size(given.max_shard_size or section.max_shard_size or "")      # a bad size fails now, not after the run
    api = given.api
    if api is None and not request.dry_run:
        from ..stages.publish import hub_api

        api = hub_api()
    return PublishTarget(repo, given.private if given.private is not None else section.private,
                         given.max_shard_size or section.max_shard_size, given.base_model or section.base_model,
                         given.quantized_by or section.quantized_by, given.message, api)


def publish_outputs(run: Run, result: ConvertResult, target: PublishTarget) -> None:
    """The publish stage: plan from the run manifest, upload in one commit, and add the stage to the manifest."""
    from ..stages.publish import plan_run_publish, run_publish

    if result.manifest is None:
        raise InputError("publishing a run needs its run manifest, and this run wrote none.",
                         hint="Run convert with its manifest on (the CLI always writes one).")
    started = time.perf_counter()
    record = target.record("started")
    with run.stage("publish", target.repo_id) as rec:
        try:
            plan = plan_run_publish(result.manifest, target.repo_id, private=target.private,
                                    max_shard_size=target.max_shard_size, base_model=target.base_model,
                                    quantized_by=target.quantized_by, commit_message=target.message, warn=run.warn)
            done = run_publish(plan, api=target.api, warn=run.warn)
        except InputError as exc:
            rec.status = "failed"
            record.update(status="failed", error=str(exc), seconds=round(time.perf_counter() - started, 3))
            _add_to_manifest(result.manifest, record, rec)
            raise
        rec.status = "uploaded"
        record.update(status="uploaded", commit=done.commit, commit_url=done.commit_url, files=done.uploaded,
                      seconds=round(time.perf_counter() - started, 3))
    result.publish = record
    _add_to_manifest(result.manifest, record, rec)


def _add_to_manifest(path: Path, record: dict[str, Any], stage: Any) -> None:
    """The manifest gets `publish` (repo, status, commit, url, files) and the stage in `stages`."""
    import json

    from .manifest import write_manifest

    manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    manifest["publish"] = record
    manifest.setdefault("stages", []).append({**stage.to_json(), "seconds": record["seconds"]})
    write_manifest(path, manifest)
