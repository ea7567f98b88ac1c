"""calibrate: run the model over calibration text and keep, for every matrix of the blocks, the sum over tokens of
the squared input per input column and the token count: the importance matrix llama.cpp's quantizer weighs with.

The semantics are those of llama.cpp's imatrix tool (tools/imatrix/imatrix.cpp):
- the text is tokenized once, whole, with the vocabulary's own BOS rule (a BOS first when the vocabulary adds one);
- the tokens are cut into chunks of `ctx` tokens, the remainder dropped; when the vocabulary adds BOS, each chunk's
  first token is replaced by BOS; at least two chunks are needed; `chunks` takes the first n of them (the same
  chunks verify scores: stages/chunks.py cuts them for both);
- every chunk is an independent sequence (no state carried over);
- the statistics cover the matrices of the blocks (GGUF names "blk.*"), and output.weight only with
  `process_output` (a model whose head is tied to the token embedding has no output.weight, so nothing then);
- a weight with experts keeps one row of sums and one count per expert (the layout is ready; the engine runs dense
  models only).
One difference: llama.cpp skips matrix products over fewer than 16 tokens, which only its last micro-batch of an
unusual ctx can hit; quantcli counts every token.

    >>> result = calibrate(Path("SmolLM2-135M-Instruct"), load_calibration_text("calib.txt"),
    ...                    CalibrateOptions(ctx=512, chunks=100))              # doctest: +SKIP
    >>> write_imatrix(Path("imatrix.gguf"), result.stats)                       # doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError, UnsupportedError
from ..io.imatrix import ImatrixStats, MatrixStats
from .calibration_data import CalibrationText
from .chunks import calibration_chunks, resolve_ctx

if TYPE_CHECKING:
    from .eval_text import SpecialIds

BLOCK_PREFIX = "blk."
OUTPUT_NAME = "output.weight"
# Sequences handed to the engine per pass: every block's weights are read once per pass, and the hidden states of
# the pass's sequences ([tokens, hidden] float32, a few times) are what the pass holds in memory.
TOKENS_PER_PASS = 65536


@dataclass(frozen=True)
class CalibrateOptions:
    ctx: int | None = None             # None: 512, or the model's context when that is shorter
    chunks: int | None = None          # None: every whole chunk of the text
    process_output: bool = False       # also collect output.weight (llama-imatrix --process-output)
    threads: int = 0


@dataclass(frozen=True)
class Route:
    """Where one HF weight's input statistics go: the GGUF tensor, which of its matrices (expert), how many."""

    tensor: str
    matrix: int
    n_mat: int
    n_cols: int


@dataclass(frozen=True)
class CalibrationResult:
    stats: ImatrixStats
    n_tokens: int                      # tokens of the whole text, BOS included
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)


def routes_for(specs: Iterable[Any], *, process_output: bool) -> dict[str, Route]:
    """HF weight name -> Route for every matrix an imatrix covers, from the plan's tensor specs (name, sources,
    shape in numpy order). A GGUF matrix fused from several HF weights that share one input (q, k and v stacked)
    is fed by its first source only, so each token is counted once; a 3-D tensor's sources are its experts."""
    routes: dict[str, Route] = {}
    for spec in specs:
        wanted = spec.name.startswith(BLOCK_PREFIX) or (process_output and spec.name == OUTPUT_NAME)
        if not wanted or len(spec.shape) < 2 or not spec.sources:
            continue
        n_cols = spec.shape[-1]
        if len(spec.shape) == 3:
            if len(spec.sources) != spec.shape[0]:
                raise UnsupportedError(f"{spec.name} stores its {spec.shape[0]} experts in one tensor; quantcli cannot "
                                       "route calibration statistics to its experts.",
                                       hint="Calibrate this model with llama.cpp's llama-imatrix.")
            for i, src in enumerate(spec.sources):
                routes[src] = Route(spec.name, i, spec.shape[0], n_cols)
        else:
            routes[spec.sources[0]] = Route(spec.name, 0, 1, n_cols)
    return routes


