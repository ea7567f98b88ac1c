"""Tokenizer export: the GGUF metadata we write makes llama.cpp tokenize exactly as the Hugging Face tokenizer.

The interop tests write our metadata into a vocab-only GGUF, load it with llama.cpp (llama-cpp-python) and
compare its ids with the `tokenizers` library running the folder's tokenizer.json, on strings chosen to break
tokenizers (tokenizer_fixtures.TRICKY_STRINGS) and on llama.cpp's own test vectors. Unit tests pin down the
pre-tokenizer detection, the SentencePiece reader, special tokens, chat templates and padding.
"""
from __future__ import annotations

import json
import shutil
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import pytest

from quantcli.errors import InputError, UnsupportedError
from quantcli.io.gguf_metadata import MetaKV
from quantcli.models.tokenizer import tokenizer_metadata
from quantcli.models.tokenizer.known_pretokenizers import (
    GPT2_BYTE_LEVEL,
    KNOWN_PRE_TOKENIZERS,
    LLAMA3_REGEX,
    KnownPreTokenizer,
    byte_level,
    digits,
    sequence,
    split,
)
from quantcli.models.tokenizer.pretokenizer import canonical_definition, detect_pre_tokenizer
from quantcli.models.tokenizer.sentencepiece_model import read_sentencepiece
from quantcli.models.tokenizer.spm import json_prepend_scheme
from tests.models import tokenizer_fixtures as fx

Keys = gguf.Keys.Tokenizer
Tokenize = Callable[[str, bool], list[int]]
NFC = {"type": "NFC"}
# Tests that need llama.cpp, the real tokenizers or a trained SentencePiece model (the "slow" marker of
# pyproject.toml); they do not depend on the quantization backend, so `make test` runs them once.
SLOW = pytest.mark.slow
SPM_CONFIG_VOCAB = 1024  # the SentencePiece fixture holds 1002 ids; the model rows are padded to 1024


def model_config(architecture: str, model_type: str, vocab_size: int, **ids: int) -> dict[str, Any]:
    """A small but complete config.json (llama.cpp's converter reads the hyper-parameters even for a vocab)."""
    return {"architectures": [architecture], "model_type": model_type, "vocab_size": vocab_size,
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
            "num_key_value_heads": 4, "head_dim": 16, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
            **{f"{role}_token_id": value for role, value in ids.items()}}


def as_dict(meta: list[MetaKV]) -> dict[str, Any]:
    keys = [kv.key for kv in meta]
    assert len(keys) == len(set(keys)), f"duplicate keys: {keys}"
    return {kv.key: kv.value for kv in meta}


def export(folder: Path, config: dict[str, Any], vocab_size: int, **kwargs: Any) -> dict[str, Any]:
    return as_dict(tokenizer_metadata(folder, config, vocab_size=vocab_size, **kwargs))


def write_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")


# ------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def spm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = fx.write_spm_tokenizer(tmp_path_factory.mktemp("spm-llama"))
    write_json(folder / "config.json", model_config("LlamaForCausalLM", "llama", SPM_CONFIG_VOCAB, bos=1, eos=2))
    return folder


@pytest.fixture(scope="session")
def gemma_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("spm-gemma")
    size = fx.write_gemma_tokenizer(folder, model_max_length=256)
    write_json(folder / "config.json", model_config("Gemma2ForCausalLM", "gemma2", size, bos=2, eos=1, pad=0))
    return folder


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = fx.write_smollm2_tokenizer(tmp_path_factory.mktemp("smollm2"))
    if not (folder / "config.json").is_file():
        write_json(folder / "config.json", model_config("LlamaForCausalLM", "llama", 49152))
    return folder


@pytest.fixture(scope="session")
def minilm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fx.write_minilm_tokenizer(tmp_path_factory.mktemp("minilm"))


