"""choose_types: the ggml type of every tensor of a model for a named mix, as llama.cpp's quantizer picks it.

It needs names and shapes only (no tensor data), so the converter can plan a file before reading a weight.
The order of decisions for one tensor, as in llama_model_quantize:
  1. tensors that are never quantized (1-D, norms, position/segment embeddings, ...) stay F32;
  2. an explicit token-embedding / output type wins;
  3. float mixes (F32/F16/BF16) give every remaining tensor their type;
  4. a --tensor-type pattern that matches, or --pure, replaces the mix rules; otherwise the rules of the
     tensor's role pick the type (rules.py);
  5. a type whose block does not divide the row length steps down (ROW_FALLBACK), or to F16.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from ...errors import InputError
from . import rules
from .catalog import Mix, get_mix
from .roles import PER_LAYER_TOKEN_EMBD, Role, layer_index, loader_order, may_quantize, role_of


@dataclass(frozen=True)
class MixTensor:
    """One tensor as it will appear in the GGUF: its name and its shape in ggml order (row length first)."""

    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class MixContext:
    """The model facts the rules depend on (from GGUF metadata: general.architecture, block_count, head counts)."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0
    has_imatrix: bool = False       # an importance matrix with an entry for every quantized matrix will be used


@dataclass(frozen=True)
class MixOptions:
    """llama-quantize's per-run switches.

    tensor_types holds (regex, type) pairs tried in order against each tensor name; the first match wins and
    replaces the mix rules for that tensor (--tensor-type; see parse_tensor_type_option for the CLI spelling).
    """

    output_tensor_type: T | None = None
    token_embedding_type: T | None = None
    pure: bool = False
    tensor_types: tuple[tuple[str, T], ...] = ()


@dataclass
class _Walk:
    """Everything that persists from one tensor to the next while walking a model in loader order."""

    mix: Mix
    ctx: MixContext
    options: MixOptions
    patterns: list[tuple[re.Pattern[str], T]]
    tied_embeddings: bool
    n_value_tensors: int
    seen: Counter[Role] = field(default_factory=Counter)   # tensors of a role that went through the rules


def choose_types(mix: str, tensors: Sequence[MixTensor], ctx: MixContext,
                 options: MixOptions = MixOptions()) -> dict[str, T]:
    """Map every tensor name to the ggml type llama_model_quantize would store it as (F32 for kept tensors).

    The input to llama.cpp is taken to be an all-F32 GGUF, so tensors it leaves alone come out F32.

    >>> ctx = MixContext(arch="llama", n_layer=1, n_head=8, n_head_kv=8)
    >>> types = choose_types("Q4_K_M", [MixTensor("token_embd.weight", (4096, 32000)),
    ...                                 MixTensor("blk.0.attn_v.weight", (4096, 4096)),
    ...                                 MixTensor("blk.0.attn_norm.weight", (4096,))], ctx)
    >>> {name: t.name for name, t in types.items()}
    {'token_embd.weight': 'Q6_K', 'blk.0.attn_v.weight': 'Q6_K', 'blk.0.attn_norm.weight': 'F32'}
    """
    chosen_mix = get_mix(mix)
    _check_unique(tensors)
    roles = {t.name: role_of(t.name) for t in tensors}
    walk = _Walk(
        mix=chosen_mix,
        ctx=ctx,
        options=options,
        patterns=_compile_patterns(options.tensor_types),
        # llama.cpp takes a model without output.weight to share its token embedding with the output
        tied_embeddings=Role.OUTPUT not in roles.values(),
        n_value_tensors=sum(role is Role.ATTN_V for role in roles.values()),
    )
    chosen: dict[str, T] = {}
    for tensor in sorted(tensors, key=lambda t: loader_order(t.name)):
        role = roles[tensor.name]
        if not may_quantize(tensor.name, tensor.shape):
            chosen[tensor.name] = T.F32
            continue
        qtype = _choose_one(walk, tensor, role)
        _check_imatrix(walk, tensor, role, qtype)
        chosen[tensor.name] = qtype
    return {t.name: chosen[t.name] for t in tensors}


def _choose_one(walk: _Walk, tensor: MixTensor, role: Role) -> T:
    options = walk.options
    if options.token_embedding_type is not None and role is Role.TOKEN_EMBD:
        # gemma3n's per-layer table follows the token-embedding type unless a pattern names it explicitly
        if not (tensor.name == PER_LAYER_TOKEN_EMBD and _pattern_type(walk, tensor.name) is not None):
            return _explicit(tensor, options.token_embedding_type, "--token-embedding-type")
    if options.output_tensor_type is not None and role is Role.OUTPUT:
        return _explicit(tensor, options.output_tensor_type, "--output-tensor-type")

    default = walk.mix.default_type
    if not _is_block_type(default):
        return default
    qtype = _pattern_type(walk, tensor.name)
    if qtype is None:
        qtype = default if options.pure else _mix_rules(walk, tensor, role)
    return _fit_row(tensor, qtype)


