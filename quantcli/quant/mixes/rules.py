"""The per-role rules of the k-quant mixes, as data: which tensors a mix gives more (or other) bits, and when.

A rule reads "for these mixes, when this holds, use this type". For one tensor the rules of its role are tried
in order and the first that applies wins; if none applies the tensor keeps the mix's default type. Conditions are
small named predicates over a Situation, so every table row reads like the sentence it encodes.

    >>> s = Situation(arch="llama", layer=0, n_layer=32, n_gqa=4, n_expert=0, has_imatrix=False,
    ...               is_70b=False, row_fits_default=True)
    >>> first_rule(ATTN_V_RULES, LlamaFileType.MOSTLY_Q2_K, s)
    <GGMLQuantizationType.Q4_K: 12>
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType
from gguf import LlamaFileType as F

from .roles import Role


@dataclass(frozen=True)
class Situation:
    """What the rules may look at for one tensor.

    layer / n_layer are the position the rule counts in: for attn_v the running count of value tensors and their
    total, for ffn_down the block index (or its running count) and the model's block count.
    """

    arch: str
    layer: int
    n_layer: int
    n_gqa: int
    n_expert: int
    has_imatrix: bool
    is_70b: bool
    row_fits_default: bool      # the row length is a multiple of the mix's default block size


Condition = Callable[[Situation], bool]


@dataclass(frozen=True)
class Rule:
    mixes: frozenset[LlamaFileType]
    when: Condition
    use: T


def _rule(mixes: set[LlamaFileType], when: Condition, use: T) -> Rule:
    return Rule(frozenset(mixes), when, use)


# --- conditions -----------------------------------------------------------------------------------------------

def always(s: Situation) -> bool:
    return True


def gqa_4_plus(s: Situation) -> bool:
    """At least four query heads share each KV head, so the value matrix is small and cheap to keep precise."""
    return s.n_gqa >= 4


def eight_experts(s: Situation) -> bool:
    return s.n_expert == 8


def falcon(s: Situation) -> bool:
    return s.arch == "falcon"


def first_eighth(s: Situation) -> bool:
    return s.layer < s.n_layer // 8


def first_sixteenth(s: Situation) -> bool:
    return s.layer < s.n_layer // 16


def more_bits(s: Situation) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third layer in between.

    The modulo only matters when layer >= n_layer // 8, where C's and Python's % agree.
    """
    eighth = s.n_layer // 8
    return s.layer < eighth or s.layer >= 7 * s.n_layer // 8 or (s.layer - eighth) % 3 == 2


def before(count: int) -> Condition:
    def condition(s: Situation) -> bool:
        return s.layer < count
    condition.__name__ = f"before_{count}"
    return condition


def with_imatrix(s: Situation) -> bool:
    return s.has_imatrix


def row_misfits_default(s: Situation) -> bool:
    return not s.row_fits_default


def all_of(*conditions: Condition) -> Condition:
    def condition(s: Situation) -> bool:
        return all(c(s) for c in conditions)
    return condition


def any_of(*conditions: Condition) -> Condition:
    def condition(s: Situation) -> bool:
        return any(c(s) for c in conditions)
    return condition


def negate(inner: Condition) -> Condition:
    def condition(s: Situation) -> bool:
        return not inner(s)
    return condition


# --- tables ---------------------------------------------------------------------------------------------------

EVERY_MIX: frozenset[LlamaFileType] = frozenset(F)

# output.weight, and token_embd.weight when the model ties it to the output (no output.weight in the file).
# Without an explicit --output-tensor-type these get Q6_K, except where Q6_K cannot hold the row.
OUTPUT_RULES: tuple[Rule, ...] = (
    _rule(EVERY_MIX, any_of(falcon, row_misfits_default), T.Q8_0),
    _rule(EVERY_MIX - {F.MOSTLY_Q8_0}, always, T.Q6_K),
)

# token_embd.weight of an untied model: the default type, except the ternary mixes, which would ruin the lookup.
TOKEN_EMBD_RULES: tuple[Rule, ...] = (
    _rule({F.MOSTLY_TQ1_0, F.MOSTLY_TQ2_0}, always, T.Q4_K),
)

# attn_v / attn_qkv / attn_kv_b. layer = how many value tensors came before this one.
ATTN_V_RULES: tuple[Rule, ...] = (
    _rule({F.MOSTLY_Q2_K}, gqa_4_plus, T.Q4_K),
    _rule({F.MOSTLY_Q2_K}, always, T.Q3_K),
    _rule({F.MOSTLY_Q2_K_S}, gqa_4_plus, T.Q4_K),
    _rule({F.MOSTLY_Q3_K_M}, before(2), T.Q5_K),
    _rule({F.MOSTLY_Q3_K_M}, always, T.Q4_K),
    _rule({F.MOSTLY_Q3_K_L}, always, T.Q5_K),
    _rule({F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS}, gqa_4_plus, T.Q5_K),
    _rule({F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M}, more_bits, T.Q6_K),
    _rule({F.MOSTLY_Q4_K_S}, before(4), T.Q5_K),
)


@dataclass(frozen=True)
class Bump:
    """A second pass over the attn_v choice: when the condition holds, a type in `from_types` becomes `use`."""

    when: Condition
    from_types: frozenset[T] | None     # None: whatever was chosen
    use: T


def is_70b(s: Situation) -> bool:
    return s.is_70b


# Applied in order after ATTN_V_RULES, for every quantized mix.
ATTN_V_BUMPS: tuple[Bump, ...] = (
    # a 70B model shares each value head among 8 query heads, so the tensor is small: spend the bits
    Bump(is_70b, frozenset({T.Q3_K, T.Q4_K}), T.Q5_K),
    Bump(eight_experts, None, T.Q8_0),
)

