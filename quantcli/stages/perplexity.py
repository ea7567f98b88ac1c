"""Perplexity and KL divergence, scored the way llama.cpp's llama-perplexity scores them.

The rule (tools/perplexity/perplexity.cpp, default mode): the whole text is tokenized once and cut into chunks of
`ctx` tokens; when the vocabulary adds a BOS token, the first token of every chunk is replaced by BOS before the
chunk is evaluated (stages/chunks.py: the same chunks calibrate collects its statistics over). Only the second half of each chunk is scored, so every prediction has at least ctx/2 tokens
of context: the logits at positions first = ctx//2 .. ctx-2 predict the (original) tokens at first+1 .. ctx-1,
which is ctx - 1 - ctx//2 scored tokens per chunk. PPL = exp(mean negative log-likelihood).

In KL-divergence mode the same positions of a base model (here the source checkpoint) and of the quantized model
are compared token by token: KL(base || quantized) over the whole vocabulary, whether both put their top-1 on the
same token, and Δp, the change of the probability given to the actual next token. Statistics: mean, median and
percentiles (linear interpolation between sorted values, as llama-perplexity prints them), RMS of Δp.

Two deliberate differences from llama-perplexity, both below its printed precision: it stores the base model's
log-probabilities as 16-bit integers and skips vocabulary entries whose base log-probability is below -16 in the
KL sum; we keep them exact (float64) and sum over every entry.

Everything streams: a caller adds one chunk's logits at a time ([ctx, vocab] floats, 100 MB for a 49k vocabulary
at ctx 512) and only per-token scalars are kept (a few floats per scored token).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .chunks import chunk_tokens, with_bos  # noqa: F401  (the chunks scored here; re-exported for callers)

# Rows of one chunk's logits turned into log-probabilities at a time: float64 working copies stay at
# ROW_BLOCK * vocab * 8 bytes (12 MB at 49k vocab) instead of the whole chunk's.
ROW_BLOCK = 32
# The percentiles reported for the per-token KL divergence (the median is reported on its own).
KLD_PERCENTILES = (90, 95, 99)


def first_scored(ctx: int) -> int:
    """The first position whose logits are scored: the second half of the chunk."""
    return ctx // 2


def scored_per_chunk(ctx: int) -> int:
    """Tokens scored per chunk of `ctx`: the logits at first..ctx-2 predict the tokens at first+1..ctx-1."""
    return ctx - 1 - first_scored(ctx)


def _log_softmax(rows: np.ndarray) -> np.ndarray:
    """log-probabilities of float32 logit rows, in float64."""
    x = rows.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x


def _mean_sd(sum1: float, sum2: float, n: int) -> tuple[float, float]:
    """Mean and its standard error from running sums (llama-perplexity's ± figures)."""
    mean = sum1 / n
    var = sum2 / n - mean * mean
    return mean, (math.sqrt(var / (n - 1)) if var > 0 and n > 1 else 0.0)


@dataclass(frozen=True)
class PerplexityResult:
    """The model-level quality figures of one evaluation."""

    n_chunks: int
    ctx: int
    n_scored: int
    ppl: float
    ppl_err: float                      # standard error of ppl (llama-perplexity's "±")
    ppl_source: float | None = None     # with a base model: its PPL on the same tokens
    ln_ppl_ratio: float | None = None   # ln(ppl / ppl_source)
    kld_mean: float | None = None
    kld_median: float | None = None
    kld_p90: float | None = None
    kld_p95: float | None = None
    kld_p99: float | None = None
    kld_max: float | None = None
    same_top1: float | None = None      # fraction of scored tokens whose argmax agrees with the base's
    rms_dp: float | None = None         # RMS of Δp = p(next token) - p_base(next token)

    @property
    def ppl_ratio(self) -> float | None:
        return None if self.ln_ppl_ratio is None else math.exp(self.ln_ppl_ratio)


class PerplexityScorer:
    """Accumulates llama-perplexity's figures chunk by chunk.

        >>> scorer = PerplexityScorer(ctx=4)
        >>> scorer.add(np.array([5, 1, 2, 3]), np.zeros((4, 8), np.float32))   # uniform over 8 tokens
        >>> round(scorer.result().ppl, 6)
        8.0
    """

    def __init__(self, ctx: int) -> None:
        if ctx < 4:
            raise ValueError(f"ctx must be at least 4, got {ctx}")
        self.ctx = ctx
        self.n_chunks = 0
        self._nll: list[np.ndarray] = []        # per scored token, float64: scalars only
        self._nll_base: list[np.ndarray] = []
        self._kld: list[np.ndarray] = []
        self._dp: list[np.ndarray] = []
        self._same_top = 0

    def add(self, chunk: np.ndarray, logits: np.ndarray, base_logits: np.ndarray | None = None) -> None:
        """Score one chunk: its original tokens [ctx], the model's logits and optionally the base model's logits
        for the same input. Either every chunk has base logits or none has. Logits are [ctx, vocab], or only the
        scored half's [ctx - first_scored(ctx), vocab] (Engine.run's logits_from)."""
        ctx = self.ctx
        first = first_scored(ctx)
        if chunk.shape != (ctx,) or logits.ndim != 2 or logits.shape[0] not in (ctx, ctx - first):
            raise ValueError(f"expected tokens [{ctx}] and logits [{ctx} or {ctx - first}, vocab], got {chunk.shape} "
                             f"and {logits.shape}")
        if base_logits is not None and base_logits.shape != logits.shape:
            raise ValueError(f"base logits {base_logits.shape} differ from logits {logits.shape}")
        if self.n_chunks and (base_logits is None) != (not self._kld):
            raise ValueError("every chunk needs base logits, or none")
        off = ctx - logits.shape[0]      # the position of logits' row 0
        targets = np.asarray(chunk[first + 1:], dtype=np.int64)
        for lo in range(first, ctx - 1, ROW_BLOCK):
            hi = min(lo + ROW_BLOCK, ctx - 1)
            tgt = targets[lo - first: hi - first]
            rows = np.arange(hi - lo)
            logp = _log_softmax(logits[lo - off:hi - off])
            nll = -logp[rows, tgt]
            self._nll.append(nll)
            if base_logits is None:
                continue
            base_rows = base_logits[lo - off:hi - off]
            logq = _log_softmax(base_rows)
            nll_base = -logq[rows, tgt]
            self._nll_base.append(nll_base)
            # KL(base || model) = sum_v q_v (log q_v - log p_v); exp of -inf (q_v == 0) gives 0, and 0 * finite is 0.
            self._kld.append(np.einsum("rv,rv->r", np.exp(logq), logq - logp))
            self._dp.append(np.exp(-nll) - np.exp(-nll_base))
            self._same_top += int(np.count_nonzero(np.argmax(logits[lo - off:hi - off], axis=1) == np.argmax(base_rows, axis=1)))
        self.n_chunks += 1

    def result(self) -> PerplexityResult:
        if not self.n_chunks:
            raise ValueError("no chunk was scored")
        nll = np.concatenate(self._nll)
        n = nll.size
        mean, sd = _mean_sd(float(nll.sum()), float(np.dot(nll, nll)), n)
        ppl = math.exp(mean)
        res = PerplexityResult(self.n_chunks, self.ctx, n, ppl, ppl * sd)
        if not self._kld:
            return res
        nll_base = np.concatenate(self._nll_base)
        kld = np.concatenate(self._kld)
        dp = np.concatenate(self._dp)
        p90, p95, p99 = (float(np.percentile(kld, q)) for q in KLD_PERCENTILES)
        mean_base = float(nll_base.mean())
        return PerplexityResult(
            self.n_chunks, self.ctx, n, ppl, ppl * sd,
            ppl_source=math.exp(mean_base), ln_ppl_ratio=mean - mean_base,
            kld_mean=float(kld.mean()), kld_median=float(np.median(kld)),
            kld_p90=p90, kld_p95=p95, kld_p99=p99, kld_max=float(kld.max()),
            same_top1=self._same_top / n, rms_dp=math.sqrt(float(np.dot(dp, dp)) / n))