def _mix_rules(walk: _Walk, tensor: MixTensor, role: Role) -> T:
    """The mix's own choice for one tensor; also advances the per-role counters the layer rules read."""
    ctx, ftype, default = walk.ctx, walk.mix.ftype, walk.mix.default_type
    if role is Role.OUTPUT or (role is Role.TOKEN_EMBD and walk.tied_embeddings):
        if walk.options.output_tensor_type is not None:
            return walk.options.output_tensor_type
        table = rules.OUTPUT_RULES
    else:
        table = rules.ROLE_RULES.get(role, ())

    if role is Role.ATTN_V:
        layer, n_layer = walk.seen[role], walk.n_value_tensors
    elif role in (Role.FFN_DOWN, Role.FFN_GATE, Role.FFN_UP):
        layer, n_layer = _ffn_layer(walk, tensor.name, role), ctx.n_layer
    else:
        layer, n_layer = 0, ctx.n_layer
    situation = rules.Situation(
        arch=ctx.arch,
        layer=layer,
        n_layer=n_layer,
        n_gqa=ctx.n_head // ctx.n_head_kv if ctx.n_head_kv else 0,
        n_expert=ctx.n_expert,
        has_imatrix=ctx.has_imatrix,
        is_70b=is_70b(ctx),
        row_fits_default=tensor.shape[0] % _block_size(default) == 0,
    )
    qtype = rules.first_rule(table, ftype, situation)
    if qtype is None:
        qtype = default
    if role is Role.ATTN_V:
        qtype = rules.apply_bumps(rules.ATTN_V_BUMPS, qtype, situation)
    walk.seen[role] += 1
    return qtype


def _ffn_layer(walk: _Walk, name: str, role: Role) -> int:
    """Which layer an FFN tensor belongs to, as the rules count it.

    Dense models: the number of tensors of this role seen so far (equal to the block index when every block has
    one). MoE models: read from the name, because expert tensors need not come one per block in order.
    """
    if walk.ctx.n_expert <= 1:
        return walk.seen[role]
    layer = layer_index(name)
    if layer is None or not 0 <= layer < walk.ctx.n_layer:
        raise InputError(f"cannot tell which of the {walk.ctx.n_layer} blocks tensor {name!r} belongs to.",
                         hint="Expert FFN tensors must be named blk.N.<name> with N below block_count.")
    return layer


def is_70b(ctx: MixContext) -> bool:
    """Whether llama.cpp classes the model as 70B, the one size its rules single out."""
    if rules.SEVENTY_B_BLOCKS.get(ctx.arch) != ctx.n_layer:
        return False
    if ctx.arch == "llama":
        # 80-block llama with 8 experts is a Mixtral variant, and without GQA it is the 65B LLaMA-1
        return ctx.n_expert != 8 and ctx.n_head != ctx.n_head_kv
    return True


def _fit_row(tensor: MixTensor, qtype: T) -> T:
    """Step down to a type whose block divides the row length, as llama.cpp does for odd shapes."""
    row = tensor.shape[0]
    if row % _block_size(qtype) == 0:
        return qtype
    fallback = rules.ROW_FALLBACK.get(qtype)
    if fallback is None:
        if _block_size(qtype) > rules.SMALL_BLOCK:
            raise InputError(f"tensor {tensor.name!r} has rows of {row} values, not a multiple of the "
                             f"{_block_size(qtype)}-value blocks of {qtype.name}, and that type has no fallback.",
                             hint="Pick a type with 32-value blocks for it (--tensor-type).")
        fallback = qtype
    if row % _block_size(fallback) != 0:
        return rules.LAST_RESORT
    return fallback


def _explicit(tensor: MixTensor, qtype: T, option: str) -> T:
    # llama.cpp applies these two options as given, without the row fallback, and then fails while encoding
    if tensor.shape[0] % _block_size(qtype) != 0:
        raise InputError(f"{option} {qtype.name} cannot hold {tensor.name!r}: its rows have {tensor.shape[0]} "
                         f"values, not a multiple of {_block_size(qtype)}.",
                         hint="Choose a type with smaller blocks (Q8_0, Q4_0 or F16).")
    return qtype


def _check_imatrix(walk: _Walk, tensor: MixTensor, role: Role, qtype: T) -> None:
    if walk.ctx.has_imatrix or role in (Role.TOKEN_EMBD, Role.OUTPUT):
        return
    if qtype in rules.NEEDS_IMATRIX or qtype in rules.NEEDS_IMATRIX_IN_MIX.get(walk.mix.ftype, frozenset()):
        raise InputError(f"mix {walk.mix.name} stores {tensor.name!r} as {qtype.name}, which needs an importance "
                         f"matrix.", hint="Pass an imatrix (calibration data) or choose another mix.")


def _pattern_type(walk: _Walk, name: str) -> T | None:
    for pattern, qtype in walk.patterns:
        if pattern.search(name):
            return qtype
    return None


def _compile_patterns(tensor_types: tuple[tuple[str, T], ...]) -> list[tuple[re.Pattern[str], T]]:
    compiled = []
    for pattern, qtype in tensor_types:
        try:
            compiled.append((re.compile(pattern), qtype))
        except re.error as exc:
            raise InputError(f"tensor type pattern {pattern!r} is not a valid regular expression: {exc}.",
                             hint="Escape literal dots as \\. or use a plain substring.") from exc
    return compiled


def _check_unique(tensors: Sequence[MixTensor]) -> None:
    counts = Counter(t.name for t in tensors)
    repeated = sorted(name for name, n in counts.items() if n > 1)
    if repeated:
        raise InputError(f"tensor names repeat: {', '.join(repeated)}.",
                         hint="Each GGUF tensor needs a unique name; check the architecture's name mapping.")


def _block_size(qtype: T) -> int:
    return GGML_QUANT_SIZES[qtype][0]


def _is_block_type(qtype: T) -> bool:
    """ggml_is_quantized: true for every block type, false for F32/F16/BF16 and the integer types."""
    return _block_size(qtype) > 1


__all__ = ["MixContext", "MixOptions", "MixTensor", "choose_types", "is_70b"]
