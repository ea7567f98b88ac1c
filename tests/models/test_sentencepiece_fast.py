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
    fast, spm._piece_fast = spm._piece_fast, lambda buf: None
    try:
        return spm.parse_sentencepiece(data)
    finally:
        spm._piece_fast = fast


@pytest.mark.parametrize("pieces", [
    [_piece(b"<unk>", 0.0, 2), _piece(b"\xe2\x96\x81the", -3.5), _piece(b"<0x0A>", 0.0, 6)],
    # layouts the fast path hands back to the general walk: an unknown field after the type, a type of 2 bytes
    [_piece(b"a", -1.0, 1, extra=bytes([0x20, 0x01])), _piece(b"b", -2.0), _piece(b"c", -3.0, 0x7F)],
])
def test_fast_and_general_decoders_agree(pieces: list[bytes]) -> None:
    trainer = bytes([0x12, 2, 0x18, 0x02])   # trainer_spec { model_type: BPE }
    data = b"".join(pieces) + trainer
    fast = spm.parse_sentencepiece(data)
    assert fast == _general(data)
    assert fast.model_type_name == "bpe"


@pytest.mark.slow
def test_fast_path_on_a_real_tokenizer_model() -> None:
    data = (model_path("tiny-gemma2") / "tokenizer.model").read_bytes()
    fast = spm.parse_sentencepiece(data)
    assert fast == _general(data)
    assert len(fast.pieces) >= 1000
