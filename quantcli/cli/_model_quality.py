"""`quantcli verify FILE|FOLDER --source DIR --data TEXT`: the model-level report (computed in stages/verify_model.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ._common import out, print_json


def verify_model_report(path: Path, source: Optional[Path], data: str, *, ctx: int, chunks: Optional[int],
                        recipe: Optional[str], json: bool, max_kld: Optional[float] = None,
                        max_ppl_ratio: Optional[float] = None, threads: int = 0) -> None:
    """Score the file, print the figures, then apply the recipe's thresholds (a miss exits 1 with the figure)."""
    from ..errors import InputError, VerifyError
    from ..stages.perplexity import PerplexityResult
    from ..stages.verify_model import check_thresholds, record_folder_report, verify_model

    if source is None:
        raise InputError("--data needs --source: the output is scored against the model it was made from.",
                         hint="Add --source ./the-hf-checkpoint-folder.")
    if recipe:
        from ..recipe import resolve_recipe

        spec = resolve_recipe(recipe).verify
        max_kld = spec.max_kld if max_kld is None else max_kld
        max_ppl_ratio = spec.max_ppl_ratio if max_ppl_ratio is None else max_ppl_ratio
    report = verify_model(path, source, data, ctx=ctx, chunks=chunks, threads=threads)
    res = report.result
    if json:
        print_json(report.to_json())
    else:
        from rich.table import Table

        table = Table(title=f"{path} against {source} on {report.data}: {res.n_chunks} chunks of {res.ctx} tokens",
                      title_justify="left")
        table.add_column("figure")
        table.add_column("value", justify="right")
        if isinstance(res, PerplexityResult):
            rows = [("scored tokens", f"{res.n_scored}"),
                    ("PPL source", f"{res.ppl_source:.4f}"), ("PPL", f"{res.ppl:.4f} ± {res.ppl_err:.4f}"),
                    ("ln(PPL ratio)", f"{res.ln_ppl_ratio:.6f}"),
                    ("KLD mean", f"{res.kld_mean:.6f}"), ("KLD median", f"{res.kld_median:.6f}"),
                    ("KLD 90%", f"{res.kld_p90:.6f}"), ("KLD 95%", f"{res.kld_p95:.6f}"),
                    ("KLD 99%", f"{res.kld_p99:.6f}"), ("KLD max", f"{res.kld_max:.6f}"),
                    ("same top-1", f"{100 * res.same_top1:.3f} %"), ("RMS Δp", f"{100 * res.rms_dp:.3f} %")]
        else:
            rows = [("cosine mean", f"{res.cos_mean:.6f}"), ("cosine min", f"{res.cos_min:.6f}")]
        for name, value in rows:
            table.add_row(name, value)
        out.print(table)
    try:
        check_thresholds(report, max_kld=max_kld, max_ppl_ratio=max_ppl_ratio)
    except VerifyError as exc:
        record_folder_report(report, str(exc.args[0]))
        raise
    record_folder_report(report, None)
    if not json:
        out.print("OK", highlight=False)
