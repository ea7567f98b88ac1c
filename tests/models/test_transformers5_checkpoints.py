"""Checkpoints saved by transformers 5: a SentencePiece-family tokenizer as tokenizer.json only.

transformers 5 saves fast tokenizers only, so a Llama 2 / Mistral or Gemma 3 checkpoint saved with it has a
byte-fallback BPE tokenizer.json and no tokenizer.model. Both are built here from the test tokenizers (the same
tokenizer.json transformers writes, with tokenizer.model left out), converted with the CLI, and the GGUF loaded in
llama.cpp must tokenize as transformers' AutoTokenizer does on the interop texts.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.paths import model_path
from tests.fixtures.random_models import RANDOM_MODELS, build_random_model
from tests.interop.conftest import TEXT
from tests.models import tokenizer_fixtures as fx

pytestmark = pytest.mark.slow


def convert(folder: Path, out: Path) -> Path:
    res = subprocess.run([sys.executable, "-m", "quantcli.cli.app", "convert", str(folder), "--type", "F16",
                          "-o", str(out), "--verify", "none"], capture_output=True, text=True,
                         env={**os.environ, "QUANTCLI_NO_PROGRESS": "1", "QUANTCLI_DEBUG": "1"})
    assert res.returncode == 0, res.stderr
    return out


def saved_by_transformers5(folder: Path) -> Path:
    (folder / "tokenizer.model").unlink()
    assert not any(p.name.endswith(".model") for p in folder.iterdir())
    assert json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]["byte_fallback"] is True
    return folder


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("t5") / "llama"
    fx.write_spm_tokenizer(folder, flavour="llama")
    tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    n_vocab = max([*tokenizer["model"]["vocab"].values(), *(a["id"] for a in tokenizer["added_tokens"])]) + 1
    spec = next(s for s in RANDOM_MODELS if s.name == "tiny-llama")
    build_random_model(spec, folder, overrides={"vocab_size": n_vocab, "bos_token_id": 1, "eos_token_id": 2,
                                                "pad_token_id": None})
    return saved_by_transformers5(folder)


@pytest.fixture(scope="module")
def gemma3_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("t5") / "gemma3"
    shutil.copytree(model_path("tiny-gemma3"), folder)
    return saved_by_transformers5(folder)


def mismatches(gguf: Path, folder: Path, texts: list[str]) -> list[str]:
    from transformers import AutoTokenizer

    ours = fx.llama_cpp_tokenizer(gguf)
    reference = AutoTokenizer.from_pretrained(folder)
    out = []
    for add_special in (False, True):
        for text in texts:
            got, want = ours(text, add_special), reference(text, add_special_tokens=add_special)["input_ids"]
            if got != want:
                out.append(f"add_special={add_special} {text!r}: llama.cpp {got} != transformers {want}")
    return out


def test_llama_with_tokenizer_json_only_tokenizes_like_transformers(llama_folder: Path, tmp_path: Path) -> None:
    gguf = convert(llama_folder, tmp_path / "llama.gguf")
    meta = fx.read_gguf_metadata(gguf)
    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.add_space_prefix"] is True
    # transformers 5's LlamaTokenizer marks only the start of the input ("first"): text that already starts with
    # whitespace gets no extra mark there, while llama.cpp (like SentencePiece and the tokenizer.json) adds it.
    # That difference is the same with tokenizer.model present, so those texts are compared with the `tokenizers`
    # library, which runs the tokenizer.json as written.
    texts = [TEXT, *fx.TRICKY_STRINGS]
    leading_space = [t for t in texts if t[:1].isspace()]
    assert mismatches(gguf, llama_folder, [t for t in texts if t not in leading_space]) == []
    ours, hf = fx.llama_cpp_tokenizer(gguf), fx.hf_tokenizer(llama_folder)
    assert [ours(t, False) for t in leading_space] == [hf(t, False) for t in leading_space]


def test_gemma3_with_tokenizer_json_only_tokenizes_like_transformers(gemma3_folder: Path, tmp_path: Path) -> None:
    gguf = convert(gemma3_folder, tmp_path / "gemma3.gguf")
    meta = fx.read_gguf_metadata(gguf)
    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.add_space_prefix"] is False
    turns = [t.replace("<|im_start|>", "<start_of_turn>").replace("<|im_end|>", "<end_of_turn>")
             for t in fx.TRICKY_STRINGS]
    assert mismatches(gguf, gemma3_folder, [TEXT, *turns]) == []


def test_scores_rebuilt_from_merges_equal_tokenizer_model_ordering(tmp_path: Path) -> None:
    """The rebuilt scores order merged pieces as the SentencePiece model's own scores do."""
    from quantcli.models.tokenizer.files import TokenizerFiles
    from quantcli.models.tokenizer.json_spm import sentencepiece_from_json
    from quantcli.models.tokenizer.sentencepiece_model import read_sentencepiece

    folder = fx.write_spm_tokenizer(tmp_path / "tok", flavour="llama")
    original = read_sentencepiece(folder / "tokenizer.model")
    rebuilt = sentencepiece_from_json(TokenizerFiles.read(folder))
    merged = [i for i, p in enumerate(original.pieces) if p.kind == 1 and len(p.text) > 1]
    assert [rebuilt.pieces[i].text for i in merged] == [original.pieces[i].text for i in merged]
    # normal and byte pieces keep their kind; special pieces take theirs from the added tokens at export
    plain = [i for i, p in enumerate(original.pieces) if p.kind in (1, 6)]
    assert [rebuilt.pieces[i].kind for i in plain] == [original.pieces[i].kind for i in plain]
    by_original = sorted(merged, key=lambda i: -original.pieces[i].score)
    by_rebuilt = sorted(merged, key=lambda i: -rebuilt.pieces[i].score)
    assert by_original == by_rebuilt
