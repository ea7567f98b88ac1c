"""The architecture adapter: the one place that knows a model family.

An adapter turns an HF config into GGUF metadata and maps each HF tensor to its GGUF name and transform. It
works from metadata only (config + tensor names and shapes), so a plan exists before any weight is read.
Subclasses set class attributes (the data) and override a hook only where the family really differs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Mapping

import gguf
from gguf import Keys, MODEL_ARCH, MODEL_ARCH_NAMES

from ..errors import InputError, UnsupportedError
from ..io.safetensors import TensorInfo
from .layout import LLAMA_LAYOUT, HFLayout
from .metadata import MetaKV, kv_f32, kv_str, kv_u32
from .pooling import sentence_transformers_pooling
from .transforms import Transform

IDENTITY = Transform()


@dataclass(frozen=True)
class TensorSpec:
    """One GGUF tensor: its name, the HF tensors it is made from, how, and its shape in numpy (row-major) order.

    A spec with no sources is generated from the config alone (llama 3's rope_freqs, phi3's rope factors): its
    transform's apply([]) computes the values.
    """

    name: str
    sources: tuple[str, ...]
    shape: tuple[int, ...]
    transform: Transform = IDENTITY

    @property
    def generated(self) -> bool:
        return not self.sources


@dataclass(frozen=True)
class Numerics:
    """What a forward pass must know about the family (for the calibration/verify engine and for docs).

    Only the family's fixed choices live here; per-model values (epsilons, soft-capping limits, window sizes,
    rope bases) are in the config and in the GGUF metadata the adapter writes.
    """

    norm: str = "rms"                 # "rms", or "layer" (LayerNorm with weight and bias)
    norm_weight_offset: float = 0.0   # the HF checkpoint stores norm scales as (w - offset); gemma's RMSNorm: 1.0
    activation: str = "silu"          # "silu", "gelu_tanh" (tanh approximation) or "gelu" (erf)
    gated_ffn: bool = True            # down(act(gate(x)) * up(x)); False: down(act(up(x))) as in bert
    rope: str = "normal"              # "normal" (llama: pairs interleaved after permute), "neox" (halves), or
                                      # "none" (learned absolute position embeddings instead)
    embed_scale: str = "none"         # "sqrt_hidden": token embeddings times sqrt(hidden_size) (gemma)
    qk_norm: bool = False             # per-head RMSNorm of q and k before rope (qwen3, gemma3)
    post_norms: bool = False          # extra norms on the attention and FFN outputs before each residual add
    causal: bool = True               # False for encoders (bert): every token attends to every token

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "norm": ("rms", "layer"), "activation": ("silu", "gelu", "gelu_tanh"), "rope": ("normal", "neox", "none"),
        "embed_scale": ("none", "sqrt_hidden"),
    }

    def __post_init__(self) -> None:
        # the engine dispatches on these strings, so a typo must fail where the family is declared
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"Numerics.{name} is {getattr(self, name)!r}; expected one of {allowed}")


class Architecture:
    """Base adapter. `config` is the parsed config.json (text sub-config merged in for multimodal wrappers)."""

    hf_architectures: ClassVar[tuple[str, ...]] = ()
    gguf_arch: ClassVar[MODEL_ARCH]
    numerics: ClassVar[Numerics] = Numerics()
    # HF tensor names that carry no weights llama.cpp needs (buffers, rotary caches).
    ignored: ClassVar[tuple[str, ...]] = (r"\.rotary_emb\.inv_freq$", r"\.masked_bias$", r"\.attn\.bias$")
    # Where each tensor role lives in the HF checkpoint (quantcli.models.spec reads it; the GGUF path does not).
    hf_layout: ClassVar[HFLayout] = LLAMA_LAYOUT
    # transformers' default for tie_word_embeddings in this family's config class (spec only; the GGUF plan
    # keeps its own rule)
    tied_by_default: ClassVar[bool] = False

    def __init__(self, config: Mapping, folder: Path | None = None) -> None:
        # `folder` is the checkpoint folder, for the few settings stored beside config.json
        # (sentence-transformers pooling); None when only the config is at hand.
        self.folder = folder
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

    def rope_theta_swa(self) -> float | None:
        """The rope base of sliding-window layers when it differs by design (gemma3's local layers)."""
        params = self.config.get("rope_parameters")
        if isinstance(params, dict) and isinstance(params.get("sliding_attention"), dict):
            if params["sliding_attention"].get("rope_theta") is not None:
                return float(params["sliding_attention"]["rope_theta"])
        value = self.get("rope_local_base_freq", "local_rope_theta")
        return None if value is None else float(value)  # type: ignore[arg-type]

    def sliding_layers(self, default_period: int) -> list[bool]:
        """Which layers attend through a sliding window.

        transformers 5 lists `layer_types`; older configs give a period n (`sliding_window_pattern`) where every
        n-th layer is global and the others slide; `default_period` is the family's period when neither is set.
        """
        types = self.config.get("layer_types")
        if isinstance(types, list) and len(types) == self.n_layer:
            return [t == "sliding_attention" for t in types]
        period = int(self.get("sliding_window_pattern", "_sliding_window_pattern", default=default_period))  # type: ignore[arg-type]
        if period < 1:
            raise InputError(f"sliding_window_pattern is {period}; it must be a positive layer period.",
                             hint="Fix config.json, or list every layer's kind in layer_types.")
        return [bool((i + 1) % period) for i in range(self.n_layer)]

    def pooling_metadata(self) -> list[MetaKV]:
        """`{arch}.pooling_type` when the folder is a sentence-transformers model, else nothing."""
        pooling = sentence_transformers_pooling(self.folder)
        return [] if pooling is None else [kv_u32(self.key(Keys.LLM.POOLING_TYPE), int(pooling))]

    def rope_scaling(self) -> dict:
        params = self.config.get("rope_parameters") or self.config.get("rope_scaling") or {}
        if isinstance(params, dict) and isinstance(params.get("full_attention"), dict):
            params = params["full_attention"]
        return params if isinstance(params, dict) else {}

    # -- model description (quantcli.models.spec; nothing here changes the GGUF output) -----------------
    def attention_biases(self) -> tuple[bool, bool]:
        """Whether q/k/v and the output projection carry biases (llama's `attention_bias` sets both)."""
        flag = bool(self.get("attention_bias", default=False))
        return flag, flag

    def ffn_bias(self) -> bool:
        return bool(self.get("mlp_bias", default=False))

    def attention_window_layers(self) -> list[bool]:
        """Which blocks attend through `sliding_window` in the HF model (not necessarily in llama.cpp's graph)."""
        types = self.config.get("layer_types")
        if isinstance(types, list) and len(types) == self.n_layer:
            return [t == "sliding_attention" for t in types]
        return [self.get("sliding_window") is not None] * self.n_layer

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


def adapter_for(config: Mapping, folder: Path | None = None) -> Architecture:
    """The adapter for a config.json; an unknown architecture lists the supported ones.

    >>> adapter_for({"architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 2}).arch_name
    'qwen2'
    """
    from . import families  # noqa: F401

    names = config.get("architectures") or []
    if not isinstance(names, list) or not names:
        raise InputError("config.json has no 'architectures' list.",
                         hint="Add e.g. \"architectures\": [\"LlamaForCausalLM\"] or re-download config.json.")
    for name in names:
        if name in _REGISTRY:
            return _REGISTRY[name](config, folder)
    raise UnsupportedError(f"architecture {names[0]} is not supported.",
                           hint=f"Supported: {', '.join(sorted(_REGISTRY))}.")
