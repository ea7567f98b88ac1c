"""The verify_model stage of a run: when a recipe's verify section sets max_kld or max_ppl_ratio, every output
(GGUF file or folder) is scored against its source with the engine (stages/verify_model.py) on the section's text,
its figures kept for the manifest, and an output that misses a limit fails the run (exit 1, naming the figure and
the limit). Figures are cached by the output's sha256, the source and the text (keys.verify_model_key); the
thresholds are applied to cached figures too, so changing a limit never re-runs the engine.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import VerifyError

if TYPE_CHECKING:
    from .cache import StageCache
    from .convert import ConvertResult
    from .runner import Run

EVAL_DEFAULT = "builtin:eval"     # the text the model-level verify scores on when the recipe names none


def verify_models(run: Run, result: ConvertResult, cache: StageCache | None, fingerprint: dict[str, Any], *,
                  skip: set[int]) -> list[VerifyError]:
    """The model-level verify of every output (recipe verify.max_kld / max_ppl_ratio): score it against the
    source with the engine, keep the figures, and fail (exit 1) an output that misses a threshold. Figures are
    cached by the output's sha256, the source and the text; the thresholds are applied to cached figures too."""
    request = run.request
    spec = request.recipe.verify
    if not spec.model_level or request.verify == "none":
        return []
    # the engine and the text machinery are imported only by a run that scores its outputs
    from ..stages.calibration_data import load_calibration_text
    from ..stages.verify_model import check_thresholds
    from .keys import verify_model_key

    data = spec.data or EVAL_DEFAULT
    if ("eval", data) not in run.texts:
        run.texts[("eval", data)] = load_calibration_text(data)
    text = run.texts[("eval", data)]
    ctx = _eval_ctx(spec.ctx, result.source)
    targets: list[tuple[Path, str | None, Callable[[dict[str, Any]], None]]] = []
    for i, o in enumerate(result.outputs):
        if i not in skip:
            targets.append((o.path, o.sha256, lambda fig, o=o: setattr(o, "model_verify", fig)))
    for f in result.folders:
        targets.append((f.path, f.sha256, lambda fig, f=f: setattr(f, "model_verify", fig)))
    failures: list[VerifyError] = []
    for path, sha, keep in targets:
        key = verify_model_key(sha or "", source=fingerprint, data_sha256=text.sha256, ctx=ctx, chunks=spec.chunks)
        with run.stage("verify_model", path, key.digest) as rec:
            hit = cache.lookup(key, path) if cache is not None and sha and not request.force else None
            figures = hit.extra.get("figures") if hit is not None else None
            if isinstance(figures, dict):
                rec.status = "hit"
                report = _report_from(figures)
            else:
                report = _score(run, path, result.source, data, ctx, spec.chunks)
                figures = report.to_json()
                if cache is not None and sha:
                    cache.store(key, path, sha256=sha, extra={"figures": figures})
            try:
                check_thresholds(report, max_kld=spec.max_kld, max_ppl_ratio=spec.max_ppl_ratio)
                keep({**figures, "ok": True, "failure": None, "cached": rec.status == "hit"})
            except VerifyError as exc:
                keep({**figures, "ok": False, "failure": str(exc.args[0]), "cached": rec.status == "hit"})
                failures.append(exc)
    return failures


def _eval_ctx(ctx: int | None, source: Path) -> int:
    """The recipe's verify.ctx, else 512 capped at the model's trained context (as calibrate does)."""
    from ..io.checkpoint import Checkpoint
    from ..stages.chunks import DEFAULT_CTX

    if ctx is not None:
        return ctx
    config = Checkpoint.open(Path(source)).config
    trained = config.get("max_position_embeddings") or config.get("n_positions") or DEFAULT_CTX
    return min(DEFAULT_CTX, int(trained))


def _score(run: Run, path: Path, source: Path, data: str, ctx: int, chunks: int | None) -> Any:
    from ..stages.verify_model import verify_model

    return verify_model(Path(path), Path(source), data, ctx=ctx, chunks=chunks, threads=run.request.threads)


def _report_from(figures: dict[str, Any]) -> Any:
    """A ModelQualityReport rebuilt from its cached JSON (the thresholds are checked on it)."""
    from dataclasses import fields

    from ..stages.perplexity import PerplexityResult
    from ..stages.verify_model import EmbeddingResult, ModelQualityReport

    kind = PerplexityResult if "ppl" in figures else EmbeddingResult
    values = {f.name: figures.get(f.name) for f in fields(kind)}
    return ModelQualityReport(str(figures.get("path")), str(figures.get("source")), str(figures.get("data")),
                              kind(**values))
