"""The GGUF conversion plan: every output tensor, its sources, transform, shape, type and size, from metadata alone.

The plan consumes the model description (quantcli.models.spec.ModelSpec): the tensors come from the spec's
(layer, role) list and get their GGUF names from one role table here, the hyperparameter keys from the spec's
values. The architecture adapter is asked only what is GGUF-specific to a family: the Q/K permutation and other
transforms, tensors llama.cpp generates or drops, the family's extra keys, and the name map that reads prefixed
checkpoints.

Nothing here reads tensor data. `--dry-run` prints a Plan; the writer sizes the header from it; the disk
check compares its total with free space; the cache keys on its canonical form.

    plan = make_plan(SourceModel.open(Checkpoint.open(path)), QuantOptions(mix="Q4_K_M"))
    plan.tensors[0].name, plan.tensors[0].qtype.name, plan.total_bytes
    # -> ('token_embd.weight', 'Q6_K', 85214560)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Mapping

import gguf
from gguf import GGMLQuantizationType, Keys, MODEL_TENSOR

from .. import __version__
from ..errors import InputError, UnsupportedError
from ..io.checkpoint import Checkpoint
from ..io.gguf_writer import TensorInfo as GGUFTensorInfo
from ..io.gguf_writer import planned_size
from ..io.safetensors import TensorInfo
from ..models.base import Architecture, TensorSpec, adapter_for, tensor_order
from ..io.gguf_metadata import MetaKV, check_text, kv_f32, kv_str, kv_u32
from ..models.spec import ModelSpec, checkpoint_names, spec_from_adapter
from ..quant.mixes import MIXES, MixContext, MixOptions, MixTensor, choose_types

QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION: the block layouts we write
FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)

# Role of the model description -> llama.cpp's tensor and suffix. The one place the GGUF plan spells a role;
# phi3's fused gate+up is llama.cpp's ffn_up (its graph splits the halves), bert's norms after the residual
# adds are attn_output_norm / layer_output_norm.
ROLE_TENSORS: dict[str, tuple[MODEL_TENSOR, str]] = {
    "tok_embd": (MODEL_TENSOR.TOKEN_EMBD, "weight"), "pos_embd": (MODEL_TENSOR.POS_EMBD, "weight"),
    "type_embd": (MODEL_TENSOR.TOKEN_TYPES, "weight"),
    "embd_norm": (MODEL_TENSOR.TOKEN_EMBD_NORM, "weight"), "embd_norm_bias": (MODEL_TENSOR.TOKEN_EMBD_NORM, "bias"),
    "output_norm": (MODEL_TENSOR.OUTPUT_NORM, "weight"), "output": (MODEL_TENSOR.OUTPUT, "weight"),
    "attn_norm": (MODEL_TENSOR.ATTN_NORM, "weight"),
    "attn_q": (MODEL_TENSOR.ATTN_Q, "weight"), "attn_q_bias": (MODEL_TENSOR.ATTN_Q, "bias"),
    "attn_k": (MODEL_TENSOR.ATTN_K, "weight"), "attn_k_bias": (MODEL_TENSOR.ATTN_K, "bias"),
    "attn_v": (MODEL_TENSOR.ATTN_V, "weight"), "attn_v_bias": (MODEL_TENSOR.ATTN_V, "bias"),
    "attn_qkv": (MODEL_TENSOR.ATTN_QKV, "weight"),
    "attn_out": (MODEL_TENSOR.ATTN_OUT, "weight"), "attn_out_bias": (MODEL_TENSOR.ATTN_OUT, "bias"),
    "attn_q_norm": (MODEL_TENSOR.ATTN_Q_NORM, "weight"), "attn_k_norm": (MODEL_TENSOR.ATTN_K_NORM, "weight"),
    "post_attn_norm": (MODEL_TENSOR.ATTN_POST_NORM, "weight"),
    "attn_out_norm": (MODEL_TENSOR.ATTN_OUT_NORM, "weight"), "attn_out_norm_bias": (MODEL_TENSOR.ATTN_OUT_NORM, "bias"),
    "ffn_norm": (MODEL_TENSOR.FFN_NORM, "weight"),
    "ffn_gate": (MODEL_TENSOR.FFN_GATE, "weight"), "ffn_gate_bias": (MODEL_TENSOR.FFN_GATE, "bias"),
    "ffn_up": (MODEL_TENSOR.FFN_UP, "weight"), "ffn_up_bias": (MODEL_TENSOR.FFN_UP, "bias"),
    "ffn_gate_up": (MODEL_TENSOR.FFN_UP, "weight"),
    "ffn_down": (MODEL_TENSOR.FFN_DOWN, "weight"), "ffn_down_bias": (MODEL_TENSOR.FFN_DOWN, "bias"),
    "post_ffn_norm": (MODEL_TENSOR.FFN_POST_NORM, "weight"),
    "layer_out_norm": (MODEL_TENSOR.LAYER_OUT_NORM, "weight"),
    "layer_out_norm_bias": (MODEL_TENSOR.LAYER_OUT_NORM, "bias"),
}


def gguf_tensor_name(role: str, layer: int | None) -> str:
    """The GGUF name of a role in a block (`layer` None outside the blocks)."""
    tensor, suffix = ROLE_TENSORS[role]
    base = gguf.TENSOR_NAMES[tensor]
    return f"{base.format(bid=layer) if layer is not None else base}.{suffix}"


@dataclass(frozen=True)
class QuantOptions:
    """What the user asked for; `mix` None keeps the source's 16-bit type (F16, or BF16 for a BF16 source)."""

    mix: str | None = None
    mix_options: MixOptions = field(default_factory=MixOptions)
    pre_tokenizer: str | None = None
    imatrix: Path | None = None


