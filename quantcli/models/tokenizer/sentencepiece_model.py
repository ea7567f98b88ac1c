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

import numpy as np

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
    """The parts of a tokenizer.model that decide how llama.cpp must be told about it.

    The pieces are kept as three columns in id order (texts, scores, types) rather than one object per piece:
    a 32k vocabulary is read, exported and written without building 32k small objects on the serial path.
    """

    texts: list[str]
    scores: list[float]
    kinds: list[int]  # SentencePiece's piece types, numbered as gguf.TokenType
    model_type: int = MODEL_TYPE_UNIGRAM
    byte_fallback: bool = False
    normalizer_name: str = ""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True

    @property
    def model_type_name(self) -> str:
        return MODEL_TYPE_NAMES.get(self.model_type, str(self.model_type))

    @property
    def pieces(self) -> list[Piece]:
        """The pieces one by one (for tests and tools; the export reads the columns)."""
        return [Piece(t, s, k) for t, s, k in zip(self.texts, self.scores, self.kinds)]


_TEXT_TAG = (PIECE_TEXT << 3) | LENGTH_DELIMITED
_SCORE_TAG = (PIECE_SCORE << 3) | FIXED32
_TYPE_TAG = (PIECE_TYPE << 3) | VARINT
_PIECE_TAG = (MODEL_PIECES << 3) | LENGTH_DELIMITED
_SHORT = 0x80          # a one-byte varint is below this


def _piece(buf: bytes) -> Piece:
    """One SentencePiece message by the general field walk (any field order, unknown fields skipped)."""
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


def _piece_run(data: bytes) -> tuple[list[int], list[int], int]:
    """Where the leading run of `pieces` fields lies: each message's start and end, and where the run stops.

    Writers put the repeated pieces first (field order), so this one loop over the outer tags is the only
    per-piece Python work of the reader; the messages themselves are decoded by `_decode_run`."""
    starts: list[int] = []
    ends: list[int] = []
    pos, n = 0, len(data)
    while pos + 1 < n and data[pos] == _PIECE_TAG:
        size = data[pos + 1]
        if size < _SHORT:
            start = pos + 2
        else:
            size, start = _varint(data, pos + 1)
        pos = start + size
        if pos > n:
            raise SentencePieceFormatError("length-delimited field runs past the end")
        starts.append(start)
        ends.append(pos)
    return starts, ends, pos


def _decode_run(data: bytes, starts: list[int], ends: list[int]) -> tuple[list[str], list[float], list[int]]:
    """Decode the piece messages data[starts[i]:ends[i]] into columns, with array operations over all of them.

    Every SentencePiece trainer writes a piece as text (< 128 bytes), score, then an optional one-byte type:
        0A len text... 15 f32 [18 type]
    The checks below find the pieces in exactly that layout; all others (if any) go through the general walk.
    The texts of the fast pieces are decoded in one call: each text is followed in the file by the score's tag
    byte 0x15, so the bytes from every text's start up to and including that tag, joined, split on U+0015 into
    the texts, provided no text contains that control character itself (checked by counting it)."""
    count = len(starts)
    buf = np.frombuffer(data, dtype=np.uint8)
    last = len(buf) - 1
    start = np.asarray(starts, dtype=np.int64)
    end = np.asarray(ends, dtype=np.int64)
    size = end - start

    def at(index: np.ndarray) -> np.ndarray:
        return buf[np.minimum(index, last)].astype(np.int64)   # clipped: out-of-message reads are masked below

    text_len = at(start + 1)
    score_at = start + 2 + text_len                              # the score's tag byte
    tail = end - (score_at + 5)                                  # bytes after the score: 0, or 2 for a type
    fast = ((size >= 7) & (at(start) == _TEXT_TAG) & (text_len < _SHORT) & (tail >= 0)
            & (at(score_at) == _SCORE_TAG))
    typed = fast & (tail == 2) & (at(score_at + 5) == _TYPE_TAG) & (at(score_at + 6) < _SHORT)
    fast &= (tail == 0) | typed
    kinds_arr = np.where(typed, at(score_at + 6), PIECE_TYPE_NORMAL)
    score_bytes = buf[np.minimum(score_at[:, None] + np.arange(1, 5), last)]
    scores_arr = np.ascontiguousarray(score_bytes).view("<f4").reshape(count)

    texts: list[str] = [""] * count
    picked = np.flatnonzero(fast)
    if len(picked):
        spans = text_len[picked] + 1                            # each text and the 0x15 after it
        offsets = np.cumsum(spans) - spans
        gather = np.repeat(start[picked] + 2 - offsets, spans) + np.arange(int(spans.sum()))
        joined = buf[gather].tobytes()
        if joined.count(_SCORE_TAG) == len(picked):
            try:
                decoded = joined.decode("utf-8").split(chr(_SCORE_TAG))
            except UnicodeDecodeError:
                fast[:] = False                                  # the general walk says which piece is bad
            else:
                if len(picked) == count:
                    texts = decoded[:-1]
                else:
                    for index, text in zip(picked.tolist(), decoded):
                        texts[index] = text
        else:
            fast[:] = False
    scores = scores_arr.tolist()
    kinds = kinds_arr.tolist()
    for index in np.flatnonzero(~fast).tolist():
        piece = _piece(data[starts[index]:ends[index]])
        texts[index], scores[index], kinds[index] = piece.text, piece.score, piece.kind
    return texts, scores, kinds


def parse_sentencepiece(data: bytes, *, fast: bool = True) -> SentencePieceModel:
    """Decode a serialized ModelProto (`fast=False` decodes every piece by the general walk, for tests).

    Example:
        >>> m = parse_sentencepiece(Path("tokenizer.model").read_bytes())  # doctest: +SKIP
        >>> m.texts[1], m.model_type_name  # doctest: +SKIP
        ('<s>', 'bpe')
    """
    settings: dict[str, object] = {}
    starts, ends, pos = _piece_run(data)
    if fast and starts:
        texts, scores, kinds = _decode_run(data, starts, ends)
    else:
        run = [_piece(data[a:b]) for a, b in zip(starts, ends)]
        texts, scores, kinds = [p.text for p in run], [p.score for p in run], [p.kind for p in run]
    for number, wire, value in fields(data[pos:]):
        if wire != LENGTH_DELIMITED:
            continue
        assert isinstance(value, bytes)
        if number == MODEL_PIECES:
            piece = _piece(value)
            texts.append(piece.text)
            scores.append(piece.score)
            kinds.append(piece.kind)
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
    if not texts:
        raise SentencePieceFormatError("no pieces")
    return SentencePieceModel(texts=texts, scores=scores, kinds=kinds, **settings)  # type: ignore[arg-type]


def read_sentencepiece(path: Path) -> SentencePieceModel:
    """Read and decode tokenizer.model; raises SentencePieceFormatError if it is something else."""
    return parse_sentencepiece(path.read_bytes())
