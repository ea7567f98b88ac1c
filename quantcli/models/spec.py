"""A frozen, typed description of a model, built from config.json alone (plus the sentence-transformers files
beside it): hyperparameters, numerics and every tensor by layer, role, HF name and shape.

The architecture adapter (quantcli.models.families) is still the one place that knows a family; this module asks
it and writes the answers down in a form that needs no GGUF vocabulary. The engine reads only a ModelSpec.

    spec = model_spec(Path("SmolLM2-135M-Instruct"))
    spec.n_layer, spec.hidden, spec.rope.theta, spec.tensor("attn_q", 0).hf_name
    (30, 576, 100000.0, 'model.layers.0.self_attn.q_proj.weight')
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from ..errors import InputError, UnsupportedError
from .base import Architecture, Numerics, adapter_for
from .pooling import MODULES_FILE, sentence_transformers_pooling

# Defaults transformers applies when a llama3 / yarn rope block leaves a field out.
LLAMA3_DEFAULTS = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}
YARN_BETA_FAST, YARN_BETA_SLOW = 32.0, 1.0
ROPE_KINDS = ("default", "linear", "llama3", "yarn", "longrope")


@dataclass(frozen=True)
class RopeSpec:
    """Rotary embedding of one kind of layer, in HF's convention: the first `dims` values of each head are rotated
    as two halves (rotate_half); llama.cpp's interleaved layout is a GGUF matter and never appears here."""

    kind: str                              # one of ROPE_KINDS
    theta: float
    dims: int                              # rotated values per head (partial rotary: fewer than head_dim)
    factor: float = 1.0                    # linear / llama3 / yarn / longrope
    low_freq_factor: float = 1.0           # llama3
    high_freq_factor: float = 4.0          # llama3
    original_context: int = 0              # llama3 / yarn / longrope
    beta_fast: float = YARN_BETA_FAST      # yarn
    beta_slow: float = YARN_BETA_SLOW      # yarn
    truncate: bool = True                  # yarn
    attention_factor: float = 1.0          # scales cos and sin (yarn, longrope)
    long_factors: tuple[float, ...] = ()   # longrope: used when a sequence is longer than original_context
    short_factors: tuple[float, ...] = ()


@dataclass(frozen=True)
class ModelTensor:
    """One HF tensor: its block (None outside the blocks), its role, its canonical HF name and its shape."""

    layer: int | None
    role: str
    hf_name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    architecture: str                      # the config's HF class, e.g. "LlamaForCausalLM"
    family: str                            # the adapter's family name (GGUF arch name), e.g. "llama"
    numerics: Numerics
    n_layer: int
    hidden: int
    n_head: int
    n_head_kv: int
    head_dim: int
    ffn: int
    vocab: int
    n_ctx_train: int
    norm_eps: float
    rope: RopeSpec | None                  # None: learned absolute positions (bert)
    rope_local: RopeSpec | None            # sliding-window layers' rope when it differs (gemma3)
    attn_scale: float                      # multiplies q.k (1/sqrt(head_dim), gemma: 1/sqrt(query_pre_attn_scalar))
    attn_softcap: float | None             # scores -> cap * tanh(scores / cap) before the mask
    final_softcap: float | None            # the same on the logits
    sliding_window: int | None
    sliding_layers: tuple[bool, ...]       # per block: attends through sliding_window
    tied_embeddings: bool                  # the output head is the token embedding matrix
    n_token_types: int                     # bert's token-type rows (0 elsewhere)
    pooling: str | None                    # sentence-transformers pooling: "mean", "cls", "last" or None
    normalize: bool                        # sentence-transformers Normalize module after the pooling
    fused_qkv: bool
    fused_gate_up: bool
    post_norm_block: bool                  # bert's LayerNorm-after-residual blocks
    has_lm_head: bool                      # False for encoders and bare transformer classes (Qwen2Model)
    tensors: tuple[ModelTensor, ...]

    @property
    def is_encoder(self) -> bool:
        return not self.numerics.causal

    def tensor(self, role: str, layer: int | None = None) -> ModelTensor:
        for t in self.tensors:
            if t.role == role and t.layer == layer:
                return t
        raise KeyError(f"{self.family} has no tensor {role!r} in layer {layer}")

    def has(self, role: str, layer: int | None = None) -> bool:
        return any(t.role == role and t.layer == layer for t in self.tensors)

    def block(self, layer: int) -> dict[str, ModelTensor]:
        return {t.role: t for t in self.tensors if t.layer == layer}

    def output_tensor(self) -> ModelTensor | None:
        """The LM head's weight (the embedding's when tied); None for an encoder without a head."""
        if not self.has_lm_head:
            return None
        return self.tensor("tok_embd") if self.tied_embeddings else self.tensor("output")


