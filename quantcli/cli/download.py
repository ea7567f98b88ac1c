"""`quantcli download org/name[@revision]`: the download stage alone, into the shared Hugging Face cache."""
# no `from __future__ import annotations`: typer would compile every string annotation at each start

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import ForceOpt, JsonOpt, err, out, progress_enabled, print_json, run


def download(
    model: Annotated[str, typer.Argument(help="A hub model id, org/name, optionally pinned: org/name@v1.0, @main, @<commit>.")],
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Hub cache folder (default: HF_HUB_CACHE, i.e. $HF_HOME/hub, shared with transformers).")] = None,
    force: ForceOpt = False,
    json: JsonOpt = False,
) -> None:
    """Fetch what a conversion needs (config, tokenizer, safetensors; never pickled .bin/.pt) and print the folder.

    Files already in the hub cache are not fetched again. HF_TOKEN is used for gated and private models;
    with HF_HUB_OFFLINE=1 only the cache is read. The folder printed on stdout is what `quantcli quantize`
    takes; the resolved commit is printed on stderr (and recorded in every run manifest).

    [bold]Examples[/]

      quantcli download HuggingFaceTB/SmolLM2-135M-Instruct
      quantcli download org/model@v1.0
      quantcli quantize "$(quantcli download org/model@v1.0)" --type Q8_0 -o out/
    """
    def body() -> None:
        from ..stages.download import download as fetch

        snap = fetch(model, cache_dir=cache_dir, force=force, progress=progress_enabled())
        if json:
            print_json(snap.to_json())
            return
        fetched = len(snap.fetched)
        state = (f"fetched {fetched} of {len(snap.files)} files" if fetched
                 else f"all {len(snap.files)} files were already in the hub cache; nothing fetched")
        err.print(f"{snap.repo_id} @ {snap.revision} -> commit {snap.commit}: {state}", highlight=False)
        out.print(str(snap.path), highlight=False, soft_wrap=True)

    run(body)
