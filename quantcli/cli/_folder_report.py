"""`quantcli verify FOLDER [--source DIR]`: the structural and per-weight report of a quantized folder
(computed in stages/check_folder.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ._common import out, print_json, print_rows

WORST = 5   # weights listed in the summary, lowest SNR first


def verify_folder_report(path: Path, source: Optional[Path], *, min_snr_db: Optional[float], max_rmse: Optional[float],
                         all_weights: bool, json: bool) -> None:
    from rich.markup import escape

    from ..errors import VerifyError
    from ..stages.check_folder import check_folder

    report = check_folder(path, source)
    report.apply_thresholds(min_snr_db, max_rmse)
    data = report.to_json()
    if json:
        print_json(data)
    else:
        scheme = ", ".join(f"{k} {v}" for k, v in report.scheme.items() if v is not None)
        what = f"compared with {source}" if source is not None else "structure only"
        out.print(f"{escape(str(path))}: {escape(scheme)}; {report.quantized} quantized modules, {escape(what)}",
                  highlight=False)
        for problem in report.problems:
            out.print(f"  [red]problem:[/] {escape(problem)}", highlight=False)
        if report.weights:
            rows = sorted(report.weights, key=lambda w: w.snr_db) if not all_weights else report.weights
            shown = rows if all_weights else rows[:WORST]
            out.print(f"  worst SNR {data['min_snr_db']:.1f} dB, mean {data['mean_snr_db']:.1f} dB"
                      + ("" if all_weights else f"; worst {len(shown)} by SNR:"), highlight=False)
            print_rows(("weight", "SNR dB", "RMSE", "max abs"),
                       [(w.name, f"{w.snr_db:.1f}", f"{w.rmse:.4g}", f"{w.max_abs:.4g}") for w in shown],
                       right={1, 2, 3}, indent="    ")
        out.print("  [green]OK[/]: every check passed" if report.ok else "  [red]FAILED[/]", highlight=False)
    if not report.ok:
        raise VerifyError(f"{path} failed verification: {report.problems[0]}"
                          + (f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else "") + ".")
