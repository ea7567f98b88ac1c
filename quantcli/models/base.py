"""The architecture adapter: the one place that knows a model family.

An adapter turns an HF config into GGUF metadata and maps each HF tensor to its GGUF name and transform. It
works from metadata only (config + tensor names and shapes), so a plan exists before any weight is read.
Subclasses set class attributes (the data) and override a hook only where the family really differs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Mapping, Sequence

import gguf
from gguf import Keys, MODEL_ARCH, MODEL_ARCH_NAMES

from ..errors import InputError, UnsupportedError
from ..io.safetensors import TensorInfo
from .metadata import MetaKV, kv_bool, kv_f32, kv_str, kv_u32
from .transforms import Transform

IDENTITY = Transform()


@dataclass(frozen=True)
class TensorSpec:
    """One GGUF tensor: its name, the HF tensors it is made from, how, and its shape in numpy (row-major) order."""

    name: str
    sources: tuple[str, ...]
    shape: tuple[int, ...]
    transform: Transform = IDENTITY


@dataclass(frozen=True)
class Numerics:
    """What a forward pass must know about the family (for the calibration/verify engine and for docs)."""

    norm: str = "rms"                 # "rms" or "layer"
    activation: str = "silu"          # gated FFN activation ("silu", "gelu_tanh") or "gelu" for bert's plain FFN
    rope: str = "normal"              # "normal" (llama interleaved after permute), "neox", or "none"
    embed_scale: str = "none"         # "sqrt_hidden" for gemma


class Architecture:
    """Base adapter. `config` is the parsed config.json (text sub-config merged in for multimodal wrappers)."""

    hf_architectures: ClassVar[tuple[str, ...]] = ()
    gguf_arch: ClassVar[MODEL_ARCH]
    numerics: ClassVar[Numerics] = Numerics()
    # HF tensor names that carry no weights llama.cpp needs (buffers, rotary caches).
    ignored: ClassVar[tuple[str, ...]] = (r"\.rotary_emb\.inv_freq$", r"\.masked_bias$", r"\.attn\.bias$")

    def __init__(self, config: Mapping) -> None:
        self.config = dict(config)
        if isinstance(self.config.get("text_config"), dict):
            self.config = {**self.config, **self.config["text_config"]}
        self.arch_name: str = MODEL_ARCH_NAMES[self.gguf_arch]
        self.n_layer = int(self.need("num_hidden_layers", "n_layer", "num_layers"))
        self.name_map = gguf.get_tensor_name_map(self.gguf_arch, self.n_layer)

    # -- config access ---------------------------------------------------------------------------------
    def get(self, *keys: str, default: object = None) -> object:
        for k in keys:
            if self.config.get(k) is not None:
                return self.config[k]
        return default

    def need(self, *keys: str) -> object:
        value = self.get(*keys)
        if value is None:
            raise InputError(f"config.json has none of {', '.join(keys)}, which a {self.arch_name} model needs.",
                             hint="Check that config.json belongs to this model (or re-download it).")
        return value

    @property
    def n_head(self) -> int:
        return int(self.need("num_attention_heads", "n_head"))

    @property
    def n_head_kv(self) -> int:
        return int(self.get("num_key_value_heads", "n_kv_heads", default=self.n_head))  # type: ignore[arg-type]

    @property
    def head_dim(self) -> int:
        return int(self.get("head_dim", default=int(self.need("hidden_size")) // self.n_head))  # type: ignore[arg-type]

    @property
    def n_expert(self) -> int:
        return int(self.get("num_local_experts", "num_experts", default=0))  # type: ignore[arg-type]

    def rope_theta(self) -> float | None:
        params = self.config.get("rope_parameters")
        if isinstance(params, dict):
            params = params.get("full_attention", params)
            if isinstance(params, dict) and params.get("rope_theta") is not None:
                return float(params["rope_theta"])
        value = self.get("rope_theta")
        return None if value is None else float(value)  # type: ignore[arg-type]

    def rope_scaling(self) -> dict:
        params = self.config.get("rope_parameters") or self.config.get("rope_scaling") or {}
        if isinstance(params, dict) and isinstance(params.get("full_attention"), dict):
            params = params["full_attention"]
        return params if isinstance(params, dict) else {}

    # -- metadata -------------------------------------------------------------------------------------
    def key(self, template: str) -> str:
        return template.format(arch=self.arch_name)

    def metadata(self) -> list[MetaKV]:
        """The architecture's hparams as GGUF metadata (general.* and tokenizer keys are added by the plan)."""
        out = [
            kv_u32(self.key(Keys.LLM.CONTEXT_LENGTH), self.need("max_position_embeddings", "n_positions", "n_ctx")),
            kv_u32(self.key(Keys.LLM.EMBEDDING_LENGTH), self.need("hidden_size", "n_embd")),
            kv_u32(self.key(Keys.LLM.BLOCK_COUNT), self.n_layer),
            kv_u32(self.key(Keys.LLM.FEED_FORWARD_LENGTH), self.need("intermediate_size", "n_inner")),
            kv_u32(self.key(Keys.Attention.HEAD_COUNT), self.n_head),
            kv_u32(self.key(Keys.Attention.HEAD_COUNT_KV), self.n_head_kv),
        ]
        if (theta := self.rope_theta()) is not None:
            out.append(kv_f32(self.key(Keys.Rope.FREQ_BASE), theta))
        if (eps := self.get("rms_norm_eps")) is not None:
            out.append(kv_f32(self.key(Keys.Attention.LAYERNORM_RMS_EPS), eps))  # type: ignore[arg-type]
        if (eps := self.get("layer_norm_eps", "layer_norm_epsilon")) is not None:
            out.append(kv_f32(self.key(Keys.Attention.LAYERNORM_EPS), eps))  # type: ignore[arg-type]
        if self.config.get("head_dim") is not None:
            out.append(kv_u32(self.key(Keys.Attention.KEY_LENGTH), self.head_dim))
            out.append(kv_u32(self.key(Keys.Attention.VALUE_LENGTH), self.head_dim))
        out.extend(self.rope_scaling_metadata())
        out.extend(self.extra_metadata())
        return out

    def rope_scaling_metadata(self) -> list[MetaKV]:
        scaling = self.rope_scaling()
        kind = str(scaling.get("rope_type", scaling.get("type", "default"))).lower()
        factor = scaling.get("factor")
        if kind == "linear" and factor:
            return [kv_str(self.key(Keys.Rope.SCALING_TYPE), "linear"),
                    kv_f32(self.key(Keys.Rope.SCALING_FACTOR), factor)]
        if kind == "yarn" and factor:
            out = [kv_str(self.key(Keys.Rope.SCALING_TYPE), "yarn"), kv_f32(self.key(Keys.Rope.SCALING_FACTOR), factor)]
            if scaling.get("original_max_position_embeddings"):
                out.append(kv_u32(self.key(Keys.Rope.SCALING_ORIG_CTX_LEN), scaling["original_max_position_embeddings"]))
            return out
        return []

    def extra_metadata(self) -> list[MetaKV]:
        return []

    # -- tensors ----------------------------------------------------------------------------------------
    def gguf_name(self, hf_name: str) -> str | None:
        return self.name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))

    def transform_for(self, gguf_name: str, hf_name: str, info: TensorInfo) -> Transform:
        return IDENTITY

    def tensor_specs(self, tensors: Mapping[str, TensorInfo]) -> list[TensorSpec]:
        """Every GGUF tensor in writing order: token embedding, blocks by layer, then the rest."""
        specs: list[TensorSpec] = []
        unknown: list[str] = []
        tied = bool(self.config.get("tie_word_embeddings", False))
        for hf_name, info in tensors.items():
            if any(re.search(p, hf_name) for p in self.ignored):
                continue
            name = self.gguf_name(hf_name)
            if name is None:
                unknown.append(hf_name)
                continue
            if name == "output.weight" and tied:
                continue  # llama.cpp reuses token_embd when output.weight is absent
            specs.append(TensorSpec(name, (hf_name,), info.shape, self.transform_for(name, hf_name, info)))
        if unknown:
            raise UnsupportedError(
                f"{len(unknown)} tensors of this {self.arch_name} checkpoint have no GGUF name (first: {unknown[0]!r}).",
                hint="The checkpoint has parts quantcli does not convert yet; please report it with the model id.")
        specs.extend(self.extra_tensors(tensors))
        return sorted(specs, key=_tensor_order)

    def extra_tensors(self, tensors: Mapping[str, TensorInfo]) -> list[TensorSpec]:
        return []