def config_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def llama_cpp_on_export(folder: Path, arch: str, tmp_path: Path, **kwargs: Any) -> tuple[Tokenize, dict[str, Any]]:
    """Export `folder`'s tokenizer, write it into a vocab-only GGUF and return llama.cpp's tokenizer for it."""
    pytest.importorskip("llama_cpp")
    config = config_of(folder)
    meta = tokenizer_metadata(folder, config, vocab_size=config["vocab_size"], **kwargs)
    path = fx.write_vocab_only_gguf(tmp_path / "vocab.gguf", arch, meta)
    return fx.llama_cpp_tokenizer(path), as_dict(meta)


def assert_same_ids(ours: Tokenize, reference: Tokenize, texts: tuple[str, ...] | list[str]) -> None:
    failures = []
    for add_special in (False, True):
        for text in texts:
            got, want = ours(text, add_special), reference(text, add_special)
            if got != want:
                failures.append(f"add_special={add_special} {text!r}: llama.cpp {got} != HF {want}")
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------- pre-tokenizer detection

def test_canonical_definition_ignores_spelling_that_does_not_change_the_split() -> None:
    nested = sequence(sequence(digits(True)), {"type": "ByteLevel", "add_prefix_space": False,
                                                "trim_offsets": False})  # use_regex left at its default
    flat = sequence(split("\\p{N}"), GPT2_BYTE_LEVEL)
    assert canonical_definition(nested) == canonical_definition(flat)
    assert canonical_definition(split("[\r\n]")) == canonical_definition(split("[\\r\\n]"))


def test_canonical_definition_keeps_differences_that_change_the_split() -> None:
    assert canonical_definition(digits(True)) != canonical_definition(digits(False))
    assert canonical_definition(byte_level(True)) != canonical_definition(byte_level(False))
    isolated = split("\\s+")
    removed = {**isolated, "behavior": "Removed"}
    assert canonical_definition(isolated) != canonical_definition(removed)


@pytest.mark.parametrize("row", KNOWN_PRE_TOKENIZERS, ids=lambda r: r.name)
def test_each_known_definition_is_detected_as_its_name(row: KnownPreTokenizer) -> None:
    tokenizer_json = {"normalizer": NFC if row.normalizer == "nfc" else None, "pre_tokenizer": row.definition,
                      "model": {"type": "BPE", "ignore_merges": row.ignore_merges}}
    config = {"clean_up_tokenization_spaces": row.clean_spaces}
    assert detect_pre_tokenizer(tokenizer_json, config, "tokenizer.json") == row.name


def test_names_sharing_a_definition_are_told_apart_by_the_tokenizer_flags() -> None:
    llama3 = sequence(split(LLAMA3_REGEX), byte_level(False))
    with_ignore = {"pre_tokenizer": llama3, "model": {"type": "BPE", "ignore_merges": True}}
    without = {"pre_tokenizer": llama3, "model": {"type": "BPE"}}
    assert detect_pre_tokenizer(with_ignore, {}, "t") == "llama-bpe"
    assert detect_pre_tokenizer(without, {}, "t") == "dbrx"
    digits_first = {"pre_tokenizer": sequence(digits(True), GPT2_BYTE_LEVEL), "model": {"type": "BPE"}}
    assert detect_pre_tokenizer(digits_first, {"clean_up_tokenization_spaces": False}, "t") == "smollm"
    assert detect_pre_tokenizer(digits_first, {"clean_up_tokenization_spaces": True}, "t") == "starcoder"
    assert detect_pre_tokenizer({**digits_first, "normalizer": NFC}, {"clean_up_tokenization_spaces": False},
                                "t") == "command-r"


def bpe_folder(tmp_path: Path, pre_tokenizer: Any, normalizer: Any = None, byte_fallback: bool = False) -> Path:
    vocab = {"a": 0, "b": 1, "ab": 2, "<|endoftext|>": 3}
    write_json(tmp_path / "tokenizer.json", {
        "added_tokens": [{"id": 3, "content": "<|endoftext|>", "special": True, "normalized": False}],
        "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": None,
        "model": {"type": "BPE", "vocab": vocab, "merges": [["a", "b"]], "byte_fallback": byte_fallback},
    })
    return tmp_path


