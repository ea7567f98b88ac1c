"""Model-level verification: how good is the output, measured by running it.

Decoders: the output (a GGUF file, or a quantized safetensors folder) and its source checkpoint both score the
same text, llama-perplexity's way (stages/perplexity.py): PPL of each, ln(PPL ratio), KL divergence of the
output's next-token distribution from the source's, same-top-1 rate and RMS of Δp. Encoders (bert): both embed the same chunks of text, and the cosine
similarity of the output's pooled embeddings to the source's is reported (mean and min).

Both models run in the forward-pass engine (quantcli.engine), the source in float32 from its safetensors and the
output from its own quantized weights (GGUF types decoded per tensor; a folder's Linear weights dequantized by
its format's reader, io/quantized_folder.py). Chunks go through both in batches, and the two logit streams are
consumed in step, so memory holds one chunk's logits per model, never the whole run's.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from ..errors import InputError, VerifyError
from .calibration_data import load_calibration_text
from .chunks import DEFAULT_CTX, chunk_tokens, require_chunks, with_bos
from .eval_text import SpecialIds, text_tokens
from .perplexity import PerplexityResult, PerplexityScorer, first_scored

# Chunks per engine pass: the engine runs all sequences of a pass layer by layer (one block's weights decoded
# once per pass), holding their activations; 8 x 512 tokens keeps that to tens of MB on a 135M model.
BATCH_CHUNKS = 8


class ForwardEngine(Protocol):
    """What this stage uses of quantcli.engine.Engine (ENGINE_API.md)."""

    vocab_size: int
    n_ctx_train: int
    is_encoder: bool

    def run(self, tokens: np.ndarray, *, capture: Any = None, logits: bool = True,
            logits_from: int = 0) -> Iterator[np.ndarray]: ...

    def embed(self, tokens: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class EmbeddingResult:
    """Cosine similarity of the output's pooled embeddings to the source's, one per chunk of text."""

    n_chunks: int
    ctx: int
    cos_mean: float
    cos_min: float


@dataclass(frozen=True)
class ModelQualityReport:
    path: str
    source: str
    data: str
    result: PerplexityResult | EmbeddingResult

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "source": self.source, "data": self.data}
        data.update(asdict(self.result))
        if isinstance(self.result, PerplexityResult):
            data["ppl_ratio"] = self.result.ppl_ratio
        return data


def open_engines(path: Path, source: Path, threads: int) -> tuple[ForwardEngine, ForwardEngine]:
    """(source engine, output engine). The output is a GGUF file, or a (quantized) HF folder, which the engine
    reads through its format's dequantizer (engine/folder_weights.py)."""
    from ..engine import Engine

    src = Engine.from_hf(source, threads=threads)
    if not Path(path).is_dir():
        return src, Engine.from_gguf(path, source=source, threads=threads)
    try:
        out = Engine.from_hf(path, threads=threads)
        check_same_model(src.spec, out.spec, path, source)
    except BaseException:
        src.close()
        raise
    return src, out


def check_same_model(src: Any, out: Any, path: Path, source: Path) -> None:
    """A folder scored against a source must describe the same model: same tensors, same shapes."""
    a = {t.hf_name: t.shape for t in src.tensors}
    b = {t.hf_name: t.shape for t in out.tensors}
    if a != b:
        diff = sorted(set(a.items()) ^ set(b.items()))
        raise InputError(f"{path} and {source} are not the same model (first difference: {diff[0][0]}).",
                         hint="Pass the HF folder the quantized folder was made from as --source.")


def gguf_metadata(path: Path) -> dict[str, object]:
    """The output file's scalar metadata (the special-token facts llama.cpp tokenizes with)."""
    from .verify import open_layout

    return open_layout(Path(path)).values


