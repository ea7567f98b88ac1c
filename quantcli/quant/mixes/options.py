"""Parsing of llama-quantize's type options as a user types them (--tensor-type, --output-tensor-type, ...).

    >>> parse_tensor_type_option("Attn_V=q8_0")
    ('attn_v', <GGMLQuantizationType.Q8_0: 8>)
"""
from __future__ import annotations

from gguf import GGMLQuantizationType as T

from ...errors import InputError

_SEPARATOR = "="


def parse_ggml_type(text: str, option: str = "tensor type") -> T:
    """A tensor type quantcli can write, by name in any case ("q6_k", "Q6_K", "bf16").

    A name gguf-py knows but quantcli has no encoder for (Q8_1, MXFP4, I8) is refused here, when the option is
    read, not when the first tensor of that type is written.

    >>> parse_ggml_type("iq4_nl").name
    'IQ4_NL'
    """
    from ..base import writable_types

    writable = writable_types()
    name = text.strip().upper()
    known = T.__members__.get(name)
    if known is None or known not in writable:
        what = "is not a type quantcli can write" if known is not None else "is not a known type"
        raise InputError(f"{option}: {text.strip()!r} {what}.",
                         hint=f"Use one of: {', '.join(t.name for t in writable)}.")
    return known


def parse_tensor_type_option(text: str) -> tuple[str, T]:
    """One --tensor-type value "PATTERN=TYPE" as llama-quantize reads it.

    Like llama-quantize, the pattern is lower-cased (GGUF tensor names are lower case) and split at the first "=";
    it is a regular expression searched anywhere in the tensor name.
    """
    pattern, separator, type_name = text.partition(_SEPARATOR)
    if not separator:
        raise InputError(f"--tensor-type {text!r} has no '='.", hint="Write it as PATTERN=TYPE, e.g. attn_v=q8_0.")
    if not pattern:
        raise InputError(f"--tensor-type {text!r} names no tensor.", hint="Write it as PATTERN=TYPE, e.g. attn_v=q8_0.")
    if not type_name:
        raise InputError(f"--tensor-type {text!r} names no type.", hint="Write it as PATTERN=TYPE, e.g. attn_v=q8_0.")
    return pattern.lower(), parse_ggml_type(type_name, f"--tensor-type {text}")
