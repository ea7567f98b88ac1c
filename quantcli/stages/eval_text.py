"""A text file turned into token ids, the way llama.cpp's tools tokenize their input.

The text is encoded once, whole, with the source checkpoint's own tokenizer (tokenizer.json, through the
`tokenizers` package), and the special tokens llama.cpp would add are taken from the GGUF file's metadata
(tokenizer.ggml.add_bos_token and friends), because that is what llama.cpp obeys when it reads the file.

(The calibrate stage needs the same text -> tokens step; the two should share this module.)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class SpecialIds:
    """The special tokens llama.cpp adds around a text, read from the GGUF metadata; None: not added."""

    bos: int | None = None       # prepended (add_bos_token)
    sep: int | None = None       # appended by encoders (add_sep_token; bert's [SEP])

    @classmethod
    def from_metadata(cls, values: dict[str, object]) -> "SpecialIds":
        """llama.cpp's defaults when a flag is missing: SentencePiece ("llama") and WordPiece ("bert") vocabularies
        add BOS, byte-level BPE ("gpt2") does not; only WordPiece adds SEP."""
        model = values.get("tokenizer.ggml.model")
        add_bos = values.get("tokenizer.ggml.add_bos_token", model in ("llama", "bert"))
        add_sep = values.get("tokenizer.ggml.add_sep_token", model == "bert")
        bos = values.get("tokenizer.ggml.bos_token_id")
        sep = values.get("tokenizer.ggml.seperator_token_id")   # llama.cpp's spelling of the key
        return cls(int(bos) if add_bos and isinstance(bos, int) else None,
                   int(sep) if add_sep and isinstance(sep, int) else None)


def read_text(path: Path) -> str:
    """The data file's text; a missing, unreadable or non-UTF-8 file is bad input."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"data file {path} does not exist.", hint="Give a plain UTF-8 text file with --data.") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"data file {path} is not UTF-8 text (byte {exc.start}).",
                         hint="Convert it to UTF-8, e.g. with iconv.") from None
    except OSError as exc:
        raise InputError(f"cannot read data file {path}: {exc.strerror}.", hint="Check the path and its permissions.") from None
    if not text.strip():
        raise InputError(f"data file {path} is empty.", hint="Give a text of a few thousand words with --data.")
    return text


def encode(source: Path, text: str) -> np.ndarray:
    """The ids of `text` under the source checkpoint's tokenizer, without any special token, int32."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise InputError("the `tokenizers` package is not installed; it is needed to tokenize --data.",
                         hint="pip install tokenizers") from None
    path = Path(source) / TOKENIZER_FILE
    if not path.is_file():
        raise InputError(f"{source} has no {TOKENIZER_FILE}; the evaluation text cannot be tokenized.",
                         hint="Use a checkpoint folder with a fast tokenizer (tokenizer.json).")
    tokenizer = Tokenizer.from_file(str(path))
    # tokenizer.json may carry a truncation (BERT checkpoints: 128 or 512 tokens) or padding setting meant for
    # single inputs; the whole text must be encoded, as llama.cpp does
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int32)


def text_tokens(source: Path, text: str, special: SpecialIds) -> np.ndarray:
    """The whole text as llama-perplexity tokenizes it: BOS first when the vocabulary adds one."""
    ids = encode(source, text)
    if special.bos is not None:
        ids = np.concatenate([np.array([special.bos], np.int32), ids])
    return ids
