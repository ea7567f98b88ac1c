"""The tokenizer files of a Hugging Face model folder, read once and checked, before any export logic runs.

A folder can carry up to three descriptions of the same tokenizer: tokenizer.json (the `tokenizers` library's
serialisation), tokenizer.model (a SentencePiece model) and vocab.txt (a WordPiece vocabulary). The side files
(tokenizer_config.json, added_tokens.json, chat_template.jinja, ...) add special tokens, flags and chat templates.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantcli.errors import InputError
from quantcli.io.files import parse_json, read_text

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SENTENCEPIECE_MODEL = "tokenizer.model"
WORDPIECE_VOCAB = "vocab.txt"
ADDED_TOKENS = "added_tokens.json"
CHAT_TEMPLATE_JINJA = "chat_template.jinja"
CHAT_TEMPLATE_JSON = "chat_template.json"
EXTRA_CHAT_TEMPLATES_DIR = "additional_chat_templates"
MISTRAL_TEKKEN = "tekken.json"  # Mistral's own tokenizer format, not read here

# What a user needs to hear when none of the three descriptions is there.
TOKENIZER_SOURCES = (TOKENIZER_JSON, SENTENCEPIECE_MODEL, WORDPIECE_VOCAB)


def read_json(path: Path) -> Any:
    """Parse a JSON file, turning a broken or unreadable file into an InputError that names it.

    Example:
        >>> read_json(Path("model/tokenizer_config.json"))["eos_token"]  # doctest: +SKIP
        '<|im_end|>'
    """
    return parse_json(read_text(path, "tokenizer file"), str(path),
                      hint="Download the file again from the model's repository.")


def _optional_json(path: Path, kind: type) -> Any:
    if not path.is_file():
        return None
    document = read_json(path)
    if not isinstance(document, kind):
        raise InputError(
            f"{path} holds a JSON {type(document).__name__}, expected a {kind.__name__}.",
            hint="Download the file again from the model's repository.",
        )
    return document


@dataclass(frozen=True)
class TokenizerFiles:
    """Everything tokenizer-related found in one model folder; a missing file is None."""

    folder: Path
    tokenizer_json: dict[str, Any] | None
    tokenizer_config: dict[str, Any] | None
    added_tokens_json: dict[str, int] | None
    sentencepiece_model: Path | None
    wordpiece_vocab: Path | None

    @classmethod
    def read(cls, folder: Path) -> "TokenizerFiles":
        """Read the JSON files of `folder`; binary and text vocabularies are only located here.

        Example:
            >>> files = TokenizerFiles.read(Path("models/SmolLM2-135M-Instruct"))  # doctest: +SKIP
            >>> files.tokenizer_json["model"]["type"]  # doctest: +SKIP
            'BPE'
        """
        spm = folder / SENTENCEPIECE_MODEL
        vocab = folder / WORDPIECE_VOCAB
        return cls(
            folder=folder,
            tokenizer_json=_optional_json(folder / TOKENIZER_JSON, dict),
            tokenizer_config=_optional_json(folder / TOKENIZER_CONFIG, dict),
            added_tokens_json=_optional_json(folder / ADDED_TOKENS, dict),
            sentencepiece_model=spm if spm.is_file() else None,
            wordpiece_vocab=vocab if vocab.is_file() else None,
        )

    @property
    def json_model(self) -> dict[str, Any]:
        """The "model" section of tokenizer.json ({} when there is no tokenizer.json)."""
        model = (self.tokenizer_json or {}).get("model")
        return model if isinstance(model, dict) else {}

    @property
    def json_added_tokens(self) -> list[dict[str, Any]]:
        """tokenizer.json's added_tokens entries that carry an integer id and a string content."""
        entries = (self.tokenizer_json or {}).get("added_tokens") or []
        return [e for e in entries
                if isinstance(e, dict) and isinstance(e.get("id"), int) and isinstance(e.get("content"), str)]

    @property
    def config(self) -> dict[str, Any]:
        """tokenizer_config.json, or {} when absent."""
        return self.tokenizer_config or {}

    def missing_error(self) -> InputError:
        looked_for = ", ".join(TOKENIZER_SOURCES)
        if (self.folder / MISTRAL_TEKKEN).is_file():
            return InputError(
                f"{self.folder} holds Mistral's {MISTRAL_TEKKEN} but none of {looked_for}.",
                hint="Use the model's Hugging Face format (a repository with tokenizer.json), e.g. the "
                     "mistral-community/ or -hf variant of the model.",
            )
        return InputError(
            f"no tokenizer in {self.folder}: looked for {looked_for} and found none.",
            hint="Copy the tokenizer files from the model's original repository into this folder "
                 "(or save them there with transformers: AutoTokenizer.from_pretrained(repo).save_pretrained(folder)).",
        )
