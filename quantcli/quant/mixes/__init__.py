"""Quantization mixes: which ggml type each tensor gets for a named llama.cpp mix (Q4_K_M, Q8_0, ...).

catalog.py names the mixes, roles.py says what a tensor is, rules.py holds the per-role rules as data and
choose.py walks a model the way llama.cpp's quantizer does. docs/mixes.md explains the rules in prose.

    >>> from quantcli.quant.mixes import MixContext, MixTensor, choose_types
    >>> ctx = MixContext(arch="llama", n_layer=1, n_head=8, n_head_kv=8)
    >>> choose_types("Q8_0", [MixTensor("blk.0.ffn_down.weight", (11008, 4096))], ctx)["blk.0.ffn_down.weight"].name
    'Q8_0'
"""
from .catalog import MIXES, Mix, get_mix
from .choose import MixContext, MixOptions, MixTensor, choose_types, is_70b
from .options import parse_ggml_type, parse_tensor_type_option
from .roles import Role, may_quantize, role_of

__all__ = [
    "MIXES", "Mix", "MixContext", "MixOptions", "MixTensor", "Role", "choose_types", "get_mix", "is_70b",
    "may_quantize", "parse_ggml_type", "parse_tensor_type_option", "role_of",
]