def special_ids(path: Path, source: Path) -> SpecialIds:
    """The BOS (and SEP) added to each chunk: from a GGUF's tokenizer metadata; for a folder, from the metadata
    quantcli derives from the source folder's tokenizer (what a GGUF made from it would hold), so a folder and a
    GGUF of one model score the same tokens."""
    if not Path(path).is_dir():
        return SpecialIds.from_metadata(gguf_metadata(path))
    from ..io.checkpoint import Checkpoint
    from ..plan.gguf import SourceModel

    model = SourceModel.open(Checkpoint.open(Path(source)))
    return SpecialIds.from_metadata({kv.key: kv.value for kv in model.tokenizer(None)})


def verify_model(path: Path, source: Path, data: str | Path, *, ctx: int = DEFAULT_CTX, chunks: int | None = None,
                 threads: int = 0) -> ModelQualityReport:
    """Score the GGUF file or quantized folder at `path` against the checkpoint `source` on the text `data`: a
    text file (or folder, JSONL, parquet, hub dataset: whatever calibrate reads) or "builtin:eval", the
    evaluation text shipped with quantcli.

        report = verify_model(Path("smol-q4_k_m.gguf"), Path("SmolLM2-135M-Instruct"), "builtin:eval")
        report.result.kld_mean
    """
    if not Path(source).is_dir():
        raise InputError(f"source {source} is not a folder.", hint="Give the HF checkpoint folder the file was made from.")
    if ctx < 4:
        raise InputError(f"--ctx {ctx} is too small.", hint="Use at least 4 tokens; llama-perplexity's default is 512.")
    if chunks is not None and chunks < 1:
        raise InputError(f"--chunks {chunks} must be at least 1.", hint="Leave it out to use the whole text.")
    special = special_ids(Path(path), Path(source))
    loaded = load_calibration_text(data)
    text, name = loaded.text, loaded.name
    src, out = open_engines(Path(path), Path(source), threads)
    try:
        if ctx > src.n_ctx_train:
            raise InputError(f"--ctx {ctx} is beyond the model's training context ({src.n_ctx_train}).",
                             hint=f"Use --ctx {src.n_ctx_train} or less.")
        if src.is_encoder:
            result: PerplexityResult | EmbeddingResult = score_embeddings(
                src, out, encoder_chunks(Path(source), text, special, ctx, chunks, name))
        else:
            tokens = text_tokens(Path(source), text, special)
            require_chunks(len(tokens), ctx, name)
            result = score_perplexity(src, out, chunk_tokens(tokens, ctx, chunks), special.bos)
    finally:
        for engine in (src, out):
            close = getattr(engine, "close", None)   # the engine maps its files; a fake has nothing to release
            if close is not None:
                close()
    return ModelQualityReport(str(path), str(source), name, result)


def score_perplexity(src: ForwardEngine, out: ForwardEngine, chunks: np.ndarray, bos: int | None,
                     batch: int = BATCH_CHUNKS) -> PerplexityResult:
    """llama-perplexity's KL-divergence figures of `out` against `src` over `chunks` [n, ctx] (original tokens)."""
    return score_outputs(src, [out], chunks, bos, batch)[0]


def score_outputs(src: ForwardEngine, outs: Sequence[ForwardEngine], chunks: np.ndarray, bos: int | None,
                  batch: int = BATCH_CHUNKS, progress: Callable[[int, int], None] | None = None
                  ) -> list[PerplexityResult]:
    """The figures of each of `outs` against `src`, the source run once per batch of chunks.

    With one output the two logit streams are consumed in step (one chunk's logits per model in memory); with
    several, the source's logits of one batch are kept while each output runs that batch.
    """
    scorers = [PerplexityScorer(chunks.shape[1]) for _ in outs]
    first = first_scored(chunks.shape[1])   # only the scored half's logits are computed
    for lo in range(0, len(chunks), batch):
        part = chunks[lo: lo + batch]
        given = with_bos(part, bos)
        base: Iterable[np.ndarray] = (src.run(given, logits_from=first) if len(outs) == 1
                                      else list(src.run(given, logits_from=first)))
        for scorer, out in zip(scorers, outs):
            for chunk, base_logits, logits in zip(part, base, out.run(given, logits_from=first), strict=True):
                scorer.add(chunk, logits, base_logits)
        if progress is not None:
            progress(min(lo + batch, len(chunks)), len(chunks))
    return [scorer.result() for scorer in scorers]


