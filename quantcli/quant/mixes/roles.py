"""What a GGUF tensor is, as far as the mix rules care: its role, and whether it may be quantized at all.

Both answers come from the tensor's GGUF name (and, for "at all", its shape), matched the way llama.cpp's
quantizer matches them: plain substring and exact-name tests, in a fixed order.

    >>> role_of("blk.3.attn_v.weight")
    <Role.ATTN_V: 'attn_v'>
    >>> may_quantize("blk.0.attn_norm.weight", (256,))
    False
"""
from __future__ import annotations

import enum
import re
from collections.abc import Sequence


class Role(enum.Enum):
    """The coarse tensor roles the mix rules distinguish. Everything else is OTHER and keeps the default type."""

    TOKEN_EMBD = "token_embd"
    OUTPUT = "output"
    # attn_v, the fused attn_qkv and MLA's attn_kv_b: the rules treat all three as the value projection
    ATTN_V = "attn_v"
    ATTN_K = "attn_k"
    ATTN_Q = "attn_q"
    ATTN_OUTPUT = "attn_output"
    FFN_UP = "ffn_up"
    FFN_GATE = "ffn_gate"
    FFN_DOWN = "ffn_down"
    OTHER = "other"


# Exact names first, then substrings; the first hit decides. The order matters where one key could shadow
# another in a longer name, so it follows llama.cpp's own order.
PER_LAYER_TOKEN_EMBD = "per_layer_token_embd.weight"    # gemma3n's per-layer embedding table
_EXACT_ROLES: dict[str, Role] = {
    "output.weight": Role.OUTPUT,
    "token_embd.weight": Role.TOKEN_EMBD,
    PER_LAYER_TOKEN_EMBD: Role.TOKEN_EMBD,
}
_SUBSTRING_ROLES: tuple[tuple[str, Role], ...] = (
    ("attn_qkv.weight", Role.ATTN_V),
    ("attn_kv_b.weight", Role.ATTN_V),
    ("attn_v.weight", Role.ATTN_V),
    ("attn_k.weight", Role.ATTN_K),
    ("attn_q.weight", Role.ATTN_Q),
    ("attn_output.weight", Role.ATTN_OUTPUT),
    # no ".weight" suffix on purpose: ffn_down_exps / ffn_down_shexp (MoE) count as ffn_down too
    ("ffn_up", Role.FFN_UP),
    ("ffn_gate", Role.FFN_GATE),
    ("ffn_down", Role.FFN_DOWN),
)


def role_of(name: str) -> Role:
    """The role of a tensor by its GGUF name.

    >>> role_of("blk.0.ffn_down_exps.weight")
    <Role.FFN_DOWN: 'ffn_down'>
    """
    role = _EXACT_ROLES.get(name)
    if role is not None:
        return role
    for key, role in _SUBSTRING_ROLES:
        if key in name:
            return role
    return Role.OTHER


# Tensors llama.cpp never quantizes, whatever the mix: they stay in the input's float type (F32 for us).
# Each is either tiny, numerically delicate, or looked up rather than multiplied.
_KEEP_IF_CONTAINS: tuple[str, ...] = (
    "_norm.weight",                 # every norm, including 2-D ones
    "ffn_gate_inp.weight",          # MoE router
    "ffn_gate_tid2eid.weight",      # integer token -> expert table
    "altup", "laurel",              # gemma3n's small side matrices
    "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight",                  # short convolutions (Mamba, LFM2)
    "indexer.k_proj.weight", "indexer.q_proj.weight",       # tiny indexer projections
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",   # RWKV
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
    "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
    "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",            # T5 relative position bias
    ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos",   # vision towers
    ".patch_embd", ".patch_merger",
    "a.rvq.codebook", "mm.a.code_embd",                     # audio codebooks
)
_KEEP_IF_NAMED: frozenset[str] = frozenset({
    "position_embd.weight",         # learned absolute positions (bert, gpt2)
    "token_types.weight",           # bert's segment embeddings
})
_WEIGHT_SUFFIX = "weight"
_OUTPUT_NAME = "output.weight"
_LAYER_PREFIX = re.compile(r"blk\.\s*([+-]?\d+)")


def n_dims(shape: Sequence[int]) -> int:
    """ggml's dimension count: trailing sizes of 1 do not count, and a scalar still has one dimension.

    >>> n_dims((4096, 1))
    1
    """
    present = [axis for axis, size in enumerate(shape) if size > 1]
    return present[-1] + 1 if present else 1


def may_quantize(name: str, shape: Sequence[int], *, quantize_output: bool = True) -> bool:
    """Whether llama.cpp would quantize this tensor at all (before any type is chosen).

    Only 2-D and 3-D weight matrices qualify; the tables above list the exceptions among them.
    quantize_output=False mirrors llama-quantize --leave-output-tensor.

    >>> may_quantize("token_types.weight", (384, 2))
    False
    """
    if n_dims(shape) < 2 or not name.endswith(_WEIGHT_SUFFIX):
        return False
    if name == _OUTPUT_NAME and not quantize_output:
        return False
    if name in _KEEP_IF_NAMED:
        return False
    return not any(key in name for key in _KEEP_IF_CONTAINS)


def layer_index(name: str) -> int | None:
    """The block number in "blk.N.…", read as C's sscanf("blk.%d.") would, or None for a global tensor.

    >>> layer_index("blk.12.ffn_down.weight"), layer_index("output_norm.weight")
    (12, None)
    """
    match = _LAYER_PREFIX.match(name)
    return int(match.group(1)) if match else None


def loader_order(name: str) -> tuple[int, bytes]:
    """Sort key of llama.cpp's tensor map: global tensors first, then by block number, then by name (bytewise).

    The quantizer visits (and writes) tensors in this order, and its per-layer counters depend on it.
    """
    layer = layer_index(name)
    return (-1 if layer is None else layer, name.encode())
