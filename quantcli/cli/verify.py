"""`quantcli verify PATH`: structure and per-tensor error of a GGUF file or a quantized safetensors folder,
optionally against its source; with --data, PPL/KLD against the source (cli/_model_quality.py)."""
# no `from __future__ import annotations`: typer would compile every string annotation at each start

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ._common import JsonOpt, out, print_json, print_rows, run


def verify(
    path: Annotated[Path, typer.Argument(help="The .gguf file, or the quantized folder (compressed-tensors, bnb-nf4), to check.")],
    source: Annotated[Optional[Path], typer.Option("--source", "-s", help="The HF folder it was made from: adds per-tensor RMSE / max error / SNR.")] = None,
    min_snr_db: Annotated[Optional[float], typer.Option("--min-snr-db", help="Fail when a tensor's SNR is below this (dB). Default: per type.")] = None,
    max_rmse: Annotated[Optional[float], typer.Option("--max-rmse", help="Fail when a tensor's RMSE is above this.")] = None,
    recipe: Annotated[Optional[str], typer.Option("--recipe", "-r", help="Take the thresholds from this recipe's verify section.")] = None,
    all_tensors: Annotated[bool, typer.Option("--all", help="Print every tensor's figures, not only the summary (--json always has them).")] = False,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Score the model against --source on this text instead of comparing tensors: a UTF-8 file (or folder, JSONL, parquet, hub dataset), or builtin:eval for the shipped evaluation text. PPL, KL divergence, same top-1; cosine of pooled embeddings for encoders.")] = None,
    ctx: Annotated[int, typer.Option("--ctx", help="Tokens per chunk of --data (llama-perplexity's -c); the second half of each chunk is scored.", min=4)] = 512,
    chunks: Annotated[Optional[int], typer.Option("--chunks", help="Score at most this many chunks of --data (default: the whole text).", min=1)] = None,
    max_kld: Annotated[Optional[float], typer.Option("--max-kld", help="With --data: fail (exit 1) when the mean KL divergence is above this. Overrides the recipe's.")] = None,
    max_ppl_ratio: Annotated[Optional[float], typer.Option("--max-ppl-ratio", help="With --data: fail (exit 1) when PPL / source PPL is above this. Overrides the recipe's.")] = None,
    threads: Annotated[int, typer.Option("--threads", "-t", help="Threads for the engine's matrix products with --data (0: all cores).", min=0, max=1024)] = 0,
    json: JsonOpt = False,
) -> None:
    """Reopen a GGUF (or a quantized folder) with an independent reader, check its structure and, with --source,
    its error per tensor; with --data, run both models on a text and report PPL, KL divergence and same top-1.

    Prints a summary first: tensors checked, how many miss their threshold, the worst tensors by SNR and the
    verdict. Exit code 0 when every check passes, 1 when one fails (with an Error: line naming it), 2 for a
    path that is neither a GGUF file nor a quantized folder.

    [bold]Examples[/]

      quantcli verify smol-q8_0.gguf
      quantcli verify smol-q8_0.gguf --source ./SmolLM2-135M-Instruct
      quantcli verify smol-q8_0.gguf --source ./SmolLM2-135M-Instruct --all
      quantcli verify smol-q8_0.gguf --source ./SmolLM2-135M-Instruct --json
      quantcli verify smol-q4_k_m.gguf --source ./SmolLM2-135M-Instruct --data eval.txt --ctx 512 --chunks 20
      quantcli verify smol-W4A16/ --source ./SmolLM2-135M-Instruct
      quantcli verify smol-W4A16/ --source ./SmolLM2-135M-Instruct --data builtin:eval --chunks 4 --max-kld 0.1
    """
    def body() -> None:
        from ..errors import VerifyError

        if data is not None:
            from ._model_quality import verify_model_report

            return verify_model_report(path, source, data, ctx=ctx, chunks=chunks, recipe=recipe, json=json,
                                       max_kld=max_kld, max_ppl_ratio=max_ppl_ratio, threads=threads)
        from ..recipe import resolve_recipe
        from ..stages.verify import failure_line, verify_file

        snr, rmse = min_snr_db, max_rmse
        if recipe:
            spec = resolve_recipe(recipe).verify
            snr = spec.min_snr_db if snr is None else snr
            rmse = spec.max_rmse if rmse is None else rmse
        if path.is_dir():
            from ._folder_report import verify_folder_report

            return verify_folder_report(path, source, min_snr_db=snr, max_rmse=rmse, all_weights=all_tensors, json=json)
        report = verify_file(path, source, min_snr_db=snr, max_rmse=rmse)
        figures = report.to_json()
        if json:
            print_json({**figures, "summary": report.summary()})
        else:
            if all_tensors:
                print_tensor_table(figures)
            print_summary(figures, source=source)
        if not report.ok:
            more = report.compared and not (all_tensors or json)
            raise VerifyError(f"{path} failed verification: {failure_line(figures)}.",
                              hint="`--all` lists every tensor's figures." if more else None)

    run(body)


def _fmt(value: object, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value == float("inf"):
        return "lossless"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def print_summary(data: dict[str, Any], *, source: Path | None = None, cached: bool = False) -> None:
    """The verify summary of one file: counts, worst tensors, verdict (data is a report in its JSON form)."""
    from rich.markup import escape

    from ..stages.verify import summarize

    s = summarize(data)
    what = f"compared with {source}" if source is not None else ("compared with the source" if data.get("compared")
                                                                  else "structure only")
    note = ", cached result" if cached else ""
    out.print(f"{escape(str(data.get('path', '?')))}: {escape(data.get('arch') or '?')}, {s['n_tensors']} tensors, "
              f"{escape(what)}{note}", highlight=False)
    for problem in s["problems"]:
        out.print(f"  [red]problem:[/] {escape(problem)}", highlight=False)
    if s["n_compared"]:
        out.print(f"  {s['n_failed']} of {s['n_compared']} tensors over their threshold; worst SNR "
                  f"{_fmt(s['min_snr_db'], '.1f')} dB, worst RMSE {_fmt(s['max_rmse'])}", highlight=False)
        out.print(f"  worst {len(s['worst'])} by SNR:", highlight=False)
        print_rows(_HEADER[:2] + _HEADER[3:], [_row(t)[:2] + _row(t)[3:] for t in s["worst"]], right={2, 3, 4, 5},
                   indent="    ")
    verdict = "[green]OK[/]: every check passed" if s["ok"] else "[red]FAILED[/]"
    out.print(f"  {verdict}", highlight=False)


_HEADER = ("tensor", "type", "shape", "SNR dB", "floor", "RMSE", "max abs", "result")


def _row(t: dict[str, Any]) -> tuple[str, ...]:
    return (t["name"], t["type"], "x".join(map(str, t.get("shape") or [])), _fmt(t["snr_db"], ".1f"),
            _fmt(t["min_snr_db"], "g"), _fmt(t["rmse"]), _fmt(t["max_abs"]),
            "ok" if t["ok"] else (t.get("failure") or "failed"))


def print_tensor_table(data: dict[str, Any]) -> None:
    """Every tensor's figures (verify --all), in file order."""
    print_rows(_HEADER, [_row(t) for t in data["tensors"]], right={3, 4, 5, 6})
