"""Read a SentencePiece model file (tokenizer.model) without the sentencepiece or protobuf packages.

The file is one protobuf message (sentencepiece_model.proto, ModelProto). Only the fields the export needs are
decoded; everything else is skipped by wire type, as protobuf readers do:
  ModelProto       1: pieces (repeated SentencePiece)  2: trainer_spec  3: normalizer_spec
  SentencePiece    1: piece (string)  2: score (float)  3: type (enum, default NORMAL)
  TrainerSpec      3: model_type (UNIGRAM=1, BPE=2, WORD=3, CHAR=4)  35: byte_fallback
  NormalizerSpec   1: name  3: add_dummy_prefix (default true)  4: remove_extra_whitespaces (default true)
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Protobuf wire types.
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
FIXED_SIZES = {FIXED64: 8, FIXED32: 4}
VARINT_MAX_BYTES = 10

# Field numbers (see the module docstring).
MODEL_PIECES, MODEL_TRAINER_SPEC, MODEL_NORMALIZER_SPEC = 1, 2, 3
PIECE_TEXT, PIECE_SCORE, PIECE_TYPE = 1, 2, 3
TRAINER_MODEL_TYPE, TRAINER_BYTE_FALLBACK = 3, 35
NORMALIZER_NAME, NORMALIZER_ADD_DUMMY_PREFIX, NORMALIZER_REMOVE_EXTRA_WHITESPACES = 1, 3, 4

PIECE_TYPE_NORMAL = 1
MODEL_TYPE_UNIGRAM, MODEL_TYPE_BPE = 1, 2
MODEL_TYPE_NAMES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


class SentencePieceFormatError(ValueError):
    """The bytes are not a SentencePiece model (for instance a tiktoken file named tokenizer.model)."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift_index in range(VARINT_MAX_BYTES):
        if pos >= len(buf):
            raise SentencePieceFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * shift_index)
        if not byte & 0x80:
            return value, pos
    raise SentencePieceFormatError("varint longer than 10 bytes")


def fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for each field of one message; fixed-size values come as raw bytes.

    Example:
        >>> list(fields(bytes([0x08, 0x96, 0x01])))
        [(1, 0, 150)]
    """
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise SentencePieceFormatError("field number 0")
        if wire == VARINT:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == LENGTH_DELIMITED:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise SentencePieceFormatError("length-delimited field runs past the end")
            yield number, wire, buf[pos:pos + size]
            pos += size
        elif wire in FIXED_SIZES:
            size = FIXED_SIZES[wire]
            if pos + size > len(buf):
                raise SentencePieceFormatError("fixed-size field runs past the end")
            yield number, wire, buf[pos:pos + size]
            pos += size
        else:
            raise SentencePieceFormatError(f"unsupported wire type {wire}")


@dataclass(frozen=True)
class Piece:
    text: str
    score: float
    kind: int  # SentencePiece's piece type, numbered as gguf.TokenType


@dataclass(frozen=True)
class SentencePieceModel:
    """The parts of a tokenizer.model that decide how llama.cpp must be told about it."""

    pieces: list[Piece]
    model_type: int = MODEL_TYPE_UNIGRAM
    byte_fallback: bool = False
    normalizer_name: str = ""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True

    @property
    def model_type_name(self) -> str:
        return MODEL_TYPE_NAMES.get(self.model_type, str(self.model_type))


_SCORE_TAG = (PIECE_SCORE << 3) | FIXED32
_TYPE_TAG = (PIECE_TYPE << 3) | VARINT


def _piece_fast(buf: bytes) -> Piece | None:
    """The layout every SentencePiece trainer writes (text < 128 bytes, then score, then an optional small type),
    decoded without the generic field walk: a 32k vocabulary took 0.5 s the general way, all of it on the
    conversion's serial path. None for anything else, which the general decoder then reads."""
    n = len(buf)
    if n < 2 or buf[0] != (PIECE_TEXT << 3) | LENGTH_DELIMITED or buf[1] >= 0x80:
        return None
    pos = 2 + buf[1]
    if pos + 5 > n or buf[pos] != _SCORE_TAG:
        return None
    try:
        text = buf[2:pos].decode("utf-8")
    except UnicodeDecodeError:
        return None
    (score,) = struct.unpack_from("<f", buf, pos + 1)
    pos += 5
    if pos == n:
        return Piece(text, score, PIECE_TYPE_NORMAL)
    if pos + 2 == n and buf[pos] == _TYPE_TAG and buf[pos + 1] < 0x80:
        return Piece(text, score, buf[pos + 1])
    return None