def test_unknown_pre_tokenizer_is_refused_with_a_summary_and_the_override(tmp_path: Path) -> None:
    strange = sequence(split("(?i:'s|'t)|\\p{L}+|[^\\s\\p{L}]+" + "x" * 80), byte_level(False))
    folder = bpe_folder(tmp_path, strange)
    with pytest.raises(UnsupportedError) as caught:
        export(folder, {}, 4)
    message = str(caught.value)
    assert "\n" not in message
    assert "Split(/(?i:'s|'t)|\\p{L}+" in message and "..." in message  # the regex, shortened
    assert "--pre-tokenizer NAME" in message
    assert "llama-bpe" in message and "qwen2" in message and "smollm" in message


def test_explicit_pre_tokenizer_bypasses_detection(tmp_path: Path) -> None:
    folder = bpe_folder(tmp_path, sequence(split("\\w+"), byte_level(False)))
    assert export(folder, {}, 4, pre_tokenizer="qwen2")[Keys.PRE] == "qwen2"


def test_explicit_pre_tokenizer_must_be_known_to_llama_cpp(tmp_path: Path) -> None:
    folder = bpe_folder(tmp_path, GPT2_BYTE_LEVEL)
    with pytest.raises(UnsupportedError, match="unknown pre-tokenizer name 'qwen-9'.*llama-bpe"):
        export(folder, {}, 4, pre_tokenizer="qwen-9")


def test_a_normalizer_llama_cpp_cannot_apply_is_refused(tmp_path: Path) -> None:
    folder = bpe_folder(tmp_path, GPT2_BYTE_LEVEL, normalizer={"type": "Lowercase"})
    with pytest.raises(UnsupportedError, match="normalizer"):
        export(folder, {}, 4)


def test_byte_fallback_bpe_without_byte_pieces_is_refused(tmp_path: Path) -> None:
    # A byte-fallback BPE tokenizer.json alone is exported as SentencePiece (tests/models/test_transformers5_
    # checkpoints.py); one that has no <0xXX> pieces to fall back to cannot be.
    folder = bpe_folder(tmp_path, {"type": "Metaspace", "replacement": "\u2581"}, byte_fallback=True)
    with pytest.raises(InputError, match=r"tokenizer.json says byte_fallback but has no <0xXX> byte pieces"):
        export(folder, {}, 4)


def test_missing_tokenizer_files_name_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        export(tmp_path, {}, 10)
    message = str(caught.value)
    for name in ("tokenizer.json", "tokenizer.model", "vocab.txt"):
        assert name in message
    assert "Copy the tokenizer files" in message


def test_broken_tokenizer_json_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="tokenizer.json is not valid JSON"):
        export(tmp_path, {}, 10)


def test_tiktoken_file_named_tokenizer_model_is_passed_over(tmp_path: Path) -> None:
    folder = bpe_folder(tmp_path, GPT2_BYTE_LEVEL)
    (folder / "tokenizer.model").write_text("IQ== 0\nIg== 1\nIw== 2\n", encoding="utf-8")
    meta = export(folder, {}, 4)
    assert meta[Keys.MODEL] == "gpt2" and meta[Keys.PRE] == "gpt-2"


# ------------------------------------------------------------------------ vocabulary layout and specials

def test_bpe_vocab_is_padded_to_the_model_size_with_unused_fillers(tmp_path: Path) -> None:
    meta = export(bpe_folder(tmp_path, GPT2_BYTE_LEVEL), {}, 6)
    assert meta[Keys.LIST] == ["a", "b", "ab", "<|endoftext|>", "[PAD4]", "[PAD5]"]
    assert meta[Keys.TOKEN_TYPE] == [gguf.TokenType.NORMAL] * 3 + [gguf.TokenType.CONTROL] + \
        [gguf.TokenType.UNUSED] * 2
    assert meta[Keys.MERGES] == ["a b"]


def test_vocab_size_zero_means_the_tokenizer_size(tmp_path: Path) -> None:
    assert len(export(bpe_folder(tmp_path, GPT2_BYTE_LEVEL), {}, 0)[Keys.LIST]) == 4


