"""One chunker for calibrate and verify (stages/chunks.py): llama.cpp's imatrix and perplexity tools cut a text the
same way, so both stages must hand the engine the same sequences for the same text and ctx."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from quantcli.errors import InputError
from quantcli.stages import calibrate as calibrate_stage
from quantcli.stages import verify_model as verify_stage
from quantcli.stages.calibration_data import builtin_text
from quantcli.stages.chunks import chunk_tokens, require_chunks, with_bos
from quantcli.stages.eval_text import SpecialIds


def test_chunks_keep_the_text_in_order_and_drop_the_remainder() -> None:
    tokens = np.arange(10, 10 + 23, dtype=np.int64)
    chunks = chunk_tokens(tokens, 5)
    assert chunks.dtype == np.int32 and chunks.shape == (4, 5)
    assert chunks.reshape(-1).tolist() == list(range(10, 30))            # 3 tokens of the tail dropped
    assert chunk_tokens(tokens, 5, 2).tolist() == [[10, 11, 12, 13, 14], [15, 16, 17, 18, 19]]
    assert chunk_tokens(tokens, 5, 99).shape == (4, 5)                    # --chunks beyond the text: all of it


def test_bos_replaces_only_what_the_model_is_given() -> None:
    tokens = np.arange(1, 12, dtype=np.int32)
    chunks = chunk_tokens(tokens, 4)
    given = with_bos(chunks, 0)
    assert given[:, 0].tolist() == [0, 0] and given[:, 1:].tolist() == chunks[:, 1:].tolist()
    assert chunks[:, 0].tolist() == [1, 5] and tokens[0] == 1                # originals kept for scoring
    assert with_bos(chunks, None) is chunks


def test_short_texts_and_bad_sizes_are_refused() -> None:
    with pytest.raises(InputError, match="tokenizes to 9 tokens; at least 10 are needed for 2 chunks of --ctx 5"):
        require_chunks(9, 5, "the text")
    require_chunks(10, 5, "the text")
    with pytest.raises(InputError, match="--ctx 0"):
        chunk_tokens(np.arange(10), 0)
    with pytest.raises(InputError, match="--chunks 0"):
        chunk_tokens(np.arange(10), 5, 0)


class Recorder:
    """An engine that records the token arrays it is given; logits all zero (a uniform distribution)."""

    n_ctx_train = 4096
    is_encoder = False

    def __init__(self, seen: list[np.ndarray], vocab: int) -> None:
        self.seen, self.vocab_size = seen, vocab

    def run(self, tokens: np.ndarray, *, capture: Any = None, logits: bool = True,
            logits_from: int = 0) -> Iterator[np.ndarray]:
        self.seen.append(np.array(tokens))
        if not logits:
            return iter(())
        return iter([np.zeros((tokens.shape[1] - logits_from, self.vocab_size), np.float32) for _ in range(len(tokens))])

    def close(self) -> None:
        pass


@pytest.mark.slow   # the tiny models' tokenizers and tensor lists
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma2"])   # byte-level BPE without BOS; SentencePiece with
def test_calibrate_and_verify_give_the_engine_the_same_chunks(name: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcli.engine import Engine
    from quantcli.io.checkpoint import Checkpoint
    from quantcli.plan.gguf import SourceModel
    from tests.fixtures.paths import model_path

    model = model_path(name)
    text = tmp_path / "text.txt"
    text.write_text(builtin_text("eval").text[:30000], encoding="utf-8")
    metadata = {kv.key: kv.value for kv in SourceModel.open(Checkpoint.open(model)).tokenizer(None)}
    vocab = len(metadata["tokenizer.ggml.tokens"])
    by_calibrate: list[np.ndarray] = []
    by_verify: list[np.ndarray] = []
    monkeypatch.setattr(Engine, "from_hf", classmethod(lambda cls, folder, threads=0: Recorder(by_calibrate, vocab)))
    monkeypatch.setattr(verify_stage, "open_engines",
                        lambda path, source, threads: (Recorder(by_verify, vocab), Recorder([], vocab)))
    monkeypatch.setattr(verify_stage, "gguf_metadata", lambda path: metadata)

    ctx, n = 64, 5
    from quantcli.stages.calibration_data import load_calibration_text

    result = calibrate_stage.calibrate(model, load_calibration_text(str(text)), calibrate_stage.CalibrateOptions(ctx=ctx, chunks=n))
    report = verify_stage.verify_model(tmp_path / "unused.gguf", model, str(text), ctx=ctx, chunks=n)
    calibrated, verified = np.concatenate(by_calibrate), np.concatenate(by_verify)
    assert calibrated.shape == verified.shape == (n, ctx)
    assert (calibrated == verified).all()
    assert result.stats.chunk_count == report.result.n_chunks == n
    bos = SpecialIds.from_metadata(metadata).bos
    assert (bos is not None) == (name == "tiny-gemma2")
    if bos is not None:
        assert (calibrated[:, 0] == bos).all()                       # every chunk starts with BOS, in both
        assert (calibrated[1:, 1:] != bos).any()