def _piece(buf: bytes) -> Piece:
    fast = _piece_fast(buf)
    if fast is not None:
        return fast
    text, score, kind = "", 0.0, PIECE_TYPE_NORMAL
    for number, wire, value in fields(buf):
        if number == PIECE_TEXT and wire == LENGTH_DELIMITED:
            try:
                text = bytes(value).decode("utf-8")  # type: ignore[arg-type]
            except UnicodeDecodeError as exc:
                raise SentencePieceFormatError("piece text is not UTF-8") from exc
        elif number == PIECE_SCORE and wire == FIXED32:
            (score,) = struct.unpack("<f", value)
        elif number == PIECE_TYPE and wire == VARINT:
            kind = int(value)  # type: ignore[arg-type]
    return Piece(text, score, kind)


def parse_sentencepiece(data: bytes) -> SentencePieceModel:
    """Decode a serialized ModelProto.

    Example:
        >>> m = parse_sentencepiece(Path("tokenizer.model").read_bytes())  # doctest: +SKIP
        >>> m.pieces[1].text, m.model_type_name  # doctest: +SKIP
        ('<s>', 'bpe')
    """
    pieces: list[Piece] = []
    settings: dict[str, object] = {}
    # Writers put the repeated pieces first (field order); walk that run directly, the rest generically.
    pos, n, piece_tag = 0, len(data), (MODEL_PIECES << 3) | LENGTH_DELIMITED
    while pos + 1 < n and data[pos] == piece_tag:
        size, start = _varint(data, pos + 1)
        if start + size > n:
            raise SentencePieceFormatError("length-delimited field runs past the end")
        pieces.append(_piece(data[start:start + size]))
        pos = start + size
    for number, wire, value in fields(data[pos:]):
        if wire != LENGTH_DELIMITED:
            continue
        assert isinstance(value, bytes)
        if number == MODEL_PIECES:
            pieces.append(_piece(value))
        elif number == MODEL_TRAINER_SPEC:
            for inner, inner_wire, inner_value in fields(value):
                if inner == TRAINER_MODEL_TYPE and inner_wire == VARINT:
                    settings["model_type"] = inner_value
                elif inner == TRAINER_BYTE_FALLBACK and inner_wire == VARINT:
                    settings["byte_fallback"] = bool(inner_value)
        elif number == MODEL_NORMALIZER_SPEC:
            for inner, inner_wire, inner_value in fields(value):
                if inner == NORMALIZER_NAME and inner_wire == LENGTH_DELIMITED:
                    settings["normalizer_name"] = bytes(inner_value).decode("utf-8", "replace")  # type: ignore[arg-type]
                elif inner == NORMALIZER_ADD_DUMMY_PREFIX and inner_wire == VARINT:
                    settings["add_dummy_prefix"] = bool(inner_value)
                elif inner == NORMALIZER_REMOVE_EXTRA_WHITESPACES and inner_wire == VARINT:
                    settings["remove_extra_whitespaces"] = bool(inner_value)
    if not pieces:
        raise SentencePieceFormatError("no pieces")
    return SentencePieceModel(pieces=pieces, **settings)  # type: ignore[arg-type]


def read_sentencepiece(path: Path) -> SentencePieceModel:
    """Read and decode tokenizer.model; raises SentencePieceFormatError if it is something else."""
    return parse_sentencepiece(path.read_bytes())