def encoder_chunks(source: Path, text: str, special: SpecialIds, ctx: int, chunks: int | None,
                   data: str) -> np.ndarray:
    """The text cut into equal sequences of `ctx` tokens, each framed as the tokenizer frames one input
    ([CLS] ... [SEP] for bert), so every sequence is a full, unpadded input."""
    frame = [t for t in (special.bos, special.sep) if t is not None]
    body = ctx - len(frame)
    ids = text_tokens(source, text, SpecialIds())
    if len(ids) < body:
        raise InputError(f"{data} tokenizes to {len(ids)} tokens; one chunk at --ctx {ctx} needs {body}.",
                         hint="Give a longer text or a smaller --ctx.")
    parts = chunk_tokens(ids, body, chunks)
    head = np.full((len(parts), 1 if special.bos is not None else 0), special.bos or 0, np.int32)
    tail = np.full((len(parts), 1 if special.sep is not None else 0), special.sep or 0, np.int32)
    return np.concatenate([head, parts, tail], axis=1)


def score_embeddings(src: ForwardEngine, out: ForwardEngine, chunks: np.ndarray,
                     batch: int = BATCH_CHUNKS) -> EmbeddingResult:
    cosines: list[np.ndarray] = []
    for lo in range(0, len(chunks), batch):
        part = chunks[lo: lo + batch]
        a = np.asarray(src.embed(part), dtype=np.float64)
        b = np.asarray(out.embed(part), dtype=np.float64)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cosines.append(np.einsum("sh,sh->s", a, b) / np.where(norms > 0, norms, 1.0))
    cos = np.concatenate(cosines)
    return EmbeddingResult(len(cos), chunks.shape[1], float(cos.mean()), float(cos.min()))


def check_thresholds(report: ModelQualityReport, *, max_kld: float | None = None,
                     max_ppl_ratio: float | None = None) -> None:
    """Raise VerifyError (exit 1) naming the figure and the threshold it misses."""
    res = report.result
    if not isinstance(res, PerplexityResult) or res.kld_mean is None:
        return
    if max_kld is not None and not res.kld_mean <= max_kld:
        raise VerifyError(f"{report.path}: mean KL divergence {res.kld_mean:.6f} is above max_kld {max_kld:g}.",
                          hint="Use a larger type, an importance matrix, or relax the recipe's verify.max_kld.")
    ratio = res.ppl_ratio
    if max_ppl_ratio is not None and ratio is not None and not (math.isfinite(ratio) and ratio <= max_ppl_ratio):
        raise VerifyError(f"{report.path}: PPL ratio {ratio:.6f} (PPL {res.ppl:.4f} vs source {res.ppl_source:.4f}) "
                          f"is above max_ppl_ratio {max_ppl_ratio:g}.",
                          hint="Use a larger type, an importance matrix, or relax the recipe's verify.max_ppl_ratio.")



VERIFY_RECORD = "quantcli-verify.json"   # beside a quantized folder's weights; publish puts its figures on the card


def record_folder_report(report: ModelQualityReport, failure: str | None) -> Path | None:
    """Keep a folder's model-level figures in FOLDER/quantcli-verify.json (written atomically; GGUF files have
    their run manifest instead). `failure` is the threshold a figure missed, if any: publish refuses such folders."""
    import json

    from ..io.atomic import atomic_file

    folder = Path(report.path)
    if not folder.is_dir():
        return None
    record = {**report.to_json(), "ok": failure is None, "failure": failure}
    with atomic_file(folder / VERIFY_RECORD) as fp:
        fp.write((json.dumps(record, indent=2) + "\n").encode())
    return folder / VERIFY_RECORD
