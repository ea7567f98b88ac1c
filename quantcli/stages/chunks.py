"""The tokenized text cut into chunks, the one way llama.cpp's imatrix and perplexity tools both cut it.

Both tools (tools/imatrix/imatrix.cpp, tools/perplexity/perplexity.cpp) tokenize their text once, whole, then:
- cut the tokens into consecutive chunks of `ctx` tokens, dropping the tail that does not fill a chunk, and keep
  the first `--chunks` of them;
- refuse a text shorter than two chunks;
- evaluate every chunk as an independent sequence whose first token is replaced by BOS when the vocabulary adds
  one (the original first token is kept for scoring: position 0 is never a perplexity target).
What they do with a chunk differs: calibrate sums the squared inputs of every matrix over all ctx positions;
perplexity scores the second half (stages/perplexity.py). The chunks are the same, so an importance matrix and a
perplexity over the same text and ctx see the same sequences.

    >>> tokens = np.arange(10, 21, dtype=np.int32)          # 11 tokens: two chunks of 5, one token left over
    >>> chunk_tokens(tokens, 5).tolist()
    [[10, 11, 12, 13, 14], [15, 16, 17, 18, 19]]
    >>> with_bos(chunk_tokens(tokens, 5), 1).tolist()
    [[1, 11, 12, 13, 14], [1, 16, 17, 18, 19]]
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError

MIN_CHUNKS = 2          # both tools refuse a text shorter than two chunks
DEFAULT_CTX = 512       # both tools' default -c


def require_chunks(n_tokens: int, ctx: int, what: str) -> None:
    """Refuse a text of `n_tokens` that does not fill MIN_CHUNKS chunks of `ctx` (`what` names the text)."""
    if n_tokens < MIN_CHUNKS * ctx:
        raise InputError(f"{what} tokenizes to {n_tokens} tokens; at least {MIN_CHUNKS * ctx} are needed for "
                         f"{MIN_CHUNKS} chunks of --ctx {ctx}.",
                         hint="Give a longer text, or a smaller --ctx.")


def chunk_tokens(tokens: np.ndarray, ctx: int, n_chunks: int | None = None) -> np.ndarray:
    """The tokens as [n, ctx] int32 chunks, in order, the remainder dropped; `n_chunks` keeps the first n (None:
    all). The original tokens: give the model with_bos(...) of them."""
    if ctx < 1:
        raise InputError(f"--ctx {ctx} is not a positive number of tokens.", hint=f"Use e.g. --ctx {DEFAULT_CTX}.")
    if n_chunks is not None and n_chunks < 1:
        raise InputError(f"--chunks {n_chunks} is not a positive number.", hint="Leave it out to use the whole text.")
    n = len(tokens) // ctx
    if n_chunks is not None:
        n = min(n, n_chunks)
    return np.asarray(tokens[: n * ctx], dtype=np.int32).reshape(n, ctx)


def with_bos(chunks: np.ndarray, bos: int | None) -> np.ndarray:
    """What the model is given: a copy of `chunks` with each first token replaced by `bos` (None: `chunks` as is)."""
    if bos is None:
        return chunks
    given = chunks.copy()
    given[:, 0] = bos
    return given


def resolve_ctx(ctx: int | None, n_ctx_train: int) -> int:
    """--ctx as given, or DEFAULT_CTX capped at the model's context; longer than the model's context is refused."""
    if ctx is None:
        return min(DEFAULT_CTX, n_ctx_train)
    if ctx > n_ctx_train:
        raise InputError(f"--ctx {ctx} is longer than the model's context of {n_ctx_train} tokens.",
                         hint=f"Use --ctx {min(DEFAULT_CTX, n_ctx_train)} or less.")
    return ctx


def calibration_chunks(tokens: np.ndarray, ctx: int, n_chunks: int | None, bos: int | None) -> np.ndarray:
    """What a calibration pass (imatrix, GPTQ, AWQ) gives the model: at least MIN_CHUNKS chunks of the text, the
    first `n_chunks` of them (None: all), each starting with BOS when the vocabulary adds one."""
    require_chunks(len(tokens), ctx, "the calibration text")
    return with_bos(chunk_tokens(tokens, ctx, n_chunks), bos)
