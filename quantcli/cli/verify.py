"""`quantcli verify FILE`: structure and per-tensor error of a GGUF file, optionally against its source."""
from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import JsonOpt, err, out, run


def verify(
    path: Annotated[Path, typer.Argument(help="The .gguf file to check.")],
    source: Annotated[Optional[Path], typer.Option("--source", "-s", help="The HF folder it was made from: adds per-tensor RMSE / max error / SNR.")] = None,
    min_snr_db: Annotated[Optional[float], typer.Option("--min-snr-db", help="Fail when a tensor's SNR is below this (dB). Default: per type.")] = None,
    max_rmse: Annotated[Optional[float], typer.Option("--max-rmse", help="Fail when a tensor's RMSE is above this.")] = None,
    recipe: Annotated[Optional[str], typer.Option("--recipe", "-r", help="Take the thresholds from this recipe's verify section.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Score the model against --source on this text instead of comparing tensors: a UTF-8 file (or folder, JSONL, parquet, hub dataset), or builtin:eval for the shipped evaluation text. PPL, KL divergence, same top-1; cosine of pooled embeddings for encoders.")] = None,
    ctx: Annotated[int, typer.Option("--ctx", help="Tokens per chunk of --data (llama-perplexity's -c); the second half of each chunk is scored.", min=4)] = 512,
    chunks: Annotated[Optional[int], typer.Option("--chunks", help="Score at most this many chunks of --data (default: the whole text).", min=1)] = None,
    json: JsonOpt = False,
) -> None:
    """Reopen a GGUF with an independent reader, check its structure and, with --source, its error per tensor.

    Exit code 1 when a check fails or a threshold is exceeded.

    [bold]Examples[/]

      quantcli verify smol-q8_0.gguf
      quantcli verify smol-q8_0.gguf --source ./SmolLM2-135M-Instruct --json
      quantcli verify smol-q4_k_m.gguf --source ./SmolLM2-135M-Instruct --data eval.txt --ctx 512 --chunks 20
    """
    def body() -> None:
        if data is not None:
            from ._model_quality import verify_model_report

            return verify_model_report(path, source, data, ctx=ctx, chunks=chunks, recipe=recipe, json=json)
        from ..recipe import resolve_recipe
        from ..stages.verify import verify_file

        snr, rmse = min_snr_db, max_rmse
        if recipe:
            spec = resolve_recipe(recipe).verify
            snr = spec.min_snr_db if snr is None else snr
            rmse = spec.max_rmse if rmse is None else rmse
        report = verify_file(path, source, min_snr_db=snr, max_rmse=rmse)
        if json:
            out.print_json(jsonlib.dumps(report.to_json()))
        else:
            from rich.table import Table

            table = Table(title=f"{path} ({report.arch}, {report.n_tensors} tensors)", title_justify="left")
            for col in ("tensor", "type", "shape", "RMSE", "max abs", "SNR dB", "ok"):
                table.add_column(col)
            for t in report.tensors:
                fmt = (lambda v: "" if v is None else f"{v:.4g}")
                table.add_row(t.name, t.type, "x".join(map(str, t.shape)), fmt(t.rmse), fmt(t.max_abs), fmt(t.snr_db),
                              "yes" if t.ok else "[red]NO[/]")
            out.print(table)
            for p in report.problems:
                err.print(f"problem: {p}", highlight=False)
            out.print("OK" if report.ok else "FAILED", highlight=False)
        if not report.ok:
            raise typer.Exit(1)

    run(body)