def test_tokenizer_larger_than_the_model_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="token id 3.*vocab_size is 3"):
        export(bpe_folder(tmp_path, GPT2_BYTE_LEVEL), {}, 3)


def test_merges_with_spaces_use_the_byte_level_space(tmp_path: Path) -> None:
    folder = bpe_folder(tmp_path, GPT2_BYTE_LEVEL)
    document = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    document["model"]["merges"] = [["a b", "c"], "d e"]
    write_json(folder / "tokenizer.json", document)
    assert export(folder, {}, 4)[Keys.MERGES] == ["a\u0120b c", "d e"]


def template(single: list[str], pair: list[str] | None = None) -> dict[str, Any]:
    def items(names: list[str]) -> list[dict[str, Any]]:
        return [{"Sequence": {"id": n}} if n in ("A", "B") else {"SpecialToken": {"id": n}} for n in names]
    return {"type": "TemplateProcessing", "single": items(single), "pair": items(pair or [])}


def specials_folder(tmp_path: Path, post_processor: Any, config: dict[str, Any] | None) -> Path:
    tokens = ["<s>", "</s>", "<unk>", "<|eot|>", "hi"]
    write_json(tmp_path / "tokenizer.json", {
        "added_tokens": [{"id": i, "content": t, "special": True} for i, t in enumerate(tokens[:4])],
        "normalizer": None, "pre_tokenizer": GPT2_BYTE_LEVEL, "post_processor": post_processor,
        "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)}, "merges": []},
    })
    if config is not None:
        write_json(tmp_path / "tokenizer_config.json", config)
    return tmp_path


def test_template_with_bos_and_eos_sets_both_add_flags(tmp_path: Path) -> None:
    folder = specials_folder(tmp_path, template(["<s>", "A", "</s>"]), {"bos_token": "<s>", "eos_token": "</s>"})
    meta = export(folder, {}, 5)
    assert (meta[Keys.BOS_ID], meta[Keys.EOS_ID]) == (0, 1)
    assert (meta[Keys.ADD_BOS], meta[Keys.ADD_EOS]) == (True, True)


def test_template_closing_token_becomes_eos_and_old_eos_becomes_eot(tmp_path: Path) -> None:
    folder = specials_folder(tmp_path, template(["<s>", "A", "<|eot|>"]), {"bos_token": "<s>", "eos_token": "</s>"})
    meta = export(folder, {}, 5)
    assert meta[Keys.EOS_ID] == 3 and meta[Keys.EOT_ID] == 1 and meta[Keys.ADD_EOS] is True


def test_byte_level_post_processor_adds_nothing_and_overrides_the_config(tmp_path: Path) -> None:
    post = {"type": "ByteLevel", "add_prefix_space": False}
    folder = specials_folder(tmp_path, post, {"bos_token": "<s>", "add_bos_token": True})
    meta = export(folder, {}, 5)
    assert meta[Keys.ADD_BOS] is False and meta[Keys.ADD_EOS] is False


def test_roberta_processing_adds_bos_eos_and_sep(tmp_path: Path) -> None:
    post = {"type": "RobertaProcessing", "sep": ["</s>", 1], "cls": ["<s>", 0]}
    meta = export(specials_folder(tmp_path, post, {"bos_token": "<s>", "eos_token": "</s>"}), {}, 5)
    assert (meta[Keys.ADD_BOS], meta[Keys.ADD_EOS], meta[Keys.ADD_SEP]) == (True, True, True)
    assert meta[Keys.SEP_ID] == 1


def test_config_json_ids_fill_roles_the_tokenizer_leaves_empty(tmp_path: Path) -> None:
    folder = specials_folder(tmp_path, None, {"bos_token": "<s>"})
    meta = export(folder, {"bos_token_id": 4, "eos_token_id": 1, "pad_token_id": 99, "unk_token_id": -1}, 5)
    assert meta[Keys.BOS_ID] == 0  # tokenizer_config.json wins
    assert meta[Keys.EOS_ID] == 1
    assert Keys.PAD_ID not in meta and Keys.UNK_ID not in meta  # out of range and negative are dropped


