"""The architecture adapter: the one place that knows a model family.

An adapter reads an HF config for its family. quantcli.models.spec asks it for the model description (roles,
numerics, which optional tensors exist); the GGUF plan asks it only what is GGUF-specific: the name map that
reads prefixed checkpoints, transforms (the Q/K permutation, gemma's +1), tensors llama.cpp generates or drops,
and the family's own GGUF keys. It works from metadata only (config + tensor names and shapes), so a plan exists
before any weight is read. Subclasses set class attributes (the data) and override a hook only where the family
really differs.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Mapping

import gguf
from gguf import Keys, MODEL_ARCH, MODEL_ARCH_NAMES

from ..errors import InputError, UnsupportedError
from ..io.safetensors import TensorInfo
from .layout import LLAMA_LAYOUT, HFLayout
from ..io.gguf_metadata import MetaKV, kv_f32, kv_str, kv_u32
from .pooling import sentence_transformers_pooling
from .transforms import Transform

IDENTITY = Transform()
U32_MAX = 2**32 - 1      # most hparams are written as GGUF UINT32


def _kind(value: object) -> str:
    return {bool: "a boolean", str: "a string", list: "a list", dict: "an object", float: "a number",
            int: "an integer", type(None): "null"}.get(type(value), type(value).__name__)


def config_int(value: object, field: str, source: str, *, min: int = 1, max: int = U32_MAX) -> int:
    """`value` as an int in [min, max], else an InputError naming the file and field (JSON floats such as
    4096.0 that hold an integer are accepted; booleans, strings and lists are not)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"{source}: {field} is {value!r} ({_kind(value)}); it must be an integer.",
                         hint=f"Fix {field} in {source} (or re-download the file).")
    if not min <= value <= max:
        raise InputError(f"{source}: {field} is {value}; it must be from {min} to {max}.",
                         hint=f"Fix {field} in {source} (or re-download the file).")
    return value


