"""Tokenizer export: a Hugging Face model folder's tokenizer as the GGUF metadata llama.cpp reads.

Three kinds are exported, chosen from the files present:
- WordPiece (BERT): tokenizer.json with a WordPiece model, or vocab.txt  -> tokenizer.ggml.model "bert"
- SentencePiece: tokenizer.model                                       -> "llama"
- byte-level BPE: tokenizer.json with a BPE model                      -> "gpt2"
- byte-fallback BPE in tokenizer.json alone (transformers 5 saves Llama 2 / Mistral / Gemma so)
                                                                       -> "llama", scores rebuilt from merges
A folder with both tokenizer.model and a BPE tokenizer.json is SentencePiece (llama.cpp's converter tries it
first); a tokenizer.model that is not a SentencePiece model (tiktoken files use the same name) is passed over.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gguf import GGUFValueType, Keys

from quantcli.errors import InputError, UnsupportedError
from quantcli.io.gguf_metadata import MetaKV, kv_array, kv_str
from quantcli.models.tokenizer.bpe import bpe_vocab
from quantcli.models.tokenizer.files import SENTENCEPIECE_MODEL, TOKENIZER_JSON, TokenizerFiles
from quantcli.models.tokenizer.json_spm import is_sentencepiece_bpe, sentencepiece_from_json
from quantcli.models.tokenizer.sentencepiece_model import (
    SentencePieceFormatError,
    SentencePieceModel,
    read_sentencepiece,
)
from quantcli.models.tokenizer.special import describe, read_special_tokens
from quantcli.models.tokenizer.spm import spm_vocab
from quantcli.models.tokenizer.vocab import ExportedVocab
from quantcli.models.tokenizer.wordpiece import wordpiece_vocab

log = logging.getLogger(__name__)

JSON_WORDPIECE, JSON_BPE = "WordPiece", "BPE"


def _sentencepiece_or_none(files: TokenizerFiles) -> SentencePieceModel | None:
    if files.sentencepiece_model is None:
        return None
    try:
        return read_sentencepiece(files.sentencepiece_model)
    except (SentencePieceFormatError, OSError) as exc:
        if files.tokenizer_json is None:
            raise InputError(
                f"{files.sentencepiece_model} is not a SentencePiece model ({exc}) and there is no {TOKENIZER_JSON}.",
                hint=f"Add the model's {TOKENIZER_JSON}, or a SentencePiece {SENTENCEPIECE_MODEL}.",
            ) from exc
        log.info("%s is not a SentencePiece model (%s); using %s", files.sentencepiece_model, exc, TOKENIZER_JSON)
        return None


def export_vocab(files: TokenizerFiles, config: dict[str, Any], vocab_size: int,
                 pre_tokenizer: str | None = None) -> ExportedVocab:
    """Pick the tokenizer kind from the files and export its vocabulary (no special tokens yet).

    Example:
        >>> export_vocab(TokenizerFiles.read(Path("models/SmolLM2-135M-Instruct")), {}, 49152).pre  # doctest: +SKIP
        'smollm'
    """
    json_type = files.json_model.get("type") if files.tokenizer_json is not None else None
    if json_type == JSON_WORDPIECE:
        return wordpiece_vocab(files, config, vocab_size, pre_tokenizer)
    sentencepiece = _sentencepiece_or_none(files)
    if sentencepiece is None and is_sentencepiece_bpe(files):
        # transformers 5 saves Llama 2 / Mistral / Gemma tokenizers as tokenizer.json only
        sentencepiece = sentencepiece_from_json(files)
    if sentencepiece is not None:
        return spm_vocab(files, sentencepiece, vocab_size, pre_tokenizer)
    if json_type == JSON_BPE:
        return bpe_vocab(files, vocab_size, pre_tokenizer)
    if json_type is not None:
        raise UnsupportedError(
            f"{files.folder / TOKENIZER_JSON} holds a {json_type} model; quantcli exports BPE, WordPiece and "
            f"SentencePiece ({SENTENCEPIECE_MODEL}) tokenizers."
        )
    if files.wordpiece_vocab is not None:
        return wordpiece_vocab(files, config, vocab_size, pre_tokenizer)
    raise files.missing_error()


def vocab_metadata(vocab: ExportedVocab) -> list[MetaKV]:
    """The vocabulary keys in the order llama.cpp's converter writes them."""
    out = [kv_str(Keys.Tokenizer.MODEL, vocab.model), kv_str(Keys.Tokenizer.PRE, vocab.pre),
           kv_array(Keys.Tokenizer.LIST, vocab.tokens, GGUFValueType.STRING)]
    if vocab.scores is not None:
        out.append(kv_array(Keys.Tokenizer.SCORES, [float(s) for s in vocab.scores], GGUFValueType.FLOAT32))
    out.append(kv_array(Keys.Tokenizer.TOKEN_TYPE, [int(t) for t in vocab.token_types], GGUFValueType.INT32))
    if vocab.merges:
        out.append(kv_array(Keys.Tokenizer.MERGES, vocab.merges, GGUFValueType.STRING))
    return out


def tokenizer_metadata(model_dir: Path, config: dict, *, vocab_size: int,
                       pre_tokenizer: str | None = None) -> list[MetaKV]:
    """All tokenizer.* GGUF metadata for the tokenizer in `model_dir`.

    `config` is the model's config.json (special-token ids, type_vocab_size); `vocab_size` the size of the
    model's embedding, to which the vocabulary is padded; `pre_tokenizer` overrides the BPE pre-tokenizer name
    that is otherwise read from tokenizer.json's pre_tokenizer definition.

    Raises InputError when no tokenizer file is there, UnsupportedError for a tokenizer llama.cpp cannot run
    or a pre-tokenizer that is not recognised.

    Example:
        >>> meta = tokenizer_metadata(Path("models/SmolLM2-135M-Instruct"), config, vocab_size=49152)  # doctest: +SKIP
        >>> {kv.key: kv.value for kv in meta}["tokenizer.ggml.pre"]  # doctest: +SKIP
        'smollm'
    """
    files = TokenizerFiles.read(Path(model_dir))
    vocab = export_vocab(files, config, vocab_size, pre_tokenizer)
    special = read_special_tokens(files, config, vocab.tokens)
    log.info("tokenizer: %s/%s, %d tokens, %s", vocab.model, vocab.pre, len(vocab.tokens),
             describe(special, vocab.tokens))
    return vocab_metadata(vocab) + list(vocab.extra) + special.metadata()


__all__ = ["tokenizer_metadata", "export_vocab", "vocab_metadata", "MetaKV"]
