"""`quantcli batch FILE`: models x recipes from a YAML file, for CI; `--matrix` fans it out over runners."""
# no `from __future__ import annotations`: typer would compile every string annotation at each start

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import JobsFailed
from ._common import ForceOpt, JsonOpt, ThreadsOpt, err, human_bytes, out, print_json, run, warn


def batch(
    file: Annotated[Path, typer.Argument(help="The batch file (YAML: models, recipes, output, verify).")],
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Jobs to run at once, each in its own process.", min=1)] = 1,
    continue_on_error: Annotated[bool, typer.Option("--continue-on-error", help="Run the remaining jobs after a failure (default: stop at the first).")] = False,
    job: Annotated[Optional[list[str]], typer.Option("--job", help="Run only this job id (repeatable); what each CI matrix runner does.")] = None,
    matrix: Annotated[bool, typer.Option("--matrix", help="Print a GitHub Actions matrix of the jobs (JSON) and run nothing.")] = False,
    threads: ThreadsOpt = 0,
    force: ForceOpt = False,
    json: JsonOpt = False,
) -> None:
    """Run every model x recipe of a batch file through the convert pipeline and report each job.

    Finished work is cached, so a re-run only does what failed or changed. Exit code 0 only when every job
    succeeded; otherwise the most serious exit code of the failed jobs (4 internal, 3 environment, 2 bad
    input, 1 verification), and 2 for an invalid batch file. With --json the report goes to stdout and the
    per-job lines to stderr.

    [bold]Examples[/]

      quantcli batch batch.yaml
      quantcli batch batch.yaml --jobs 2 --continue-on-error --json > report.json
      quantcli batch batch.yaml --matrix            # {"include": [{"job": ..., "model": ..., "recipe": ...}]}
      quantcli batch batch.yaml --job SmolLM2-135M-Instruct.q8_0
    """
    def body() -> None:
        from ..pipeline.batch import load_batch, matrix as make_matrix, report, run_batch, select

        spec = load_batch(file)
        if matrix:
            print_json(make_matrix(spec), compact=True)
            return
        selected = select(spec, job or [])
        started = time.perf_counter()

        def on_done(r, done: int, total: int) -> None:  # type: ignore[no-untyped-def]
            cached = sum(bool(o["cached"]) for o in r.outputs)
            detail = (f"{len(r.outputs)} files" + (f", {cached} cached" if cached else "")) if r.status == "ok" else r.error
            colour = "green" if r.status == "ok" else "red"
            from rich.markup import escape

            err.print(f"[{done}/{total}] {escape(r.id)}: [{colour}]{r.status}[/] ({r.seconds:.1f} s) {escape(detail or '')}",
                      highlight=False)

        results = run_batch(selected, n_jobs=jobs, continue_on_error=continue_on_error, force=force,
                            threads=threads or None, on_done=on_done, warn=warn)
        data = report(results, time.perf_counter() - started)
        if json:
            print_json(data)
        else:
            print_summary(data)
        if not data["ok"]:
            raise jobs_failed(data)

    run(body)


def jobs_failed(data: dict) -> JobsFailed:
    """The one-line error of a batch with failed jobs; its exit code is the most serious of the jobs' own."""
    from ..errors import ExitCode

    failed = [j for j in data["jobs"] if j["status"] == "failed"]
    s = data["summary"]
    first = failed[0] if failed else None
    detail = f" (first: {first['id']}: {(first['error'] or '').splitlines()[0]})" if first else ""
    code = max((int(j.get("exit_code") or ExitCode.INTERNAL) for j in failed), default=int(ExitCode.INTERNAL))
    return JobsFailed(f"{s['failed']} of {s['jobs']} jobs failed{detail}.",
                      hint="Each job's line above says why; fix those and run the batch again "
                           "(finished jobs are cached).", exit_code=code)


def print_summary(data: dict) -> None:
    from rich.table import Table

    s = data["summary"]
    table = Table(title=f"{s['ok']} of {s['jobs']} jobs succeeded ({s['outputs_written']} files written, "
                        f"{s['outputs_cached']} cached) in {data['seconds']:.1f} s", title_justify="left")
    for col in ("job", "status", "files", "seconds", "error"):
        table.add_column(col)
    for j in data["jobs"]:
        files = ", ".join(f"{Path(o['path']).name} ({human_bytes(o['bytes'])}{', cached' if o['cached'] else ''})"
                          for o in j["outputs"])
        status = {"ok": "[green]ok[/]", "failed": "[red]failed[/]"}.get(j["status"], j["status"])
        table.add_row(j["id"], status, files, f"{j['seconds']:.1f}", (j["error"] or "").split("\n")[0])
    out.print(table)
