"""A GGUF metadata entry as adapters and the tokenizer export produce it, before the writer encodes it."""
from __future__ import annotations

from dataclasses import dataclass

from gguf import GGUFValueType

from ..errors import InputError


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


def check_text(metadata: list[MetaKV], source: str) -> None:
    """Every string bound for the GGUF must encode as UTF-8. JSON escapes can spell lone UTF-16 surrogates
    ("\\ud800") that Python reads but cannot encode; found here, before anything is hashed or written, the
    error names the key (a token, the model name, a chat template) instead of failing mid-run."""
    for kv in metadata:
        if kv.vtype == GGUFValueType.STRING:
            values = [kv.value]
        elif kv.vtype == GGUFValueType.ARRAY and kv.subtype == GGUFValueType.STRING:
            values = list(kv.value)  # type: ignore[call-overload]
        else:
            continue
        try:
            # one call for a whole vocabulary; the loop below only runs to name the bad value
            "".join(values).encode("utf-8")
            continue
        except (UnicodeEncodeError, TypeError):
            pass
        for i, value in enumerate(values):
            try:
                str(value).encode("utf-8")
            except UnicodeEncodeError as exc:
                where = f"{kv.key}[{i}]" if kv.vtype == GGUFValueType.ARRAY else kv.key
                raise InputError(f"{source}: the value of {where} ({value!r}) holds a lone UTF-16 surrogate, "
                                 "which is not text.",
                                 hint="It comes from an escape like \\ud800 in the model's JSON files "
                                      "(config.json, tokenizer.json, tokenizer_config.json); fix or re-download them.") from exc
