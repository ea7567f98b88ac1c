"""SentencePiece tokenizers (tokenizer.model) as llama.cpp's "llama" tokenizer model.

llama.cpp re-implements SentencePiece's BPE segmentation: it merges adjacent pieces in the order of their scores
and falls back to <0xXX> byte pieces, so the export is the piece list with scores and types, laid out as
llama.cpp's converter does it:
- every id below vocab_size starts as "[PAD{id}]" (unused, score -10000) and the model's pieces fill their ids;
- added tokens (added_tokens.json, tokenizer.json's added_tokens, tokenizer_config.json's added_tokens_decoder)
  then take their ids with score -1000, as control tokens when special (or special-looking), else as
  user-defined tokens with the U+2581 mark turned back into a space;
- pieces the model itself marks user-defined become user-defined tokens the same way, so llama.cpp keeps them
  whole as SentencePiece does (llama.cpp's converter leaves them normal unless an added-token list names them).
"""
from __future__ import annotations

import logging
from typing import Any

from gguf import Keys, TokenType

from quantcli.errors import InputError
from quantcli.io.gguf_metadata import kv_bool
from quantcli.models.tokenizer.files import SENTENCEPIECE_MODEL, TOKENIZER_JSON, TokenizerFiles
from quantcli.models.tokenizer.pretokenizer import check_name
from quantcli.models.tokenizer.sentencepiece_model import MODEL_TYPE_BPE, SentencePieceModel
from quantcli.models.tokenizer.vocab import SPACE_MARK, AddedToken, ExportedVocab, added_tokens, padding_token

log = logging.getLogger(__name__)

GGUF_MODEL = "llama"
DEFAULT_PRE = "default"
PADDING_SCORE = -10000.0
ADDED_TOKEN_SCORE = -1000.0
IDENTITY_NORMALIZER = "identity"
PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER = "always", "first", "never"
PREPEND_SCHEMES = (PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER)
KNOWN_TYPES = frozenset(int(t) for t in TokenType)


def _warn_on_unportable_settings(model: SentencePieceModel, path: str) -> None:
    # llama.cpp's "llama" tokenizer runs BPE merges on raw text; these settings it cannot reproduce.
    if model.model_type != MODEL_TYPE_BPE:
        log.warning("%s is a %s SentencePiece model; llama.cpp tokenizes it with BPE merges by score, which "
                    "can split some words differently", path, model.model_type_name)
    if model.normalizer_name and model.normalizer_name != IDENTITY_NORMALIZER:
        log.warning("%s normalizes text with %r, which llama.cpp does not apply", path, model.normalizer_name)
    if model.remove_extra_whitespaces:
        log.warning("%s collapses repeated spaces, which llama.cpp does not do", path)


def _steps(section: Any, list_key: str) -> list[dict[str, Any]]:
    if not isinstance(section, dict):
        return []
    if section.get("type") == "Sequence":
        return [step for inner in section.get(list_key) or [] for step in _steps(inner, list_key)]
    return [section]


def json_prepend_scheme(tokenizer_json: dict[str, Any]) -> str:
    """How tokenizer.json puts the word mark before text: "always" (every piece of text between added tokens),
    "first" (only at the very start) or "never"; from a Metaspace pre-tokenizer or a Prepend normaliser.

    Example:
        >>> json_prepend_scheme({"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "first"}})
        'first'
    """
    for step in _steps(tokenizer_json.get("pre_tokenizer"), "pretokenizers"):
        if step.get("type") == "Metaspace":
            scheme = step.get("prepend_scheme")
            if scheme in PREPEND_SCHEMES:
                return scheme
            return PREPEND_ALWAYS if step.get("add_prefix_space", True) else PREPEND_NEVER
    for step in _steps(tokenizer_json.get("normalizer"), "normalizers"):
        if step.get("type") == "Prepend" and step.get("prepend") == SPACE_MARK:
            return PREPEND_ALWAYS
    return PREPEND_NEVER


