"""The fast path of the tokenizer.model reader decodes exactly what the general protobuf walk decodes."""
from __future__ import annotations

import struct

import pytest

from quantcli.models.tokenizer import sentencepiece_model as spm
from tests.fixtures.paths import model_path


def _piece(text: bytes, score: float, kind: int | None = None, extra: bytes = b"") -> bytes:
    body = bytes([0x0A, len(text)]) + text + bytes([0x15]) + struct.pack("<f", score)
    if kind is not None:
        body += bytes([0x18, kind])
    body += extra
    return bytes([0x0A, len(body)]) + body


def _general(data: bytes) -> spm.SentencePieceModel:
    return spm.parse_sentencepiece(data, fast=False)


def _long_piece(text: bytes, score: float) -> bytes:
    # a text of 128 bytes or more has a two-byte length: the general walk's case
    body = bytes([0x0A, 0x80 | (len(text) & 0x7F), len(text) >> 7]) + text + bytes([0x15]) + struct.pack("<f", score)
    return bytes([0x0A, 0x80 | (len(body) & 0x7F), len(body) >> 7]) + body


@pytest.mark.parametrize("pieces", [
    [_piece(b"<unk>", 0.0, 2), _piece(b"\xe2\x96\x81the", -3.5), _piece(b"<0x0A>", 0.0, 6)],
    # layouts the fast path hands back to the general walk: an unknown field after the type, a type of 2 bytes
    [_piece(b"a", -1.0, 1, extra=bytes([0x20, 0x01])), _piece(b"b", -2.0), _piece(b"c", -3.0, 0x7F)],
    # a text holding the score tag's byte (U+0015) itself, which the one-call text decoding splits on
    [_piece(b"x\x15y", -1.0), _piece(b"\x15", -2.0, 4), _piece(b"z", -3.0)],
    # a long text between short ones, an empty text, a NaN score and a type outside gguf's table
    [_piece(b"<s>", 0.0, 3), _long_piece("\u2581".encode() * 60, -7.25), _piece(b"", -1.5),
     _piece(b"q", float("nan"), 9), _piece("\u00e9\u4e2d".encode(), 1e-30)],
])
def test_fast_and_general_decoders_agree(pieces: list[bytes]) -> None:
    trainer = bytes([0x12, 2, 0x18, 0x02])   # trainer_spec { model_type: BPE }
    data = b"".join(pieces) + trainer
    fast = spm.parse_sentencepiece(data)
    general = _general(data)
    assert (fast.texts, fast.kinds, fast.model_type) == (general.texts, general.kinds, general.model_type)
    # scores by their bits: NaN != NaN
    assert struct.pack(f"<{len(fast.scores)}d", *fast.scores) == struct.pack(f"<{len(general.scores)}d", *general.scores)
    assert len(fast.texts) == len(pieces)
    assert fast.model_type_name == "bpe"


def test_text_that_is_not_utf8_is_refused_by_both_decoders() -> None:
    data = _piece(b"ok", 0.0) + _piece(b"\xff\xfe", -1.0)
    for fast in (True, False):
        with pytest.raises(spm.SentencePieceFormatError, match="not UTF-8"):
            spm.parse_sentencepiece(data, fast=fast)


def test_truncated_piece_run_is_refused() -> None:
    data = _piece(b"abc", 0.0)
    with pytest.raises(spm.SentencePieceFormatError, match="runs past the end"):
        spm.parse_sentencepiece(data[:-2])


@pytest.mark.slow
def test_fast_path_on_a_real_tokenizer_model() -> None:
    data = (model_path("tiny-gemma2") / "tokenizer.model").read_bytes()
    fast = spm.parse_sentencepiece(data)
    assert fast == _general(data)
    assert len(fast.pieces) >= 1000