@dataclass(frozen=True)
class TensorPlan:
    spec: TensorSpec
    qtype: GGMLQuantizationType
    source_dtypes: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def ggml_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.spec.shape))

    @property
    def info(self) -> GGUFTensorInfo:
        return GGUFTensorInfo(self.name, self.ggml_shape, self.qtype)

    @property
    def nbytes(self) -> int:
        return self.info.nbytes


@dataclass(frozen=True)
class Plan:
    source: Path
    arch: str
    mix: str
    metadata: tuple[MetaKV, ...]
    tensors: tuple[TensorPlan, ...]

    @cached_property
    def total_bytes(self) -> int:
        # Sizes the whole metadata (the token list is large), so it is worked out once.
        return planned_size(self.metadata, [t.info for t in self.tensors])

    @property
    def n_params(self) -> int:
        total = 0
        for t in self.tensors:
            n = 1
            for d in t.spec.shape:
                n *= d
            total += n
        return total


def default_mix(ckpt: Checkpoint) -> str:
    """convert_hf_to_gguf's 'auto': BF16 stays BF16, anything else becomes F16 (never BF16 -> F16 silently)."""
    dtypes = {t.dtype for t in ckpt.tensors.values() if len(t.shape) > 1}
    return "BF16" if dtypes == {"BF16"} else "F16"


def mix_context(spec: ModelSpec, adapter: Architecture, has_imatrix: bool) -> MixContext:
    # experts are not described by the spec (no MoE family converts yet); the adapter still reads the count
    return MixContext(arch=spec.family, n_layer=spec.n_layer, n_head=spec.n_head, n_head_kv=spec.n_head_kv,
                      n_expert=adapter.n_expert, has_imatrix=has_imatrix)


def hparams_metadata(spec: ModelSpec, adapter: Architecture) -> list[MetaKV]:
    """The architecture's GGUF keys: the common hyperparameters from the spec, then the family's own keys.

    Values come from the description. Whether an optional key is written at all follows llama.cpp's converter,
    which writes the rope base and the key/value head size only when config.json gives them; the adapter (which
    holds the config) answers that.
    """
    key = adapter.key
    out = [
        kv_u32(key(Keys.LLM.CONTEXT_LENGTH), spec.n_ctx_train),
        kv_u32(key(Keys.LLM.EMBEDDING_LENGTH), spec.hidden),
        kv_u32(key(Keys.LLM.BLOCK_COUNT), spec.n_layer),
        kv_u32(key(Keys.LLM.FEED_FORWARD_LENGTH), spec.ffn),
        kv_u32(key(Keys.Attention.HEAD_COUNT), spec.n_head),
        kv_u32(key(Keys.Attention.HEAD_COUNT_KV), spec.n_head_kv),
    ]
    if spec.rope is not None and adapter.rope_theta() is not None:
        out.append(kv_f32(key(Keys.Rope.FREQ_BASE), spec.rope.theta))
    eps_key = Keys.Attention.LAYERNORM_RMS_EPS if spec.numerics.norm == "rms" else Keys.Attention.LAYERNORM_EPS
    out.append(kv_f32(key(eps_key), spec.norm_eps))
    if adapter.get("head_dim") is not None:
        out.append(kv_u32(key(Keys.Attention.KEY_LENGTH), spec.head_dim))
        out.append(kv_u32(key(Keys.Attention.VALUE_LENGTH), spec.head_dim))
    return out + adapter.rope_scaling_metadata() + adapter.extra_metadata()


