"""Batches: a YAML file of models x recipes, run as conversion jobs in order or N at a time.

    # batch.yaml
    output: out/{model}              # folder of each job; {model} and {recipe} are filled in
    verify: structure                # none | structure | full
    models:
      - HuggingFaceTB/SmolLM2-135M-Instruct@main
      - ./checkpoints/my-model       # relative paths are relative to this file
      - model: org/other             # long form: its own recipe list
        recipes: [q8_0]
    recipes: [q4_k_m, release.yaml]

Each (model, recipe) pair is a job with an id `<model name>.<recipe name>`; `--job ID` runs a subset, which
is how a CI matrix (`matrix()`) fans a batch out over runners. Every job goes through the same convert
pipeline as `quantcli convert` (stage cache, manifest), so a re-run skips finished jobs' work.

    batch = load_batch(Path("batch.yaml"))
    [job.id for job in batch.jobs]
    # -> ['SmolLM2-135M-Instruct.q4_k_m', 'SmolLM2-135M-Instruct.release', 'my-model.q4_k_m', ...]
"""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ..errors import ExitCode, InputError, QuantcliError, RecipeError
from ..io.files import read_text
from ..quant.backend import MAX_THREADS
from ..recipe.schema import Recipe
from ..recipe.strict_yaml import YamlContext, check_keys, compose, mapping, scalar
from ..recipe.templates import template_problem
from .outputs import check_name, refuse_collisions, resolve_layout

VERIFY_LEVELS = ("none", "structure", "full")
DEFAULT_OUTPUT = "out/{model}"
_TOP_KEYS = ("models", "recipes", "output", "verify", "threads")
_MODEL_KEYS = ("model", "recipes", "output", "name")


@dataclass(frozen=True)
class Job:
    id: str                 # <name>.<recipe name>
    name: str               # the model's name: its folder or repo name, or the entry's `name`
    model: str              # hub id or absolute folder path
    recipe: str             # built-in name or absolute recipe path
    recipe_name: str
    output: str             # absolute output folder
    verify: str
    threads: int = 0


@dataclass(frozen=True)
class Batch:
    source: str
    jobs: tuple[Job, ...]


@dataclass
class JobResult:
    id: str
    model: str
    recipe: str
    status: str = "not run"                 # ok | failed | not run
    outputs: list[dict[str, Any]] = field(default_factory=list)
    manifest: str | None = None
    error: str | None = None
    exit_code: int | None = None
    seconds: float = 0.0


def _model_name(model: str) -> str:
    from ..stages.download import HubRef

    ref = HubRef.parse(model) if not Path(model).exists() else None
    return ref.repo_id.split("/")[-1] if ref else Path(model).resolve().name


def _resolve_model(model: str, base: Path) -> str:
    from ..stages.download import HubRef

    given = Path(model).expanduser()
    local = given if given.is_absolute() else base / given
    if model.startswith((".", "/", "~")) or local.exists() or HubRef.parse(model) is None:
        return str(local.resolve())
    return model


def _resolve_recipe(ctx: YamlContext, node: yaml.Node, base: Path) -> tuple[str, Recipe]:
    from ..recipe import builtin_names, resolve_recipe

    value = scalar(ctx, node, "recipe", str)
    path = Path(value)
    if path.suffix in (".yaml", ".yml") or "/" in value:
        target = path if path.is_absolute() else base / path
        if not target.is_file():
            raise ctx.fail(node, f"recipe file {value!r} does not exist (looked at {target}).")
        value = str(target.resolve())
    elif value.lower() not in builtin_names():
        raise ctx.fail(node, f"{value!r} is neither a recipe file nor a built-in recipe.",
                       hint=f"Built-ins: {', '.join(builtin_names())}.")
    try:
        recipe = resolve_recipe(value)
    except RecipeError as exc:
        raise ctx.fail(node, f"recipe {value!r} is invalid: {exc}") from exc
    return value, recipe