def space_prefix(files: TokenizerFiles, model: SentencePieceModel) -> bool:
    """tokenizer.ggml.add_space_prefix: tokenizer_config.json's add_prefix_space if set (what llama.cpp's
    converter reads), else what tokenizer.json does, else the SentencePiece model's add_dummy_prefix."""
    configured = files.config.get("add_prefix_space")
    if isinstance(configured, bool):
        return configured
    if files.tokenizer_json is not None:
        scheme = json_prepend_scheme(files.tokenizer_json)
        if scheme == PREPEND_FIRST:
            # llama.cpp prefixes the text after every special token too; only such text can differ.
            log.warning("%s adds the word mark only at the start of the input; llama.cpp also adds it after "
                        "special tokens", files.folder / TOKENIZER_JSON)
        return scheme != PREPEND_NEVER
    return model.add_dummy_prefix


def _added_from_files(files: TokenizerFiles) -> dict[int, AddedToken]:
    found: dict[int, AddedToken] = {}
    for text, token_id in (files.added_tokens_json or {}).items():
        if isinstance(token_id, int) and isinstance(text, str):
            # added_tokens.json never marks tokens special: they are user-defined unless a later list says so.
            found[token_id] = AddedToken(token_id, text, special=False)
    found.update(added_tokens(files))
    return found


def spm_vocab(files: TokenizerFiles, model: SentencePieceModel, vocab_size: int,
              pre_tokenizer: str | None) -> ExportedVocab:
    """Tokens, scores, types and the space-prefix flag of a SentencePiece tokenizer padded to `vocab_size`.

    Example:
        >>> m = read_sentencepiece(Path("tokenizer.model"))  # doctest: +SKIP
        >>> v = spm_vocab(TokenizerFiles.read(Path(".")), m, 32000, None)  # doctest: +SKIP
        >>> v.tokens[:3], v.token_types[:3]  # doctest: +SKIP
        (['<unk>', '<s>', '</s>'], [3, 3, 3])
    """
    # the pieces come from tokenizer.model, or from tokenizer.json alone (json_spm.py)
    path = str(files.folder / (SENTENCEPIECE_MODEL if files.sentencepiece_model is not None else TOKENIZER_JSON))
    _warn_on_unportable_settings(model, path)
    pre = check_name(pre_tokenizer) if pre_tokenizer is not None else DEFAULT_PRE
    added = _added_from_files(files)
    n_pieces = len(model.texts)
    if vocab_size <= 0:
        vocab_size = max([n_pieces - 1, *added]) + 1
    if n_pieces > vocab_size:
        log.warning("%s has %d pieces but vocab_size is %d; pieces from id %d on are dropped",
                    path, n_pieces, vocab_size, vocab_size)
    # the columns are copied whole (a 32k vocabulary is on the conversion's serial path); only the few pieces
    # with a type llama.cpp does not know, or user-defined ones, are rewritten one by one
    kept = min(n_pieces, vocab_size)
    tokens = model.texts[:kept] + [padding_token(i) for i in range(kept, vocab_size)]
    scores = model.scores[:kept] + [PADDING_SCORE] * (vocab_size - kept)
    types = model.kinds[:kept] + [int(TokenType.UNUSED)] * (vocab_size - kept)
    user_defined = int(TokenType.USER_DEFINED)
    head = types[:kept]
    for token_id, kind in enumerate(head if user_defined in head or not KNOWN_TYPES.issuperset(head) else ()):
        if kind not in KNOWN_TYPES:
            types[token_id] = int(TokenType.NORMAL)
        elif kind == user_defined:
            tokens[token_id] = tokens[token_id].replace(SPACE_MARK, " ")
    for token_id, token in sorted(added.items()):
        if token_id >= vocab_size:
            log.warning("ignoring added token %r: id %d is not below vocab_size %d", token.content, token_id,
                        vocab_size)
            continue
        tokens[token_id], scores[token_id] = token.gguf_text, ADDED_TOKEN_SCORE
        types[token_id] = int(token.token_type)
    if int(TokenType.BYTE) not in types and model.byte_fallback:
        raise InputError(f"{path} says byte_fallback but has no <0xXX> byte pieces.",
                         hint="Download the tokenizer files again from the model's repository.")
    return ExportedVocab(model=GGUF_MODEL, pre=pre, tokens=tokens, token_types=types, scores=scores,
                         extra=(kv_bool(Keys.Tokenizer.ADD_PREFIX, space_prefix(files, model)),))
