"""Our F32 files hold what llama.cpp's own converter (convert_hf_to_gguf.py --outtype f32) writes for the same
checkpoint: the same tensors, bit for bit, and every architecture key it sets, with the same value.

This pins down the adapters (names, transforms, metadata) against the reference implementation. The tokenizer
is not compared here (tests/models does that): the converter runs on a copy of the checkpoint whose tokenizer
files are replaced by ones it accepts (a small SentencePiece model, or MiniLM's WordPiece for BERT), since it
refuses BPE pre-tokenizers it has no hash for and gemma2's converter requires SentencePiece. Our files may
carry more architecture keys than the converter's (gemma's per-layer sliding-window pattern, for one: llama.cpp
falls back to a default when it is absent).
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

from tests.fixtures.paths import model_path

pytestmark = pytest.mark.slow

MODELS = ("tiny-llama", "tiny-llama-bf16", "tiny-mistral", "tiny-qwen2", "tiny-qwen3", "tiny-gemma2", "tiny-gemma3",
          "tiny-phi3", "tiny-bert", "all-MiniLM-L6-v2")
NOT_ARCHITECTURE = ("general.", "tokenizer.", "GGUF.")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "tokenizer.model",
                   "added_tokens.json", "merges.txt", "vocab.json")


def with_donor_tokenizer(model: str, dest: Path) -> Path:
    """A copy of the checkpoint (weights linked, not copied) whose tokenizer the converter accepts.

    Decoders get a small SentencePiece model, which every decoder converter here tries first (gemma2's needs
    one); encoders get MiniLM's WordPiece files.
    """
    import json

    source = model_path(model)
    dest.mkdir()
    for item in source.iterdir():
        if item.name not in TOKENIZER_FILES:
            (dest / item.name).symlink_to(item.resolve())
    if json.loads((source / "config.json").read_text())["architectures"][0].startswith("Bert"):
        donor = model_path("all-MiniLM-L6-v2")
        for name in TOKENIZER_FILES:
            if (donor / name).is_file():
                (dest / name).write_bytes((donor / name).read_bytes())
    else:
        from tests.quant.mix_fixtures import _sentencepiece_model

        (dest / "tokenizer.model").write_bytes(_sentencepiece_model())
    return dest


@pytest.fixture(scope="session")
def llama_cpp_converted(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """llama_cpp_converted(model) -> convert_hf_to_gguf's F32 file for it (run once per model)."""
    from tests.fixtures.llama_cpp_sdist import converter_tree

    converter = converter_tree() / "convert_hf_to_gguf.py"
    folder = tmp_path_factory.mktemp("llama-cpp-converter")
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # the tree's own gguf-py

    def get(model: str) -> Path:
        out = folder / f"{model}.gguf"
        if not out.exists():
            source = with_donor_tokenizer(model, folder / model)
            result = subprocess.run([sys.executable, str(converter), str(source), "--outtype", "f32",
                                     "--outfile", str(out)], capture_output=True, text=True, env=env)
            assert result.returncode == 0, f"convert_hf_to_gguf failed on {model}:\n{result.stderr[-3000:]}"
        return out

    return get


def architecture_fields(reader: gguf.GGUFReader) -> dict[str, object]:
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith(NOT_ARCHITECTURE)}


def same_value(ours: object, theirs: object) -> bool:
    if isinstance(theirs, float) or isinstance(ours, float):
        return np.float32(ours) == np.float32(theirs)  # type: ignore[arg-type]
    return ours == theirs


@pytest.mark.parametrize("model", MODELS)
def test_f32_file_matches_llama_cpp_converter(model: str, converted, llama_cpp_converted) -> None:  # type: ignore[no-untyped-def]
    ours = gguf.GGUFReader(converted(model, "F32"))
    theirs = gguf.GGUFReader(llama_cpp_converted(model))

    our_fields, their_fields = architecture_fields(ours), architecture_fields(theirs)
    missing = sorted(set(their_fields) - set(our_fields))
    assert not missing, f"keys llama.cpp's converter writes and we do not: {missing}"
    wrong = {k: (our_fields[k], v) for k, v in their_fields.items() if not same_value(our_fields[k], v)}
    assert not wrong, f"(ours, converter's) values differ: {wrong}"

    our_tensors = {t.name: t for t in ours.tensors}
    their_tensors = {t.name: t for t in theirs.tensors}
    assert sorted(our_tensors) == sorted(their_tensors)
    for name, theirs_t in their_tensors.items():
        ours_t = our_tensors[name]
        assert (ours_t.tensor_type, list(ours_t.shape)) == (theirs_t.tensor_type, list(theirs_t.shape)), name
        assert np.asarray(ours_t.data).tobytes() == np.asarray(theirs_t.data).tobytes(), f"{name} differs"