def _rope(adapter: Architecture, head_dim: int, n_ctx: int) -> RopeSpec:
    scaling = adapter.rope_scaling()
    kind = str(scaling.get("rope_type", scaling.get("type", "default")) or "default").lower()
    kind = {"su": "longrope"}.get(kind, kind)
    if kind not in ROPE_KINDS:
        raise UnsupportedError(f"rope scaling {kind!r} is not supported by quantcli's engine.",
                               hint=f"Supported: {', '.join(ROPE_KINDS)}.")
    theta = adapter.rope_theta()
    theta = 10000.0 if theta is None else theta
    partial = float(scaling.get("partial_rotary_factor", adapter.get("partial_rotary_factor", default=1.0)))  # type: ignore[arg-type]
    # transformers takes the rotary width from head_dim (phi3's own code: hidden / heads, the same for phi3)
    dims = int(head_dim * partial)
    if dims % 2 or dims > head_dim or dims <= 0:
        raise InputError(f"partial_rotary_factor {partial} gives {dims} rotary dimensions of a {head_dim}-wide head.",
                         hint="It must give an even number of dimensions, at most the head size.")
    original = int(scaling.get("original_max_position_embeddings")  # type: ignore[call-overload]
                   or adapter.get("original_max_position_embeddings", default=0) or 0)
    factor = float(scaling.get("factor") or 1.0)
    if kind == "default":
        return RopeSpec("default", theta, dims)
    if kind == "linear":
        return RopeSpec("linear", theta, dims, factor=factor)
    if kind == "llama3":
        p = {k: scaling.get(k) if scaling.get(k) is not None else v for k, v in LLAMA3_DEFAULTS.items()}
        return RopeSpec("llama3", theta, dims, factor=float(p["factor"]), low_freq_factor=float(p["low_freq_factor"]),
                        high_freq_factor=float(p["high_freq_factor"]),
                        original_context=int(p["original_max_position_embeddings"]))
    if kind == "yarn":
        if not original:
            raise InputError("yarn rope scaling needs original_max_position_embeddings.", hint="Add it to rope_scaling.")
        if not scaling.get("factor"):
            factor = n_ctx / original
        attn = scaling.get("attention_factor")
        if attn is None:
            mscale, mscale_all = scaling.get("mscale"), scaling.get("mscale_all_dim")

            def get_mscale(scale: float, m: float = 1.0) -> float:
                return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
            attn = (get_mscale(factor, float(mscale)) / get_mscale(factor, float(mscale_all))  # type: ignore[arg-type]
                    if mscale and mscale_all else get_mscale(factor))
        return RopeSpec("yarn", theta, dims, factor=factor, original_context=original,
                        beta_fast=float(scaling.get("beta_fast") or YARN_BETA_FAST),
                        beta_slow=float(scaling.get("beta_slow") or YARN_BETA_SLOW),
                        truncate=bool(scaling.get("truncate", True)), attention_factor=float(attn))
    # longrope (phi3's 128k models)
    long, short = scaling.get("long_factor"), scaling.get("short_factor")
    if not long or not short or len(long) != dims // 2 or len(short) != dims // 2:
        raise InputError(f"longrope needs long_factor and short_factor of {dims // 2} values each.",
                         hint="Check config.json's rope_scaling against the model's head size.")
    original = original or n_ctx
    factor = float(scaling.get("factor") or n_ctx / original)
    attn = scaling.get("attention_factor")
    if attn is None:
        attn = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return RopeSpec("longrope", theta, dims, factor=factor, original_context=original, attention_factor=float(attn),
                    long_factors=tuple(float(x) for x in long), short_factors=tuple(float(x) for x in short))


def _sentence_transformers(folder: Path | None) -> tuple[str | None, bool]:
    """(pooling, normalize) of a sentence-transformers folder; (None, False) for a plain checkpoint."""
    pooling = sentence_transformers_pooling(folder)
    if pooling is None or folder is None:
        return None, False
    modules = json.loads((folder / MODULES_FILE).read_text(encoding="utf-8"))
    normalize = any(isinstance(m, dict) and str(m.get("type", "")).endswith("Normalize") for m in modules)
    return {1: "mean", 2: "cls", 3: "last"}[int(pooling)], normalize