class Accumulator:
    """Sums of squares per column (float64 while collecting) and token counts, per GGUF tensor and matrix."""

    def __init__(self, routes: Mapping[str, Route]) -> None:
        self.routes = routes
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        for r in routes.values():
            self.sums.setdefault(r.tensor, np.zeros((r.n_mat, r.n_cols), dtype=np.float64))
            self.counts.setdefault(r.tensor, np.zeros(r.n_mat, dtype=np.int64))

    def __call__(self, hf_name: str, x: np.ndarray) -> None:
        route = self.routes.get(hf_name)
        if route is None:
            return
        if x.shape[-1] != route.n_cols:
            raise RuntimeError(f"{hf_name}'s input has {x.shape[-1]} columns, {route.tensor} has {route.n_cols}")
        rows = x.reshape(-1, route.n_cols)
        # float64 accumulation: llama.cpp adds float32 products token by token; the sum in double is its exact
        # value, which the float32 running sum approximates (well inside the 1e-3 agreement)
        self.sums[route.tensor][route.matrix] += np.einsum("ij,ij->j", rows, rows, dtype=np.float64)
        self.counts[route.tensor][route.matrix] += rows.shape[0]

    def stats(self) -> dict[str, MatrixStats]:
        out = {}
        for name, sums in self.sums.items():
            if not np.isfinite(sums).all():
                raise InputError(f"the activations of {name} overflowed to Inf/NaN during calibration.",
                                 hint="The model's weights produce non-finite values on this text; check the checkpoint.")
            out[name] = MatrixStats(sums.astype(np.float32), self.counts[name].copy())
        return out


def summarize(entries: Mapping[str, MatrixStats]) -> dict[str, dict[str, Any]]:
    """Per tensor: tokens seen, and the mean, min and max of the per-column mean squares (for the manifest)."""
    out = {}
    for name in sorted(entries):
        e = entries[name]
        ms = e.mean_squares
        out[name] = {"matrices": int(e.sums.shape[0]), "columns": int(e.sums.shape[1]), "tokens": int(e.counts.max()),
                     "mean": float(ms.mean()), "min": float(ms.min()), "max": float(ms.max())}
    return out


def collect(run: Callable[..., Any], chunks: np.ndarray, routes: Mapping[str, Route],
            progress: Callable[[int, int], None] | None = None) -> dict[str, MatrixStats]:
    """Feed `chunks` through `run` (Engine.run) a few sequences at a time and accumulate the captured inputs."""
    acc = Accumulator(routes)
    per_pass = max(1, TOKENS_PER_PASS // chunks.shape[1])
    for start in range(0, len(chunks), per_pass):
        for _ in run(chunks[start:start + per_pass], capture=acc, logits=False):
            pass
        if progress is not None:
            progress(min(len(chunks), start + per_pass), len(chunks))
    return acc.stats()


def special_ids(metadata: Iterable[Any]) -> SpecialIds:
    """The BOS (and SEP) llama.cpp adds, from the tokenizer metadata quantcli writes into the GGUF."""
    from .eval_text import SpecialIds

    return SpecialIds.from_metadata({kv.key: kv.value for kv in metadata})


def calibrate(source: Path, data: CalibrationText, options: CalibrateOptions,
              progress: Callable[[int, int], None] | None = None) -> CalibrationResult:
    """The importance matrix of the HF checkpoint in `source` on `data` (see the module docstring)."""
    from ..engine import Engine
    from ..io.checkpoint import Checkpoint
    from ..plan.gguf import SourceModel
    from .eval_text import text_tokens

    model = SourceModel.open(Checkpoint.open(Path(source)))
    engine = Engine.from_hf(Path(source), threads=options.threads)
    try:
        ctx = resolve_ctx(options.ctx, engine.n_ctx_train)
        special = special_ids(model.tokenizer(None))
        tokens = text_tokens(Path(source), data.text, special)
        chunks = calibration_chunks(tokens, ctx, options.chunks, special.bos)
        routes = routes_for(model.specs, process_output=options.process_output)
        entries = collect(engine.run, chunks, routes, progress)
    finally:
        engine.close()
    stats = ImatrixStats(entries, (data.name,), chunk_count=len(chunks), chunk_size=ctx)
    return CalibrationResult(stats, int(len(tokens)), summarize(entries))


def check_imatrix_fits(path: Path, weights: Mapping[str, np.ndarray], specs: Iterable[Any]) -> None:
    """Refuse an importance matrix made for another model: a name that is no matrix of this model, or a size
    other than the matrix's columns (times its experts). llama.cpp would silently quantize without such entries."""
    sizes = {s.name: s.shape[-1] * (s.shape[0] if len(s.shape) == 3 else 1) for s in specs if len(s.shape) >= 2}
    unknown = sorted(n for n in weights if n not in sizes)
    if unknown:
        raise InputError(f"the imatrix {path} was made for another model: {len(unknown)} of its {len(weights)} entries "
                         f"name no matrix of this model (e.g. {unknown[0]}).",
                         hint="Compute one for this model: quantcli calibrate MODEL -o imatrix.gguf.")
    for name, w in weights.items():
        # a token embedding entry of the wrong size is skipped by llama.cpp's quantizer (and by ours), not refused
        if w.size != sizes[name] and not name.startswith("token_embd"):
            raise InputError(f"the imatrix {path} was made for another model: {name} has {w.size} values, this "
                             f"model's {name} needs {sizes[name]}.",
                             hint="Compute one for this model: quantcli calibrate MODEL -o imatrix.gguf.")