def _recipe_list(ctx: YamlContext, node: yaml.Node, base: Path, what: str) -> list[tuple[str, Recipe]]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise ctx.fail(node, f"{what} must be a non-empty list of recipe names or files.")
    return [_resolve_recipe(ctx, n, base) for n in node.value]


def parse_batch(text: str, source: str = "<string>", base: Path | None = None) -> Batch:
    """Parse and check a batch file; every error names the file and line."""
    base = Path(base) if base is not None else Path(".")
    ctx = YamlContext(source)
    root, items = compose(ctx, text, "the batch file", "It needs `models:` and `recipes:` lists.")
    check_keys(ctx, items, _TOP_KEYS, "the batch file")
    if "models" not in items:
        raise ctx.fail(root, "the batch file needs a 'models' list.")
    output = scalar(ctx, items["output"][1], "output", str) if "output" in items else DEFAULT_OUTPUT
    if (problem := template_problem(output, ("model", "recipe"))) is not None:
        raise ctx.fail(items["output"][1], f"output {output!r} {problem}.")
    verify = scalar(ctx, items["verify"][1], "verify", str) if "verify" in items else "structure"
    if verify not in VERIFY_LEVELS:
        raise ctx.fail(items["verify"][1], f"verify must be one of {', '.join(VERIFY_LEVELS)}, got {verify!r}.")
    threads = scalar(ctx, items["threads"][1], "threads", int) if "threads" in items else 0
    if not 0 <= threads <= MAX_THREADS:
        raise ctx.fail(items["threads"][1], f"threads must be from 0 (all cores) to {MAX_THREADS}.")
    recipes = _recipe_list(ctx, items["recipes"][1], base, "recipes") if "recipes" in items else None
    mnode = items["models"][1]
    if not isinstance(mnode, yaml.SequenceNode) or not mnode.value:
        raise ctx.fail(mnode, "models must be a non-empty list of hub ids or folders.")
    jobs: list[Job] = []
    planned: list[tuple[Job, Recipe, str, yaml.Node]] = []
    seen: dict[str, yaml.Node] = {}
    for node in mnode.value:
        model_output, name = output, None
        if isinstance(node, yaml.MappingNode):
            entry = mapping(ctx, node, "a models entry")
            check_keys(ctx, entry, _MODEL_KEYS, "a models entry")
            if "model" not in entry:
                raise ctx.fail(node, "a models entry needs 'model' (a hub id or folder).")
            model = scalar(ctx, entry["model"][1], "model", str)
            own = _recipe_list(ctx, entry["recipes"][1], base, "recipes") if "recipes" in entry else recipes
            model_output = scalar(ctx, entry["output"][1], "output", str) if "output" in entry else output
            if (problem := template_problem(model_output, ("model", "recipe"))) is not None:
                raise ctx.fail(entry["output"][1], f"output {model_output!r} {problem}.")
            name = scalar(ctx, entry["name"][1], "name", str) if "name" in entry else None
        else:
            model, own = scalar(ctx, node, "model", str), recipes
        if own is None:
            raise ctx.fail(node, f"no recipes for {model}: add a top-level 'recipes' list or one in the entry.")
        resolved = _resolve_model(model, base)
        name = name or _model_name(resolved)
        file_model = _file_model_name(resolved)
        for recipe, rec in own:
            recipe_name = rec.name
            for value, what in ((name, f"the model name {name!r}"), (recipe_name, f"the recipe name {recipe_name!r}")):
                try:
                    check_name(value, what, Path(model_output))
                except InputError as exc:
                    raise ctx.fail(node, str(exc.args[0]), hint=exc.hint) from None
            job_id = f"{name}.{recipe_name}"
            if job_id in seen:
                raise ctx.fail(node, f"job {job_id!r} appears twice.", hint="Give one of the entries its own 'name'.")
            seen[job_id] = node
            try:
                folder = model_output.format(model=name, recipe=recipe_name)
            except (KeyError, IndexError, ValueError) as exc:
                raise ctx.fail(items["output"][1] if "output" in items else node,
                               f"output template {model_output!r} is invalid ({exc}).",
                               hint="Use {model} and {recipe} only.") from exc
            target = Path(folder).expanduser()
            target = target if target.is_absolute() else base / target
            jobs.append(Job(job_id, name, resolved, recipe, recipe_name, str(target.resolve()), verify, threads))
            planned.append((jobs[-1], rec, file_model, node))
    _refuse_shared_outputs(ctx, planned)
    return Batch(source, tuple(jobs))


