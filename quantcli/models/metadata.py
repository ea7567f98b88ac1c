"""A GGUF metadata entry as adapters and the tokenizer export produce it, before the writer encodes it."""
from __future__ import annotations

from dataclasses import dataclass

from gguf import GGUFValueType


@dataclass(frozen=True)
class MetaKV:
    """One key/value of GGUF metadata; `subtype` is the element type of an ARRAY value."""

    key: str
    value: object
    vtype: GGUFValueType
    subtype: GGUFValueType | None = None


def kv_str(key: str, value: str) -> MetaKV:
    return MetaKV(key, value, GGUFValueType.STRING)


def kv_u32(key: str, value: int) -> MetaKV:
    return MetaKV(key, int(value), GGUFValueType.UINT32)


def kv_f32(key: str, value: float) -> MetaKV:
    return MetaKV(key, float(value), GGUFValueType.FLOAT32)


def kv_bool(key: str, value: bool) -> MetaKV:
    return MetaKV(key, bool(value), GGUFValueType.BOOL)


def kv_array(key: str, values: list, subtype: GGUFValueType) -> MetaKV:
    return MetaKV(key, list(values), GGUFValueType.ARRAY, subtype)