def test_chat_template_jinja_and_named_templates(tmp_path: Path) -> None:
    folder = specials_folder(tmp_path, None, {})
    (folder / "chat_template.jinja").write_text("{{ default }}", encoding="utf-8")
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "tool-use.jinja").write_text("{{ tools }}", encoding="utf-8")
    meta = export(folder, {}, 5)
    assert meta["tokenizer.chat_template"] == "{{ default }}"
    assert meta["tokenizer.chat_template.tool_use"] == "{{ tools }}"
    assert meta["tokenizer.chat_templates"] == ["tool_use"]


def test_chat_template_in_tokenizer_config_wins_over_the_jinja_file(tmp_path: Path) -> None:
    folder = specials_folder(tmp_path, None, {"chat_template": "{{ from_config }}"})
    (folder / "chat_template.jinja").write_text("{{ from_file }}", encoding="utf-8")
    assert export(folder, {}, 5)["tokenizer.chat_template"] == "{{ from_config }}"


# ----------------------------------------------------------------------------------------- SentencePiece

@pytest.mark.parametrize(("tokenizer_json", "scheme"), [
    ({"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                         {"type": "Replace"}]}}, "always"),  # Llama 2's file
    ({"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "first"}}, "first"),
    ({"pre_tokenizer": {"type": "Metaspace", "add_prefix_space": False}}, "never"),  # older spelling
    ({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Metaspace"}]}}, "always"),
    ({"normalizer": {"type": "Replace"}, "pre_tokenizer": {"type": "Split"}}, "never"),  # Gemma's file
])
def test_prepend_scheme_is_read_from_normaliser_or_metaspace(tokenizer_json: dict[str, Any], scheme: str) -> None:
    assert json_prepend_scheme(tokenizer_json) == scheme


@SLOW
def test_sentencepiece_reader_agrees_with_the_sentencepiece_library(spm_folder: Path) -> None:
    sentencepiece = pytest.importorskip("sentencepiece")
    reference = sentencepiece.SentencePieceProcessor(model_file=str(spm_folder / "tokenizer.model"))
    model = read_sentencepiece(spm_folder / "tokenizer.model")
    assert len(model.pieces) == reference.get_piece_size()
    for i, piece in enumerate(model.pieces):
        assert piece.text == reference.id_to_piece(i)
        assert piece.score == pytest.approx(reference.get_score(i), abs=0)
        expected = (gguf.TokenType.UNKNOWN if reference.is_unknown(i) else gguf.TokenType.CONTROL
                    if reference.is_control(i) else gguf.TokenType.BYTE if reference.is_byte(i)
                    else gguf.TokenType.UNUSED if reference.is_unused(i) else None)
        if expected is not None:
            assert piece.kind == expected
    assert model.model_type_name == "bpe" and model.byte_fallback and model.add_dummy_prefix


@SLOW
def test_sentencepiece_export_layout(spm_folder: Path) -> None:
    meta = export(spm_folder, config_of(spm_folder), SPM_CONFIG_VOCAB)
    tokens, types, scores = meta[Keys.LIST], meta[Keys.TOKEN_TYPE], meta[Keys.SCORES]
    assert (meta[Keys.MODEL], meta[Keys.PRE]) == ("llama", "default")
    assert len(tokens) == len(types) == len(scores) == SPM_CONFIG_VOCAB
    assert tokens[1000:1002] == list(fx.CHAT_TOKENS) and types[1000:1002] == [gguf.TokenType.CONTROL] * 2
    assert tokens[1002] == "[PAD1002]" and types[1002] == gguf.TokenType.UNUSED and scores[1002] == -10000.0
    assert tokens[3:259] == [f"<0x{b:02X}>" for b in range(256)]
    assert set(types[3:259]) == {gguf.TokenType.BYTE}
    assert (meta[Keys.BOS_ID], meta[Keys.EOS_ID], meta[Keys.UNK_ID]) == (1, 2, 0)
    assert meta[Keys.ADD_BOS] is True and meta[Keys.ADD_EOS] is False and meta[Keys.ADD_PREFIX] is True
    assert "<|im_start|>" in meta["tokenizer.chat_template"]


# ------------------------------------------------------------------- llama.cpp against the HF tokenizers

@SLOW
def test_sentencepiece_llama_style_tokenizes_like_hf(spm_folder: Path, tmp_path: Path) -> None:
    ours, _ = llama_cpp_on_export(spm_folder, "llama", tmp_path)
    assert_same_ids(ours, fx.hf_tokenizer(spm_folder), fx.TRICKY_STRINGS)


@SLOW
def test_sentencepiece_tokenizes_like_the_sentencepiece_library(spm_folder: Path, tmp_path: Path) -> None:
    sentencepiece = pytest.importorskip("sentencepiece")
    reference = sentencepiece.SentencePieceProcessor(model_file=str(spm_folder / "tokenizer.model"))
    ours, _ = llama_cpp_on_export(spm_folder, "llama", tmp_path)
    plain = [t for t in fx.TRICKY_STRINGS if not any(c in t for c in fx.CHAT_TOKENS)]
    for text in plain:
        assert ours(text, False) == reference.encode(text), text


@SLOW
def test_sentencepiece_gemma_style_tokenizes_like_hf(gemma_folder: Path, tmp_path: Path) -> None:
    ours, meta = llama_cpp_on_export(gemma_folder, "llama", tmp_path)
    assert meta[Keys.ADD_PREFIX] is False
    turns = [t.replace("<|im_start|>", "<start_of_turn>").replace("<|im_end|>", "<end_of_turn>")
             for t in fx.TRICKY_STRINGS]
    assert_same_ids(ours, fx.hf_tokenizer(gemma_folder), turns)


@SLOW
def test_smollm2_tokenizes_like_hf(smollm2_folder: Path, tmp_path: Path) -> None:
    ours, meta = llama_cpp_on_export(smollm2_folder, "llama", tmp_path)
    assert meta[Keys.PRE] == "smollm"
    assert_same_ids(ours, fx.hf_tokenizer(smollm2_folder), fx.TRICKY_STRINGS)


@SLOW
def test_minilm_wordpiece_tokenizes_like_hf(minilm_folder: Path, tmp_path: Path) -> None:
    ours, meta = llama_cpp_on_export(minilm_folder, "bert", tmp_path)
    assert meta[Keys.MODEL] == "bert" and meta[Keys.TOKEN_TYPE_COUNT] == 2
    texts = [t.replace("<|im_start|>", "[CLS]").replace("<|im_end|>", "[SEP]") for t in fx.TRICKY_STRINGS]
    # llama.cpp strips accents with a one-code-point-to-one table, so it cannot split a Hangul syllable into
    # jamo as NFD does; that text is checked on its own below.
    assert_same_ids(ours, fx.hf_tokenizer(minilm_folder), [t for t in texts if t != fx.HANGUL_TEXT])


@SLOW
def test_llama_cpp_wordpiece_keeps_hangul_syllables_whole(minilm_folder: Path, tmp_path: Path) -> None:
    """A known llama.cpp limitation (documented in docs/tokenizers.md), pinned so a fix upstream is noticed."""
    ours, _ = llama_cpp_on_export(minilm_folder, "bert", tmp_path)
    hf = fx.hf_tokenizer(minilm_folder)
    assert len(ours(fx.HANGUL_TEXT, False)) < len(hf(fx.HANGUL_TEXT, False))


@SLOW
def test_minilm_from_vocab_txt_matches_the_tokenizer_json_export(minilm_folder: Path, tmp_path: Path) -> None:
    for name in ("vocab.txt", "tokenizer_config.json", "config.json"):
        shutil.copy(minilm_folder / name, tmp_path / name)
    config = config_of(minilm_folder)
    from_json = export(minilm_folder, config, config["vocab_size"])
    from_txt = export(tmp_path, config, config["vocab_size"])
    for key in (Keys.LIST, Keys.TOKEN_TYPE, Keys.MODEL, "tokenizer.ggml.normalizer.lowercase", Keys.UNK_ID,
                Keys.SEP_ID, Keys.PAD_ID, Keys.MASK_ID, Keys.TOKEN_TYPE_COUNT):
        assert from_txt[key] == from_json[key], key


# Names llama.cpp runs identically (same regex list and flags), so either is a correct detection.
SAME_BEHAVIOUR = {"refact": "starcoder"}


def vocab_row(name: str) -> KnownPreTokenizer:
    """The table row whose definition the real tokenizer behind ggml-vocab-NAME.gguf uses."""
    wanted = SAME_BEHAVIOUR.get(name, name)
    return next(row for row in KNOWN_PRE_TOKENIZERS if row.name == wanted)


# The vocab GGUFs whose tokenizer.json the table covers; qwen35's vectors include text that is not in NFC form.
VOCAB_CASES = ("gpt-2", "llama-bpe", "qwen2", "qwen35", "starcoder", "refact", "command-r", "mpt", "falcon",
               "deepseek-llm", "deepseek-coder")


@SLOW
@pytest.mark.parametrize("name", VOCAB_CASES)
def test_rebuilt_vocab_matches_llama_cpp_vectors(name: str, tmp_path: Path) -> None:
    row = vocab_row(name)
    folder = fx.write_bpe_tokenizer_from_vocab(
        name, tmp_path / "tok", row.definition, normalizer=NFC if row.normalizer == "nfc" else None,
        ignore_merges=row.ignore_merges, clean_spaces=row.clean_spaces)
    vectors = fx.vocab_vectors(name)
    hf = fx.hf_tokenizer(folder)
    # The rebuilt tokenizer.json reproduces the original Hugging Face tokenizer on llama.cpp's vectors ...
    assert [hf(text, False) for text, _ in vectors] == [ids for _, ids in vectors]
    # ... its pre_tokenizer is detected as the name llama.cpp's converter gave the original ...
    ours, meta = llama_cpp_on_export(folder, "llama", tmp_path)
    recorded = fx.read_gguf_metadata(fx.vocab_dir() / f"ggml-vocab-{name}.gguf")[Keys.PRE]
    assert SAME_BEHAVIOUR.get(recorded, recorded) == meta[Keys.PRE]
    # ... and llama.cpp on our export gives the vectors' ids and agrees with HF on the tricky strings.
    assert [ours(text, False) for text, _ in vectors] == [ids for _, ids in vectors]
    chat = [t for t in fx.TRICKY_STRINGS if "<|im_" not in t]
    assert_same_ids(ours, hf, chat)


TABLE_VOCAB_TOKENS = 8000
# llama.cpp's "falcon" regexes leave out the digit split Falcon's pipeline makes after the byte-level step, so
# they agree only on vocabularies without space+digit tokens, like Falcon's own; every other row uses GPT-2's.
ROW_VOCAB = {"falcon": "falcon"}


@SLOW
@pytest.mark.parametrize("row", KNOWN_PRE_TOKENIZERS, ids=lambda r: r.name)
def test_every_table_row_makes_llama_cpp_split_like_hf(row: KnownPreTokenizer, tmp_path: Path) -> None:
    """Each definition on a real byte-level vocabulary (the first 8000 tokens of GPT-2's): llama.cpp under the
    detected name must give the ids HF gives, on the tricky strings and llama.cpp's vector texts."""
    folder = fx.write_bpe_tokenizer_from_vocab(
        ROW_VOCAB.get(row.name, "gpt-2"), tmp_path / "tok", row.definition, normalizer=NFC if row.normalizer == "nfc" else None,
        ignore_merges=row.ignore_merges, clean_spaces=row.clean_spaces, keep_tokens=TABLE_VOCAB_TOKENS)
    ours, meta = llama_cpp_on_export(folder, "llama", tmp_path)
    assert meta[Keys.PRE] == row.name
    texts = list(fx.TRICKY_STRINGS) + [text for text, _ in fx.vocab_vectors("qwen35")]
    if row.normalizer == "nfc":  # llama.cpp applies no normaliser; compare on text NFC leaves alone
        texts = [t for t in texts if unicodedata.normalize("NFC", t) == t]
    assert_same_ids(ours, fx.hf_tokenizer(folder), [t for t in texts if "<|im_" not in t])


# ------------------------------------------------------------------ against llama.cpp's own converter

# Where we knowingly write something else than convert_hf_to_gguf.py, and why.
CONVERTER_DIFFERENCES: dict[str, dict[str, str]] = {
    # The converter names WordPiece tokenizers by hashing token ids (MiniLM's vocabulary hashes as
    # "jina-v2-en"); llama.cpp ignores the name for WordPiece, and we write the neutral "default".
    "minilm": {Keys.PRE: "default"},
}
# Keys the converter may leave out because llama.cpp's default already says the same thing.
LLAMA_CPP_DEFAULTS = {("llama", Keys.ADD_PREFIX): True}


CONVERTER_CASES = {"smollm2": "smollm2_folder", "minilm": "minilm_folder", "spm": "spm_folder",
                   "gemma": "gemma_folder"}


@pytest.fixture(scope="session")
def converter_outputs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                      ) -> dict[str, dict[str, Any]]:
    """tokenizer.* keys convert_hf_to_gguf.py --vocab-only writes for each case (one converter process)."""
    pytest.importorskip("torch")  # convert_hf_to_gguf.py imports it
    out = tmp_path_factory.mktemp("converter")
    jobs = [(request.getfixturevalue(fixture), out / f"{kind}.gguf") for kind, fixture in CONVERTER_CASES.items()]
    return dict(zip(CONVERTER_CASES, fx.run_llama_cpp_converter(jobs)))


@SLOW
@pytest.mark.parametrize("kind", list(CONVERTER_CASES))
def test_metadata_matches_llama_cpp_converter(kind: str, request: pytest.FixtureRequest,
                                              converter_outputs: dict[str, dict[str, Any]]) -> None:
    folder = request.getfixturevalue(CONVERTER_CASES[kind])
    config = config_of(folder)
    reference = converter_outputs[kind]
    ours = export(folder, config, config["vocab_size"])
    expected_differences = CONVERTER_DIFFERENCES.get(kind, {})
    for key in sorted(set(reference) | set(ours)):
        if key in expected_differences:
            assert ours[key] == expected_differences[key], key
        elif key not in reference:
            assert LLAMA_CPP_DEFAULTS.get((ours[Keys.MODEL], key)) == ours[key], f"{key} only in ours"
        else:
            assert ours.get(key) == reference[key], key


# Vocab GGUFs of SentencePiece tokenizers: (name, number of SentencePiece pieces; the rest are added tokens).
SPM_VOCAB_CASES = {"llama-spm": 32000, "phi-3": 32000}


@SLOW
@pytest.mark.parametrize("name", list(SPM_VOCAB_CASES))
def test_rebuilt_sentencepiece_vocab_matches_llama_cpp_vectors(name: str, tmp_path: Path) -> None:
    sentencepiece = pytest.importorskip("sentencepiece")
    folder = fx.write_spm_tokenizer_from_vocab(name, tmp_path / "tok", SPM_VOCAB_CASES[name])
    vectors = fx.vocab_vectors(name)
    # The rebuilt tokenizer.model is the original: SentencePiece reproduces the vectors with it ...
    reference = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert [reference.encode(text) for text, _ in vectors] == [ids for _, ids in vectors]
    # ... our export of it holds the GGUF's tokens, scores and types for every real id ...
    ours, meta = llama_cpp_on_export(folder, "llama", tmp_path)
    original = fx.vocab_gguf(name)
    real = [i for i, t in enumerate(original[Keys.LIST]) if not fx.is_padding_text(t)]
    for key in (Keys.LIST, Keys.SCORES, Keys.TOKEN_TYPE):
        assert [meta[key][i] for i in real] == [original[key][i] for i in real], key
    # ... and llama.cpp tokenizes the vectors as the Hugging Face tokenizer did.
    assert [ours(text, False) for text, _ in vectors] == [ids for _, ids in vectors]