def _file_model_name(model: str) -> str:
    """The model name convert puts in file names (a hub-cache snapshot folder is named after its repo)."""
    from ..stages.download import HubRef, snapshot_of_folder

    if Path(model).is_absolute():
        return snapshot_of_folder(Path(model)).name
    ref = HubRef.parse(model)
    return ref.repo_id.split("/")[-1] if ref else Path(model).name


def _refuse_shared_outputs(ctx: YamlContext, planned: list[tuple[Job, Recipe, str, yaml.Node]]) -> None:
    """Every file of every job goes through the same checks as one convert (pipeline/outputs.py), and no two
    jobs may write one file. An AUTO type is compared as the word AUTO: its real type is known only once the
    model is read, so two jobs that differ only in that way are not caught here."""
    from .convert import output_labels, output_names

    entries: list[tuple[str, Path]] = []
    for job, rec, file_model, node in planned:
        try:
            layout = resolve_layout(Path(job.output), output_names(rec, [None] * len(rec.outputs), file_model),
                                    model=file_model, recipe=rec.name, labels=output_labels(rec), folder_only=True)
            labels = [f"job {job.id!r} ({label})" for label in output_labels(rec)] + [f"job {job.id!r} (its manifest)"]
            entries.extend((label, Path(os.path.realpath(p))) for label, p in zip(labels, layout.all_paths))
            entries.extend((f"job {job.id!r} (folder output {p.name})", Path(os.path.realpath(p)))
                           for p in _folder_paths(rec, file_model, Path(job.output)))
            refuse_collisions(entries, hint="Give the jobs their own output folders (output: with {model} and "
                                            "{recipe}) or their recipes distinct `file:` templates.")
        except InputError as exc:
            raise ctx.fail(node, str(exc.args[0]), hint=exc.hint) from None


def _folder_paths(recipe: Recipe, file_model: str, output: Path) -> list[Path]:
    """Where a job's folder outputs go, named as convert names them (their scheme is checked here too)."""
    from .convert_int import default_output, folder_requests, resolve_scheme

    return [default_output(Path(file_model), resolve_scheme(req), req.method, req.format, req.parent,
                           req.dir_template, req.recipe_name)
            for req in folder_requests(recipe, file_model, output)]


def load_batch(path: Path) -> Batch:
    if not Path(path).exists():
        raise InputError(f"cannot read batch file {path}: No such file or directory.", hint="Check the path.")
    text = read_text(Path(path), "batch file")
    return parse_batch(text, str(path), base=Path(path).resolve().parent)


def select(batch: Batch, ids: list[str]) -> list[Job]:
    if not ids:
        return list(batch.jobs)
    known = {j.id: j for j in batch.jobs}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise InputError(f"{batch.source} has no job {unknown[0]!r}.", hint=f"Jobs: {', '.join(known)}.")
    return [known[i] for i in ids]


def matrix(batch: Batch) -> dict[str, Any]:
    """A GitHub Actions matrix: one entry per job, run with `quantcli batch FILE --job <id>`."""
    return {"include": [{"job": j.id, "name": j.name, "model": j.model, "recipe": j.recipe_name} for j in batch.jobs]}


