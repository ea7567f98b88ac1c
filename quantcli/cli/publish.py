"""`quantcli publish FOLDER --repo me/model-GGUF`: upload the outputs of a folder (its GGUF files and the folder
outputs its run manifests list, or a whole quantized safetensors folder) with a generated model card."""
# no `from __future__ import annotations`: typer would compile every string annotation at each start

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import JsonOpt, err, human_bytes, out, print_json, run, warn


def publish(
    folder: Annotated[Path, typer.Argument(help="The output folder of convert/quantize (GGUF files and their manifests), or a quantized safetensors folder.")],
    repo: Annotated[Optional[str], typer.Option("--repo", help="The model repo to create or update: you/model-GGUF. Default: publish.repo of the recipe.")] = None,
    private: Annotated[Optional[bool], typer.Option("--private/--public", help="Visibility of a new repo. Default: publish.private of the recipe, else public.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (files, shards, card, commit) and upload nothing.")] = False,
    max_shard_size: Annotated[Optional[str], typer.Option("--max-shard-size", help="Split larger files gguf-split style, e.g. 2G (default: the recipe's, else the hub's 50G limit).")] = None,
    base_model: Annotated[Optional[str], typer.Option("--base-model", help="The source model's hub id for the card (default: from the manifests).")] = None,
    quantized_by: Annotated[Optional[str], typer.Option("--quantized-by", help="Who made the files, for the card (default: the repo's namespace).")] = None,
    recipe: Annotated[Optional[str], typer.Option("--recipe", "-r", help="Take repo/private/max_shard_size from this recipe's publish section.")] = None,
    message: Annotated[Optional[str], typer.Option("--message", "-m", help="Commit message.")] = None,
    json: JsonOpt = False,
) -> None:
    """Publish GGUF files and quantized folders to the Hugging Face hub with a generated model card.

    The card has the front matter the hub reads (base_model, tags gguf/quantized, quantized_by), a table of
    files with type, size, bits per weight and verify figures, and how to run them with llama.cpp and Ollama.
    Files above the shard size are split into <name>-00001-of-0000N.gguf parts that llama.cpp loads.
    Folder outputs that the folder's run manifests list (a recipe's format: outputs) go up too, each under a
    subfolder named after it, and the card says how to load each (convert --publish does the same at the end
    of a run).
    A quantized safetensors folder (convert --format compressed-tensors|bnb-nf4) is uploaded whole; its card
    gives the scheme and method, how to load it with transformers and vLLM, and the PPL/KLD figures of
    `quantcli verify FOLDER --data` when that has been run.
    Needs HF_TOKEN (or `hf auth login`) with write access, except with --dry-run.

    [bold]Examples[/]

      quantcli publish out/ --repo me/SmolLM2-135M-Instruct-GGUF --dry-run
      quantcli publish out/ --repo me/SmolLM2-135M-Instruct-GGUF --private
      quantcli publish out/ --repo me/big-model-GGUF --max-shard-size 2G
      quantcli publish smol-W4A16/ --repo me/SmolLM2-135M-Instruct-W4A16 --base-model HuggingFaceTB/SmolLM2-135M-Instruct
    """
    def body() -> None:
        from ..recipe import resolve_recipe
        from ..stages.publish import plan_publish, run_publish

        plan = plan_publish(folder, repo, private=private, max_shard_size=max_shard_size, base_model=base_model,
                            quantized_by=quantized_by, recipe=resolve_recipe(recipe) if recipe else None,
                            commit_message=message, warn=warn)
        if dry_run:
            if json:
                print_json({"dry_run": True, **plan.to_json()})
                return
            print_plan(plan)
            return
        result = run_publish(plan, warn=warn)
        if json:
            print_json({"dry_run": False, **plan.to_json(), "commit_url": result.commit_url,
                        "uploaded": result.uploaded})
            return
        out.print(f"published {len(result.uploaded)} files to https://huggingface.co/{result.repo_id}", highlight=False)
        if result.commit_url:
            out.print(f"commit: {result.commit_url}", highlight=False)

    run(body)


def print_plan(plan) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table

    visibility = "private" if plan.private else "public"
    table = Table(title=f"would create or update {plan.repo_id} ({visibility}) with one commit: {plan.commit_message!r}",
                  title_justify="left")
    for col in ("path in repo", "bytes", "from"):
        table.add_column(col, justify="right" if col == "bytes" else "left")
    sources = {}
    for f in plan.files:
        for s in f.shards:
            sources[s] = f"{f.name} ({f.type}), part of {len(f.shards)}"
        sources.setdefault(f.name, f.name if plan.kind == "folder" else f"{f.name} ({f.type}, {f.bits_per_weight:.2f} bits per weight)")
    for up in plan.outputs:
        for name, _, _ in up.files:
            sources[up.prefix + name] = f"{up.path.name}/ ({up.type} {up.format})"
    for name, size in plan.uploads():
        table.add_row(name, human_bytes(size), sources.get(name, "generated model card"))
    out.print(table)
    err.print("model card (README.md):", highlight=False)
    out.print(plan.card, markup=False, highlight=False)
