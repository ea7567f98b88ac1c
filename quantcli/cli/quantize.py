"""`quantcli quantize SNAPSHOT`: the quantize stage alone, on a local folder, without the verify stage."""
# no `from __future__ import annotations`: typer would compile every string annotation at each start

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import ForceOpt, JsonOpt, ThreadsOpt, run


def quantize(
    snapshot: Annotated[Path, typer.Argument(help="A local Hugging Face model folder (e.g. the folder `quantcli download` printed).")],
    type: Annotated[Optional[str], typer.Option("--type", help="Output type or llama.cpp mix: F16, Q8_0, Q4_0, Q4_K_M, ...")] = None,
    recipe: Annotated[Optional[str], typer.Option("--recipe", "-r", help="A recipe file or built-in name; all its outputs from one read.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (files are named <model>-<type>.gguf), or one .gguf file.")] = Path("."),
    imatrix: Annotated[Optional[Path], typer.Option("--imatrix", help="Importance matrix from llama-imatrix (GGUF or legacy .dat).")] = None,
    threads: ThreadsOpt = 0,
    force: ForceOpt = False,
    json: JsonOpt = False,
) -> None:
    """Quantize a local checkpoint into GGUF files, and nothing else (no download, no verify).

    The same stage `convert` runs, with the same cache: outputs already made from the same inputs are
    skipped. Check the result with `quantcli verify`.

    [bold]Examples[/]

      quantcli quantize ./snapshot --type Q8_0 -o out/          # writes out/<model>-Q8_0.gguf
      quantcli quantize ./snapshot --recipe release -o out/
      quantcli verify out/snapshot-Q8_0.gguf --source ./snapshot
    """
    def body() -> None:
        from ..errors import InputError
        from ..pipeline.convert import ConvertRequest, recipe_from_type
        from ..recipe import resolve_recipe
        from .convert import execute

        if recipe and type:
            raise InputError("--recipe and --type cannot be combined.", hint="Give one of them.")
        rec = resolve_recipe(recipe) if recipe else recipe_from_type(type)
        request = ConvertRequest(model=str(snapshot), recipe=rec, output=output, threads=threads, verify="none",
                                 imatrix=imatrix, force=force, local_only=True)
        execute(request, json=json)

    run(body)