def config_float(value: object, field: str, source: str, *, positive: bool = False) -> float:
    """`value` as a finite float (an int is fine), positive when asked; else an InputError naming the field."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InputError(f"{source}: {field} is {value!r} ({_kind(value)}); it must be a number.",
                         hint=f"Fix {field} in {source} (or re-download the file).")
    out = float(value)
    if not math.isfinite(out) or (positive and out <= 0) or abs(out) > 3.4e38:
        raise InputError(f"{source}: {field} is {value}; it must be a finite{' positive' if positive else ''} number.",
                         hint=f"Fix {field} in {source} (or re-download the file).")
    return out


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
    role: str | None = None        # the model description's role and block (None: generated, or not described)
    layer: int | None = None

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
    # Where each tensor role lives in the HF checkpoint (quantcli.models.spec reads it).
    hf_layout: ClassVar[HFLayout] = LLAMA_LAYOUT
    # transformers' default for tie_word_embeddings in this family's config class (the description's rule; the
    # GGUF plan follows llama.cpp's, which reuses token_embd only when the config says so)
    tied_by_default: ClassVar[bool] = False
    # HF classes of the family saved without an LM head (bare transformer, e.g. embedding models)
    headless: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Mapping, folder: Path | None = None) -> None:
        # `folder` is the checkpoint folder, for the few settings stored beside config.json
        # (sentence-transformers pooling); None when only the config is at hand.
        self.folder = folder
        self.config = dict(config)
        if isinstance(self.config.get("text_config"), dict):
            self.config = {**self.config, **self.config["text_config"]}
        self.arch_name: str = MODEL_ARCH_NAMES[self.gguf_arch]
        self.n_layer = self.need_int("num_hidden_layers", "n_layer", "num_layers")

    @cached_property
    def name_map(self) -> gguf.TensorNameMap:
        # Built on first use, after check_block_count has checked n_layer against the blocks present: gguf-py's map
        # holds every name of every block, which for a hostile num_hidden_layers of 1e9 is gigabytes.
        return gguf.get_tensor_name_map(self.gguf_arch, self.n_layer)

    # -- config access ---------------------------------------------------------------------------------
    # Every hparam is read through need_*/get_*, which check type and range and name the field in the error:
    # a string, list or out-of-range number in config.json never reaches a cast, a division or the writer.
    @property
    def config_source(self) -> str:
        return str(self.folder / "config.json") if self.folder is not None else "config.json"

    def _first(self, keys: tuple[str, ...]) -> tuple[str, object]:
        for k in keys:
            if self.config.get(k) is not None:
                return k, self.config[k]
        return keys[0], None

    def get(self, *keys: str, default: object = None) -> object:
        """The raw value (unchecked): only for values that are not numbers or flags (names, lists, maps)."""
        value = self._first(keys)[1]
        return default if value is None else value

    def need(self, *keys: str) -> object:
        value = self.get(*keys)
        if value is None:
            raise InputError(f"{self.config_source} has none of {', '.join(keys)}, which a {self.arch_name} model needs.",
                             hint="Check that config.json belongs to this model (or re-download it).")
        return value

    def need_int(self, *keys: str, min: int = 1, max: int = U32_MAX) -> int:
        self.need(*keys)
        key, value = self._first(keys)
        return config_int(value, key, self.config_source, min=min, max=max)

    def get_int(self, *keys: str, default: int | None = None, min: int = 1, max: int = U32_MAX) -> int | None:
        key, value = self._first(keys)
        return default if value is None else config_int(value, key, self.config_source, min=min, max=max)

    def need_float(self, *keys: str, positive: bool = False) -> float:
        self.need(*keys)
        key, value = self._first(keys)
        return config_float(value, key, self.config_source, positive=positive)

    def get_float(self, *keys: str, default: float | None = None, positive: bool = False) -> float | None:
        key, value = self._first(keys)
        return default if value is None else config_float(value, key, self.config_source, positive=positive)

    def get_bool(self, key: str, default: bool = False) -> bool:
        value = self.config.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise InputError(f"{self.config_source}: {key} is {value!r} ({_kind(value)}); it must be true or false.",
                             hint=f"Fix {key} in config.json (JSON true/false, not a string).")
        return value

    def sub_float(self, params: Mapping, key: str, where: str, *, positive: bool = False) -> float | None:
        """A number inside a nested block of config.json (rope_scaling, rope_parameters)."""
        value = params.get(key)
        return None if value is None else config_float(value, f"{where}.{key}", self.config_source, positive=positive)

    @property
    def n_head(self) -> int:
        return self.need_int("num_attention_heads", "n_head")

    @property
    def n_head_kv(self) -> int:
        n_kv = self.get_int("num_key_value_heads", "n_kv_heads", default=self.n_head)
        assert n_kv is not None
        if self.n_head % n_kv:
            raise InputError(f"{self.config_source}: num_attention_heads ({self.n_head}) is not a multiple of "
                             f"num_key_value_heads ({n_kv}).", hint="Fix config.json (or re-download it).")
        return n_kv

    @property
    def head_dim(self) -> int:
        explicit = self.get_int("head_dim")
        if explicit is not None:
            return explicit
        hidden = self.need_int("hidden_size", "n_embd")
        if hidden % self.n_head:
            raise InputError(f"{self.config_source}: hidden_size ({hidden}) is not a multiple of num_attention_heads "
                             f"({self.n_head}) and there is no head_dim.", hint="Fix config.json (or re-download it).")
        return hidden // self.n_head

    @property
    def n_expert(self) -> int:
        return self.get_int("num_local_experts", "num_experts", default=0, min=0) or 0

    def rope_theta(self) -> float | None:
        params = self.config.get("rope_parameters")
        if isinstance(params, dict):
            params = params.get("full_attention", params)
            if isinstance(params, dict) and params.get("rope_theta") is not None:
                return self.sub_float(params, "rope_theta", "rope_parameters", positive=True)
        return self.get_float("rope_theta", positive=True)

    def rope_theta_swa(self) -> float | None:
        """The rope base of sliding-window layers when it differs by design (gemma3's local layers)."""
        params = self.config.get("rope_parameters")
        if isinstance(params, dict) and isinstance(params.get("sliding_attention"), dict):
            if params["sliding_attention"].get("rope_theta") is not None:
                return self.sub_float(params["sliding_attention"], "rope_theta", "rope_parameters.sliding_attention",
                                      positive=True)
        return self.get_float("rope_local_base_freq", "local_rope_theta", positive=True)

    def sliding_layers(self, default_period: int) -> list[bool]:
        """Which layers attend through a sliding window.

        transformers 5 lists `layer_types`; older configs give a period n (`sliding_window_pattern`) where every
        n-th layer is global and the others slide; `default_period` is the family's period when neither is set.
        """
        types = self.config.get("layer_types")
        if isinstance(types, list) and len(types) == self.n_layer:
            return [t == "sliding_attention" for t in types]
        period = self.get_int("sliding_window_pattern", "_sliding_window_pattern", default=default_period)
        assert period is not None
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

    # -- model description (quantcli.models.spec) ------------------------------------------------------
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

    # -- GGUF keys of the family (the common hyperparameters are the GGUF plan's, from the spec) ----------
    def key(self, template: str) -> str:
        return template.format(arch=self.arch_name)

    def rope_scaling_metadata(self) -> list[MetaKV]:
        scaling = self.rope_scaling()
        kind = str(scaling.get("rope_type", scaling.get("type", "default"))).lower()
        if kind not in ("linear", "yarn"):
            return []
        factor = self.sub_float(scaling, "factor", "rope_scaling", positive=True)
        if kind == "linear" and factor:
            return [kv_str(self.key(Keys.Rope.SCALING_TYPE), "linear"),
                    kv_f32(self.key(Keys.Rope.SCALING_FACTOR), factor)]
        if kind == "yarn" and factor:
            out = [kv_str(self.key(Keys.Rope.SCALING_TYPE), "yarn"), kv_f32(self.key(Keys.Rope.SCALING_FACTOR), factor)]
            if scaling.get("original_max_position_embeddings"):
                orig = config_int(scaling["original_max_position_embeddings"], "rope_scaling.original_max_position_embeddings",
                                  self.config_source)
                out.append(kv_u32(self.key(Keys.Rope.SCALING_ORIG_CTX_LEN), orig))
            return out
        return []

    def extra_metadata(self) -> list[MetaKV]:
        return []

    # -- tensors ----------------------------------------------------------------------------------------
    def gguf_name(self, hf_name: str) -> str | None:
        return self.name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))

    def transform_for(self, gguf_name: str, hf_name: str, info: TensorInfo) -> Transform:
        return IDENTITY

    def extra_tensors(self, tensors: Mapping[str, TensorInfo]) -> list[TensorSpec]:
        return []

    def check_block_count(self, tensors: Mapping[str, TensorInfo]) -> None:
        """num_hidden_layers may not exceed the blocks the checkpoint holds (checked before anything is sized by
        it). Block indices are the numeric parts of tensor names; expert indices can only raise the bound."""
        indices = [int(m) for name in tensors for m in re.findall(r"\.(\d+)\.", name)]
        present = max(indices) + 1 if indices else 0
        if self.n_layer > present:
            raise InputError(f"{self.config_source}: num_hidden_layers is {self.n_layer} but the checkpoint's tensors "
                             f"hold {present} blocks.", hint="Fix num_hidden_layers in config.json (or re-download it).")

    def check_shapes(self, specs: list[TensorSpec]) -> None:
        """Tensor shapes must agree with config.json; a disagreement would write a GGUF llama.cpp cannot load.

        Only the tensors whose shape every family shares are checked: norms, the embedding's width, and the
        attention projections. A family that lays a tensor out differently overrides `expected_shapes`.
        """
        expected = self.expected_shapes()
        vocab = self.get_int("vocab_size")
        embedding = next((s for s in specs if s.name == "token_embd.weight"), None)
        if vocab is not None and embedding is not None and vocab > embedding.shape[0]:
            raise InputError(f"{self.config_source}: vocab_size is {vocab} but the token embedding "
                             f"{embedding.sources[0]!r} has {embedding.shape[0]} rows.",
                             hint="Fix vocab_size in config.json (or re-download the model).")
        for spec in specs:
            key = re.sub(r"^blk\.\d+\.", "blk.N.", spec.name)
            want = expected.get(key)
            if want is None:
                continue
            if len(want) != len(spec.shape) or any(w is not None and w != d for w, d in zip(want, spec.shape)):
                shown = [("*" if w is None else w) for w in want]
                raise InputError(f"{self.config_source} disagrees with tensor {spec.sources[0] if spec.sources else spec.name!r}: "
                                 f"its shape is {list(spec.shape)} but the config implies {shown}.",
                                 hint="config.json does not belong to these weights; fix it or re-download the model.")

    def expected_shapes(self) -> dict[str, tuple[int | None, ...]]:
        """GGUF tensor name (blocks as blk.N.) -> shape in numpy order; None is a dimension left unchecked."""
        n_embd, n_ff = self.need_int("hidden_size", "n_embd"), self.get_int("intermediate_size", "n_inner")
        q, kv = self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        return {
            "blk.N.ffn_down.weight": (n_embd, n_ff), "blk.N.ffn_gate.weight": (n_ff, n_embd),
            "token_embd.weight": (None, n_embd), "output_norm.weight": (n_embd,),
            "blk.N.attn_norm.weight": (n_embd,), "blk.N.ffn_norm.weight": (n_embd,),
            "blk.N.attn_q.weight": (q, n_embd), "blk.N.attn_k.weight": (kv, n_embd), "blk.N.attn_v.weight": (kv, n_embd),
            "blk.N.attn_output.weight": (n_embd, q),
            "blk.N.attn_q.bias": (q,), "blk.N.attn_k.bias": (kv,), "blk.N.attn_v.bias": (kv,),
        }


def tensor_order(spec: TensorSpec) -> tuple:
    """GGUF writing order: token embeddings first, then the blocks by index, then everything else by name."""
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
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        shown = "" if not names else f" (it is {names!r})"
        source = folder / "config.json" if folder is not None else "config.json"
        raise InputError(f"{source} has no 'architectures' list of names{shown}.",
                         hint="Add e.g. \"architectures\": [\"LlamaForCausalLM\"] or re-download config.json.")
    for name in names:
        if name in _REGISTRY:
            return _REGISTRY[name](config, folder)
    raise UnsupportedError(f"architecture {names[0]} is not supported.",
                           hint=f"Supported: {', '.join(sorted(_REGISTRY))}.")