ATTN_K_RULES: tuple[Rule, ...] = (
    _rule(EVERY_MIX, eight_experts, T.Q8_0),
)

_not_falcon = negate(falcon)
_dense = negate(eight_experts)

ATTN_OUTPUT_RULES: tuple[Rule, ...] = (
    _rule({F.MOSTLY_Q2_K, F.MOSTLY_Q3_K_S, F.MOSTLY_Q3_K_M, F.MOSTLY_IQ4_NL, F.MOSTLY_Q4_K_S, F.MOSTLY_Q4_K_M,
           F.MOSTLY_IQ4_XS, F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_XXS, F.MOSTLY_IQ3_S, F.MOSTLY_IQ3_M},
          all_of(_not_falcon, eight_experts), T.Q5_K),
    _rule({F.MOSTLY_Q2_K}, all_of(_not_falcon, _dense), T.Q3_K),
    _rule({F.MOSTLY_Q3_K_M}, all_of(_not_falcon, _dense), T.Q4_K),
    _rule({F.MOSTLY_Q3_K_L}, all_of(_not_falcon, _dense), T.Q5_K),
    _rule({F.MOSTLY_Q3_K_L}, falcon, T.Q4_K),
)

# ffn_down. layer = the block index (MoE: read from the name; dense: how many ffn_down came before).
FFN_DOWN_RULES: tuple[Rule, ...] = (
    _rule({F.MOSTLY_Q2_K}, always, T.Q3_K),
    _rule({F.MOSTLY_Q2_K_S}, first_eighth, T.Q4_K),
    _rule({F.MOSTLY_Q3_K_M}, first_sixteenth, T.Q5_K),
    _rule({F.MOSTLY_Q3_K_M}, any_of(_not_falcon, more_bits), T.Q4_K),
    _rule({F.MOSTLY_Q3_K_L}, falcon, T.Q4_K),
    _rule({F.MOSTLY_Q3_K_L}, always, T.Q5_K),
    _rule({F.MOSTLY_Q4_K_M}, all_of(falcon, first_sixteenth), T.Q6_K),
    _rule({F.MOSTLY_Q4_K_M}, all_of(falcon, more_bits), T.Q5_K),
    _rule({F.MOSTLY_Q4_K_M}, all_of(_not_falcon, more_bits), T.Q6_K),
    # with an imatrix the IQ4 encoders cope with the early layers on their own
    _rule({F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS}, all_of(first_eighth, negate(with_imatrix)), T.Q5_K),
    _rule({F.MOSTLY_Q5_K_M}, more_bits, T.Q6_K),
    _rule({F.MOSTLY_Q4_K_S}, all_of(_not_falcon, first_eighth), T.Q5_K),
    # only with an imatrix, so that a plain Q4_0/Q5_0 run gives the same file it always gave
    _rule({F.MOSTLY_Q4_0}, all_of(with_imatrix, first_eighth), T.Q4_1),
    _rule({F.MOSTLY_Q5_0}, all_of(with_imatrix, first_eighth), T.Q5_1),
)

ROLE_RULES: dict[Role, tuple[Rule, ...]] = {
    Role.OUTPUT: OUTPUT_RULES,
    Role.TOKEN_EMBD: TOKEN_EMBD_RULES,
    Role.ATTN_V: ATTN_V_RULES,
    Role.ATTN_K: ATTN_K_RULES,
    Role.ATTN_OUTPUT: ATTN_OUTPUT_RULES,
    Role.FFN_DOWN: FFN_DOWN_RULES,
}

# When a row length is not a multiple of the chosen type's block size, llama.cpp steps down to a type with
# 32-value blocks of similar size; if even that does not fit, the tensor is stored as F16.
ROW_FALLBACK: dict[T, T] = {
    T.IQ1_S: T.IQ4_NL, T.IQ1_M: T.IQ4_NL, T.IQ2_XXS: T.IQ4_NL, T.IQ2_XS: T.IQ4_NL, T.IQ2_S: T.IQ4_NL,
    T.IQ3_XXS: T.IQ4_NL, T.IQ3_S: T.IQ4_NL, T.IQ4_XS: T.IQ4_NL,
    T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.TQ1_0: T.Q4_0, T.TQ2_0: T.Q4_0,
    T.Q4_K: T.Q5_0,
    T.Q5_K: T.Q5_1,
    T.Q6_K: T.Q8_0,
}
LAST_RESORT = T.F16
SMALL_BLOCK = 32            # types with blocks this small have no smaller type to step down to

# Types whose encoders produce garbage without an importance matrix (token_embd and output are exempt).
NEEDS_IMATRIX: frozenset[T] = frozenset({T.IQ3_XXS, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_M, T.IQ1_S})
# Q2_K normally works without one, but not inside the Q2_K_S mix.
NEEDS_IMATRIX_IN_MIX: dict[LlamaFileType, frozenset[T]] = {F.MOSTLY_Q2_K_S: frozenset({T.Q2_K})}

# The only model size llama.cpp's rules single out: arch -> block count that makes a model "70B" (see is_70b in
# choose.py for llama's extra conditions).
SEVENTY_B_BLOCKS: dict[str, int] = {"llama": 80, "qwen2": 80, "deci": 80, "olmo": 80, "jais2": 68}


def first_rule(rules: tuple[Rule, ...], ftype: LlamaFileType, situation: Situation) -> T | None:
    """The type of the first rule that covers this mix and whose condition holds, or None."""
    for rule in rules:
        if ftype in rule.mixes and rule.when(situation):
            return rule.use
    return None


def apply_bumps(bumps: tuple[Bump, ...], chosen: T, situation: Situation) -> T:
    for bump in bumps:
        if bump.when(situation) and (bump.from_types is None or chosen in bump.from_types):
            chosen = bump.use
    return chosen