def gguf_tensors(spec: ModelSpec, adapter: Architecture, tensors: Mapping[str, TensorInfo]) -> list[TensorSpec]:
    """Every GGUF tensor in writing order (token embedding, blocks by layer, then the rest).

    The description's tensors are named by role. A checkpoint tensor the description does not claim is kept when
    the family's GGUF name map knows it (a sequence classifier's head, q/k/v biases a config forgot to declare,
    an lm_head beside embeddings tied by default): llama.cpp loads such optional tensors. One neither claimed nor
    named is refused, and the adapter's `ignored` patterns drop what llama.cpp does not load.
    """
    names = checkpoint_names(adapter, spec, tensors)
    tied = adapter.get_bool("tie_word_embeddings", False)   # llama.cpp's rule: reuse token_embd only when told

    def dropped(hf_name: str, gguf_name: str) -> bool:
        return any(re.search(p, hf_name) for p in adapter.ignored) or (gguf_name == "output.weight" and tied)

    out: list[TensorSpec] = []
    for t in spec.tensors:
        source, name = names[t.hf_name], gguf_tensor_name(t.role, t.layer)
        if not dropped(source, name):
            out.append(TensorSpec(name, (source,), tensors[source].shape,
                                  adapter.transform_for(name, source, tensors[source]), role=t.role, layer=t.layer))
    claimed = set(names.values())
    unknown: list[str] = []
    for hf_name, info in tensors.items():
        if hf_name in claimed or any(re.search(p, hf_name) for p in adapter.ignored):
            continue
        name = adapter.gguf_name(hf_name)
        if name is None:
            unknown.append(hf_name)
        elif not dropped(hf_name, name):
            out.append(TensorSpec(name, (hf_name,), info.shape, adapter.transform_for(name, hf_name, info)))
    if unknown:
        raise UnsupportedError(
            f"{len(unknown)} tensors of this {adapter.arch_name} checkpoint have no GGUF name (first: {unknown[0]!r}).",
            hint="The checkpoint has parts quantcli does not convert yet; please report it with the model id.")
    out.extend(adapter.extra_tensors(tensors))
    return sorted(out, key=tensor_order)


def general_metadata(adapter: Architecture, ckpt: Checkpoint, mix: str) -> list[MetaKV]:
    name = str(ckpt.config.get("_name_or_path") or ckpt.path.resolve().name).rstrip("/").split("/")[-1]
    out = [
        kv_str(Keys.General.ARCHITECTURE, adapter.arch_name),
        kv_str(Keys.General.TYPE, "model"),
        kv_str(Keys.General.NAME, name or adapter.arch_name),
        kv_u32(Keys.General.FILE_TYPE, MIXES[mix].ftype),
        kv_u32(Keys.General.QUANTIZATION_VERSION, QUANTIZATION_VERSION),
        kv_str("general.quantized_by", f"quantcli {__version__}"),
    ]
    return out


@dataclass
class SourceModel:
    """What every output of one checkpoint shares: its description, adapter, GGUF tensors and tokenizer metadata.

    Built once per run, so a recipe with several outputs maps names and parses the tokenizer once.
    """

    ckpt: Checkpoint
    spec: ModelSpec
    adapter: Architecture
    specs: list[TensorSpec]
    _tokenizer: dict[str | None, list[MetaKV]] = field(default_factory=dict)

    @classmethod
    def open(cls, ckpt: Checkpoint) -> "SourceModel":
        adapter = adapter_for(ckpt.config, ckpt.path)
        # config.json is checked against the tensors present before anything is sized by it
        adapter.check_block_count(ckpt.tensors)
        description = spec_from_adapter(adapter)
        specs = gguf_tensors(description, adapter, ckpt.tensors)
        adapter.check_shapes(specs)
        for tensor in specs:
            for src in tensor.sources:
                if ckpt.tensors[src].dtype not in ("F32", "F16", "BF16", "F64"):
                    raise InputError(f"tensor {src!r} has dtype {ckpt.tensors[src].dtype}; weights must be F32, F16 or BF16.",
                                     hint="This looks like an already quantized checkpoint; convert the original weights.")
        return cls(ckpt, description, adapter, specs)

    def tokenizer(self, pre_tokenizer: str | None) -> list[MetaKV]:
        if pre_tokenizer not in self._tokenizer:
            from ..models.tokenizer import tokenizer_metadata

            self._tokenizer[pre_tokenizer] = tokenizer_metadata(self.ckpt.path, self.ckpt.config, vocab_size=self.spec.vocab,
                                                                pre_tokenizer=pre_tokenizer)
        return self._tokenizer[pre_tokenizer]


def make_plan(source: SourceModel, options: QuantOptions, *, extra_metadata: list[MetaKV] | None = None) -> Plan:
    """Plan one output of `source` (a run shares one SourceModel among all its outputs)."""
    ckpt, spec, adapter, specs = source.ckpt, source.spec, source.adapter, source.specs
    mix = (options.mix or default_mix(ckpt)).upper()
    if mix not in MIXES:
        raise InputError(f"unknown type {mix!r}.", hint=f"Valid types: {', '.join(MIXES)}.")
    mix_tensors = [MixTensor(s.name, tuple(reversed(s.shape))) for s in specs]
    types = choose_types(mix, mix_tensors, mix_context(spec, adapter, options.imatrix is not None), options.mix_options)
    metadata = general_metadata(adapter, ckpt, mix) + hparams_metadata(spec, adapter) + source.tokenizer(options.pre_tokenizer)
    metadata += extra_metadata or []
    check_text(metadata, str(ckpt.path))
    tensors = tuple(TensorPlan(s, types[s.name], tuple(ckpt.tensors[x].dtype for x in s.sources)) for s in specs)
    return Plan(ckpt.path, adapter.arch_name, mix, tuple(metadata), tensors)
