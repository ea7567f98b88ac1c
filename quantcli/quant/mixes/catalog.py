"""The named quantization mixes (llama-quantize's type argument): file type and default block type of each.

A mix is what a user asks for ("Q4_K_M"); its llama_ftype goes into general.file_type and its default type is
what most 2-D weights become before the per-role rules in rules.py adjust them.

    >>> MIXES["Q4_K_M"].default_type.name
    'Q4_K'
    >>> get_mix("q4_k").name          # llama-quantize accepts any case and the bare k-quant aliases
    'Q4_K_M'
"""
from __future__ import annotations

from dataclasses import dataclass

from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType as F

from ...errors import InputError


@dataclass(frozen=True)
class Mix:
    """One named mix: the canonical name, its llama_ftype and the block type most weights get."""

    name: str
    ftype: F
    default_type: T


def _mix(name: str, ftype: F, default_type: T) -> tuple[str, Mix]:
    return name, Mix(name, ftype, default_type)


_CANONICAL: dict[str, Mix] = dict([
    # float "mixes": every quantizable weight becomes this type; 1-D tensors and norms stay F32
    _mix("F32", F.ALL_F32, T.F32),
    _mix("F16", F.MOSTLY_F16, T.F16),
    _mix("BF16", F.MOSTLY_BF16, T.BF16),
    # legacy 32-value blocks
    _mix("Q8_0", F.MOSTLY_Q8_0, T.Q8_0),
    _mix("Q4_0", F.MOSTLY_Q4_0, T.Q4_0),
    _mix("Q4_1", F.MOSTLY_Q4_1, T.Q4_1),
    _mix("Q5_0", F.MOSTLY_Q5_0, T.Q5_0),
    _mix("Q5_1", F.MOSTLY_Q5_1, T.Q5_1),
    # k-quants (256-value super-blocks); the _S/_M/_L variants differ only in the per-role rules
    _mix("Q2_K", F.MOSTLY_Q2_K, T.Q2_K),
    _mix("Q2_K_S", F.MOSTLY_Q2_K_S, T.Q2_K),
    _mix("Q3_K_S", F.MOSTLY_Q3_K_S, T.Q3_K),
    _mix("Q3_K_M", F.MOSTLY_Q3_K_M, T.Q3_K),
    _mix("Q3_K_L", F.MOSTLY_Q3_K_L, T.Q3_K),
    _mix("Q4_K_S", F.MOSTLY_Q4_K_S, T.Q4_K),
    _mix("Q4_K_M", F.MOSTLY_Q4_K_M, T.Q4_K),
    _mix("Q5_K_S", F.MOSTLY_Q5_K_S, T.Q5_K),
    _mix("Q5_K_M", F.MOSTLY_Q5_K_M, T.Q5_K),
    _mix("Q6_K", F.MOSTLY_Q6_K, T.Q6_K),
    # non-linear 4-bit
    _mix("IQ4_NL", F.MOSTLY_IQ4_NL, T.IQ4_NL),
    _mix("IQ4_XS", F.MOSTLY_IQ4_XS, T.IQ4_XS),
    # ternary
    _mix("TQ1_0", F.MOSTLY_TQ1_0, T.TQ1_0),
    _mix("TQ2_0", F.MOSTLY_TQ2_0, T.TQ2_0),
])

# llama-quantize also takes a bare k-quant name and means its _M variant.
_ALIASES: dict[str, str] = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

MIXES: dict[str, Mix] = {**_CANONICAL, **{alias: _CANONICAL[target] for alias, target in _ALIASES.items()}}


def get_mix(name: str) -> Mix:
    """The mix llama-quantize would pick for this name (case does not matter).

    >>> get_mix("q8_0").ftype.name
    'MOSTLY_Q8_0'
    """
    mix = MIXES.get(name.upper())
    if mix is None:
        raise InputError(
            f"unknown quantization mix {name!r}.",
            hint=f"Choose one of: {', '.join(MIXES)}.",
        )
    return mix