def _tensors(adapter: Architecture, *, hidden: int, n_head: int, n_head_kv: int, head_dim: int, ffn: int,
             vocab: int, n_ctx: int, n_types: int, tied: bool, head: bool) -> tuple[ModelTensor, ...]:
    layout = adapter.hf_layout
    numerics = adapter.numerics
    qkv_bias, out_bias = adapter.attention_biases()
    ffn_bias = adapter.ffn_bias()
    q_rows, kv_rows = n_head * head_dim, n_head_kv * head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "attn_norm": (hidden,), "ffn_norm": (hidden,), "post_attn_norm": (hidden,), "post_ffn_norm": (hidden,),
        "attn_out_norm": (hidden,), "attn_out_norm_bias": (hidden,),
        "layer_out_norm": (hidden,), "layer_out_norm_bias": (hidden,),
        "attn_q": (q_rows, hidden), "attn_k": (kv_rows, hidden), "attn_v": (kv_rows, hidden),
        "attn_q_bias": (q_rows,), "attn_k_bias": (kv_rows,), "attn_v_bias": (kv_rows,),
        "attn_qkv": (q_rows + 2 * kv_rows, hidden),
        "attn_out": (hidden, q_rows), "attn_out_bias": (hidden,),
        "attn_q_norm": (head_dim,), "attn_k_norm": (head_dim,),
        "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden), "ffn_gate_up": (2 * ffn, hidden),
        "ffn_gate_bias": (ffn,), "ffn_up_bias": (ffn,), "ffn_down": (hidden, ffn), "ffn_down_bias": (hidden,),
    }

    def present(role: str) -> bool:
        if role in ("attn_q_bias", "attn_k_bias", "attn_v_bias"):
            return qkv_bias
        if role == "attn_out_bias":
            return out_bias
        if role in ("ffn_gate_bias", "ffn_up_bias", "ffn_down_bias"):
            return ffn_bias and (role != "ffn_gate_bias" or numerics.gated_ffn)
        if role in ("attn_q_norm", "attn_k_norm"):
            return numerics.qk_norm
        if role in ("post_attn_norm", "post_ffn_norm"):
            return numerics.post_norms
        if role == "ffn_gate":
            return numerics.gated_ffn
        return True

    global_shapes = {"tok_embd": (vocab, hidden), "output_norm": (hidden,), "output": (vocab, hidden),
                     "pos_embd": (n_ctx, hidden), "type_embd": (n_types, hidden), "embd_norm": (hidden,),
                     "embd_norm_bias": (hidden,)}
    out = []
    for role, name in layout.globals.items():
        if role == "output" and (tied or not head):
            continue
        out.append(ModelTensor(None, role, name, global_shapes[role]))
    for i in range(adapter.n_layer):
        for role, template in layout.block.items():
            if present(role):
                out.append(ModelTensor(i, role, template.format(i=i), shapes[role]))
    return tuple(out)


def spec_from_config(config: Mapping, folder: Path | None = None) -> ModelSpec:
    """The ModelSpec of a parsed config.json; `folder` (optional) supplies the sentence-transformers pooling."""
    return spec_from_adapter(adapter_for(config, folder))