def _tensor_order(spec: TensorSpec) -> tuple:
    m = re.match(r"blk\.(\d+)\.", spec.name)
    if m:
        return (1, int(m.group(1)), spec.name)
    return (0 if spec.name.startswith(("token_embd", "token_types", "position_embd")) else 2, 0, spec.name)


_REGISTRY: dict[str, type[Architecture]] = {}


def register(cls: type[Architecture]) -> type[Architecture]:
    for name in cls.hf_architectures:
        _REGISTRY[name] = cls
    return cls


def supported_architectures() -> list[str]:
    from . import families  # noqa: F401  (registers every adapter)

    return sorted(_REGISTRY)


def adapter_for(config: Mapping) -> Architecture:
    """The adapter for a config.json; an unknown architecture lists the supported ones."""
    from . import families  # noqa: F401

    names = config.get("architectures") or []
    if not isinstance(names, list) or not names:
        raise InputError("config.json has no 'architectures' list.",
                         hint="Add e.g. \"architectures\": [\"LlamaForCausalLM\"] or re-download config.json.")
    for name in names:
        if name in _REGISTRY:
            return _REGISTRY[name](config)
    raise UnsupportedError(f"architecture {names[0]} is not supported.",
                           hint=f"Supported: {', '.join(sorted(_REGISTRY))}.")