def run_job(job: Job, *, force: bool = False, threads: int | None = None, cache_dir: str | None = None,
            warn: Callable[[str], None] | None = None) -> JobResult:
    """One job through the convert pipeline; every failure is captured in the result, never raised
    (except an interrupt, which stops the batch)."""
    from ..pipeline.cache import default_cache_dir
    from ..pipeline.convert import ConvertRequest, convert
    from ..recipe import resolve_recipe

    result = JobResult(job.id, job.model, job.recipe_name)
    started = time.perf_counter()
    try:
        request = ConvertRequest(model=job.model, recipe=resolve_recipe(job.recipe), output=Path(job.output),
                                 threads=threads if threads is not None else job.threads, verify=job.verify,
                                 cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(), force=force,
                                 manifest=True)
        converted = convert(request, warn=warn)
        result.status = "ok"
        result.manifest = str(converted.manifest) if converted.manifest else None
        result.outputs = output_records(converted)
    except QuantcliError as exc:
        if type(exc).__name__ == "Interrupted":
            raise
        result.status, result.error, result.exit_code = "failed", str(exc), exc.exit_code
    except Exception as exc:  # noqa: BLE001 - one broken job must not take the batch down
        result.status, result.exit_code = "failed", int(ExitCode.INTERNAL)
        result.error = f"internal error: {type(exc).__name__}: {exc}"
        if os.environ.get("QUANTCLI_DEBUG"):
            result.error += "\n" + traceback.format_exc()
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def output_records(converted: Any) -> list[dict[str, Any]]:
    """One record per output of a converted job, GGUF files and folders alike: path, type, bytes, sha256 (of
    the file, or over a folder's files), cached, and verify_ok (None when not verified)."""
    from .cache import path_size

    records = [{"path": str(o.path), "type": o.type, "bytes": o.path.stat().st_size, "sha256": o.sha256,
                "cached": o.cached, "verify_ok": _verify_ok(o.verify, o.model_verify)}
               for o in converted.outputs]
    records += [{"path": str(f.path), "type": f.kind, "bytes": path_size(f.path), "sha256": f.sha256,
                 "cached": f.cached, "verify_ok": _verify_ok(f.report.to_json() if f.report else None, f.model_verify)}
                for f in converted.folders]
    return records


def _verify_ok(report: dict[str, Any] | None, model: dict[str, Any] | None) -> bool | None:
    if report is None and model is None:
        return None
    return all(bool(r.get("ok")) for r in (report, model) if r is not None)


def _stderr_warn(message: str) -> None:
    import sys

    print(f"Warning: {message}", file=sys.stderr, flush=True)


# The module each worker process runs (`python -m WORKER_MODULE JOB.json RESULT.json`); tests point it at a
# wrapper that injects faults.
WORKER_MODULE = "quantcli.pipeline.batch_worker"
STOP_GRACE_SECONDS = 30.0     # how long stopped workers get to remove their partial files before SIGKILL
POLL_SECONDS = 0.05


@dataclass
class _Running:
    job: Job
    proc: Any                 # subprocess.Popen
    result_file: Path