def spec_from_adapter(adapter: Architecture) -> ModelSpec:
    """The ModelSpec of a config the adapter already holds (the GGUF plan makes the adapter first, to check the
    block count against the checkpoint before anything is sized by num_hidden_layers)."""
    folder = adapter.folder
    cfg = adapter.config
    numerics = adapter.numerics
    hidden = adapter.need_int("hidden_size", "n_embd")
    n_head, n_head_kv, head_dim = adapter.n_head, adapter.n_head_kv, adapter.head_dim
    if n_head <= 0 or n_head_kv <= 0 or n_head % n_head_kv:
        raise InputError(f"{n_head} attention heads cannot be shared by {n_head_kv} key/value heads.",
                         hint="num_attention_heads must be a positive multiple of num_key_value_heads.")
    n_ctx = adapter.need_int("max_position_embeddings", "n_positions", "n_ctx")
    vocab = adapter.need_int("vocab_size")
    ffn = adapter.need_int("intermediate_size", "n_inner")
    eps_keys = ("layer_norm_eps", "layer_norm_epsilon") if numerics.norm == "layer" else ("rms_norm_eps",)
    norm_eps = adapter.need_float(*eps_keys, positive=True)
    rope = rope_local = None
    if numerics.rope != "none":
        rope = _rope(adapter, head_dim, n_ctx)
        local_theta = adapter.rope_theta_swa()
        if local_theta is not None:
            rope_local = RopeSpec("default", local_theta, rope.dims)
    scalar = adapter.get("query_pre_attn_scalar")
    attn_scale = float(scalar) ** -0.5 if scalar is not None else head_dim ** -0.5  # type: ignore[arg-type]
    sliding = tuple(adapter.attention_window_layers())
    window = adapter.get("sliding_window")
    if any(sliding) and window is None:
        raise InputError("config.json marks sliding-window layers but gives no sliding_window.",
                         hint="Add sliding_window (the window size in tokens) to config.json.")
    if not any(sliding):
        window = None
    tied = bool(adapter.get("tie_word_embeddings", default=adapter.tied_by_default))
    n_types = int(cfg.get("type_vocab_size") or 0) if numerics.rope == "none" else 0
    pooling, normalize = _sentence_transformers(folder)
    attn_cap, final_cap = cfg.get("attn_logit_softcapping"), cfg.get("final_logit_softcapping")
    architecture = str((cfg.get("architectures") or [""])[0])
    head = numerics.causal and architecture not in adapter.headless
    return ModelSpec(
        architecture=architecture, family=adapter.arch_name, numerics=numerics,
        n_layer=adapter.n_layer, hidden=hidden, n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim, ffn=ffn,
        vocab=vocab, n_ctx_train=n_ctx, norm_eps=norm_eps, rope=rope, rope_local=rope_local, attn_scale=attn_scale,
        attn_softcap=float(attn_cap) if attn_cap else None, final_softcap=float(final_cap) if final_cap else None,
        sliding_window=int(window) if window is not None else None, sliding_layers=sliding,  # type: ignore[call-overload]
        tied_embeddings=tied, n_token_types=n_types, pooling=pooling, normalize=normalize,
        fused_qkv=adapter.hf_layout.fused_qkv, fused_gate_up=adapter.hf_layout.fused_gate_up,
        post_norm_block=adapter.hf_layout.post_norm_block, has_lm_head=head,
        tensors=_tensors(adapter, hidden=hidden, n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim, ffn=ffn,
                         vocab=vocab, n_ctx=n_ctx, n_types=n_types, tied=tied, head=head))


def model_spec(folder: Path) -> ModelSpec:
    """The ModelSpec of an HF model folder, from its config.json (and sentence-transformers files) only."""
    folder = Path(folder)
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{folder} has no config.json.", hint="Point at a Hugging Face model folder.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}).", hint="Fix or re-download config.json.") from exc
    if not isinstance(config, dict):
        raise InputError(f"{path} must hold a JSON object.", hint="Fix or re-download config.json.")
    return spec_from_config(config, folder)


def checkpoint_names(adapter: Architecture, spec: ModelSpec, present: Iterable[str]) -> dict[str, str]:
    """Canonical HF name of every tensor in `spec` -> the checkpoint's own name for it.

    Task-head and multimodal classes prefix the names (`bert.`, `language_model.`), old BERT checkpoints say
    gamma/beta, a headless Qwen2Model drops `model.`; the adapter's name map already knows every spelling, so a
    tensor is matched through the name both spellings map to. A tensor the config implies but the checkpoint
    lacks is an InputError.
    """
    present = set(present)
    by_gguf: dict[str, str] = {}
    for name in sorted(present):
        g = adapter.gguf_name(name)
        if g is not None:
            by_gguf.setdefault(g, name)
    out: dict[str, str] = {}
    for t in spec.tensors:
        if t.hf_name in present:
            out[t.hf_name] = t.hf_name
            continue
        g = adapter.gguf_name(t.hf_name)
        if g is None or g not in by_gguf:
            where = f"block {t.layer}" if t.layer is not None else "outside the blocks"
            raise InputError(f"the checkpoint has no tensor {t.hf_name!r} ({t.role}, {where}), which config.json "
                             "implies.", hint="The folder's weights and config.json do not match; re-download the model.")
        out[t.hf_name] = by_gguf[g]
    return out
