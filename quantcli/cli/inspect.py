"""`quantcli inspect PATH`: metadata and tensor table of a GGUF file or a Hugging Face safetensors folder."""
from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated

import typer

from ._common import JsonOpt, human_bytes, out, run


def inspect(
    path: Annotated[Path, typer.Argument(help="A .gguf file or a Hugging Face model folder.")],
    json: JsonOpt = False,
) -> None:
    """Show a model file's metadata and tensors.

    [bold]Examples[/]

      quantcli inspect smol-q8_0.gguf
      quantcli inspect ./SmolLM2-135M-Instruct --json
    """
    def body() -> None:
        from ..inspect import describe

        info = describe(path)
        if json:
            out.print_json(jsonlib.dumps(info))
            return
        from rich.table import Table

        meta = Table(title=f"{path} ({info['format']})", title_justify="left", show_header=False)
        for k, v in info["metadata"].items():
            meta.add_row(k, str(v))
        out.print(meta)
        tensors = Table(title=f"{len(info['tensors'])} tensors, {human_bytes(info['bytes'])}", title_justify="left")
        for col in ("name", "type", "shape", "bytes"):
            tensors.add_column(col, justify="right" if col == "bytes" else "left")
        for t in info["tensors"]:
            tensors.add_row(t["name"], t["type"], "x".join(map(str, t["shape"])), f"{t['bytes']:,}")
        out.print(tensors)

    run(body)