def _ignore_sigint() -> None:
    """In the worker before exec: a terminal's Ctrl-C goes to the whole process group, and a worker still
    starting up must not die of it with a traceback. The worker takes SIGINT back once its handlers are in
    place; until then the parent's SIGTERM stops it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start_worker(index: int, job: Job, threads: int, force: bool, cache_dir: str, workdir: Path) -> _Running:
    import json
    import subprocess
    import sys

    import quantcli

    job_file, result_file = workdir / f"{index}-job.json", workdir / f"{index}-result.json"
    job_file.write_text(json.dumps({"job": asdict(job), "threads": threads, "force": force, "cache_dir": cache_dir}))
    env = dict(os.environ)
    # The worker imports this same quantcli, wherever it was imported from.
    root = str(Path(quantcli.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.Popen([sys.executable, "-m", WORKER_MODULE, str(job_file), str(result_file)], env=env,
                            stdin=subprocess.DEVNULL, preexec_fn=_ignore_sigint)
    return _Running(job, proc, result_file)


def _collect(run: _Running) -> JobResult:
    """The worker's result, or a failure saying how its process ended (its partial files are swept)."""
    import json
    import signal

    from ..io.atomic import sweep_partials

    job, code = run.job, run.proc.returncode
    try:
        return JobResult(**json.loads(run.result_file.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        pass
    sweep_partials(Path(job.output))
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    return JobResult(job.id, job.model, job.recipe_name, "failed", exit_code=int(ExitCode.INTERNAL),
                     error=f"the job's process died ({how}) without a result; partial files it left were removed.")


def _stop_workers(running: list[_Running]) -> None:
    """SIGTERM every live worker (each removes its partial files and exits), SIGKILL those that outlast the
    grace period, reap them all, and sweep what the killed ones left."""
    import signal

    from ..io.atomic import sweep_partials

    for run in running:
        if run.proc.poll() is None:
            try:
                run.proc.send_signal(signal.SIGTERM)
            except OSError:
                pass
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for run in running:
        try:
            run.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: it did not stop in time
            run.proc.kill()
            run.proc.wait()
            sweep_partials(Path(run.job.output))


def run_batch(jobs: list[Job], *, n_jobs: int = 1, continue_on_error: bool = False, force: bool = False,
              threads: int | None = None, on_done: Callable[[JobResult, int, int], None] | None = None,
              warn: Callable[[str], None] | None = None) -> list[JobResult]:
    """Run `jobs`; without `continue_on_error` the first failure stops the jobs not yet started.

    With n_jobs > 1 each job runs in a worker process of its own (a fresh interpreter, so a crash stays in it)
    and the kernel threads are shared out: `threads` 0 or None gives each job cpu_count // n_jobs threads.
    On an interrupt the workers are stopped with SIGTERM, given time to remove their partial files, killed if
    they do not end, and reaped, so the parent leaves no process behind.
    """
    from .cache import default_cache_dir

    results = {j.id: JobResult(j.id, j.model, j.recipe_name) for j in jobs}
    total = len(jobs)
    done = 0
    if n_jobs <= 1 or total <= 1:
        for job in jobs:
            r = run_job(job, force=force, threads=threads, warn=warn)
            results[job.id] = r
            done += 1
            if on_done:
                on_done(r, done, total)
            if r.status == "failed" and not continue_on_error:
                break
        return [results[j.id] for j in jobs]
    import shutil
    import tempfile

    from .signals import stop_signals_ignored

    share = max(1, (os.cpu_count() or 1) // n_jobs)      # -t first, then the batch file's threads, then a share
    cache_dir = str(default_cache_dir())
    queue = list(jobs)
    running: list[_Running] = []
    launched = 0
    workdir = Path(tempfile.mkdtemp(prefix="quantcli-batch-"))
    try:
        while queue or running:
            while queue and len(running) < n_jobs:
                job = queue.pop(0)
                running.append(_start_worker(launched, job, threads or job.threads or share, force, cache_dir, workdir))
                launched += 1
            time.sleep(POLL_SECONDS)
            for run in [r for r in running if r.proc.poll() is not None]:
                running.remove(run)
                r = _collect(run)
                results[run.job.id] = r
                done += 1
                if on_done:
                    on_done(r, done, total)
                if r.status == "failed" and not continue_on_error:
                    queue.clear()        # the running jobs finish; the others stay "not run"
    except BaseException:
        with stop_signals_ignored():    # a second Ctrl-C must not cut the shutdown short and orphan workers
            _stop_workers(running)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return [results[j.id] for j in jobs]


def report(results: list[JobResult], seconds: float) -> dict[str, Any]:
    """The --json report: every job, and a summary whose `ok` is true only when every job succeeded."""
    outputs = [o for r in results for o in r.outputs]
    summary = {
        "jobs": len(results),
        "ok": sum(r.status == "ok" for r in results),
        "failed": sum(r.status == "failed" for r in results),
        "not_run": sum(r.status == "not run" for r in results),
        "outputs_written": sum(not o["cached"] for o in outputs),
        "outputs_cached": sum(bool(o["cached"]) for o in outputs),
    }
    return {"ok": summary["ok"] == len(results), "summary": summary, "seconds": round(seconds, 3),
            "jobs": [asdict(r) for r in results]}
