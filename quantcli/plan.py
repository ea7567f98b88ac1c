"""The conversion plan: every output tensor, its sources, transform, shape, type and size, from metadata alone.

Nothing here reads tensor data. `--dry-run` prints a Plan; the writer sizes the header from it; the disk
check compares its total with free space; the cache keys on its canonical form.

    plan = make_plan(SourceModel.open(Checkpoint.open(path)), QuantOptions(mix="Q4_K_M"))
    plan.tensors[0].name, plan.tensors[0].qtype.name, plan.total_bytes
    # -> ('token_embd.weight', 'Q6_K', 85214560)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from gguf import GGMLQuantizationType, Keys

from . import __version__
from .errors import InputError
from .io.checkpoint import Checkpoint
from .io.gguf_writer import TensorInfo as GGUFTensorInfo
from .io.gguf_writer import planned_size
from .models.base import Architecture, TensorSpec, adapter_for
from .models.metadata import MetaKV, check_text, kv_str, kv_u32
from .quant.mixes import MIXES, MixContext, MixOptions, MixTensor, choose_types

QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION: the block layouts we write
FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)


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
        # Encodes the whole metadata (the token list is large), so it is worked out once.
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


def mix_context(adapter: Architecture, has_imatrix: bool) -> MixContext:
    return MixContext(arch=adapter.arch_name, n_layer=adapter.n_layer, n_head=adapter.n_head,
                      n_head_kv=adapter.n_head_kv, n_expert=adapter.n_expert, has_imatrix=has_imatrix)


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
    """What every output of one checkpoint shares: its adapter, tensor specs and tokenizer metadata.

    Built once per run, so a recipe with several outputs maps names and parses the tokenizer once.
    """

    ckpt: Checkpoint
    adapter: Architecture
    specs: list[TensorSpec]
    _tokenizer: dict[str | None, list[MetaKV]] = field(default_factory=dict)

    @classmethod
    def open(cls, ckpt: Checkpoint) -> "SourceModel":
        adapter = adapter_for(ckpt.config, ckpt.path)
        # config.json is checked against the tensors present before anything is sized by it
        adapter.check_block_count(ckpt.tensors)
        specs = adapter.tensor_specs(ckpt.tensors)
        adapter.check_shapes(specs)
        for spec in specs:
            for src in spec.sources:
                if ckpt.tensors[src].dtype not in ("F32", "F16", "BF16", "F64"):
                    raise InputError(f"tensor {src!r} has dtype {ckpt.tensors[src].dtype}; weights must be F32, F16 or BF16.",
                                     hint="This looks like an already quantized checkpoint; convert the original weights.")
        return cls(ckpt, adapter, specs)

    def tokenizer(self, pre_tokenizer: str | None) -> list[MetaKV]:
        if pre_tokenizer not in self._tokenizer:
            from .models.tokenizer import tokenizer_metadata

            vocab_size = self.adapter.get_int("vocab_size", default=0) or 0
            self._tokenizer[pre_tokenizer] = tokenizer_metadata(self.ckpt.path, self.ckpt.config, vocab_size=vocab_size,
                                                                pre_tokenizer=pre_tokenizer)
        return self._tokenizer[pre_tokenizer]


def make_plan(source: SourceModel, options: QuantOptions, *, extra_metadata: list[MetaKV] | None = None) -> Plan:
    """Plan one output of `source` (a run shares one SourceModel among all its outputs)."""
    ckpt, adapter, specs = source.ckpt, source.adapter, source.specs
    mix = (options.mix or default_mix(ckpt)).upper()
    if mix not in MIXES:
        raise InputError(f"unknown type {mix!r}.", hint=f"Valid types: {', '.join(MIXES)}.")
    mix_tensors = [MixTensor(s.name, tuple(reversed(s.shape))) for s in specs]
    types = choose_types(mix, mix_tensors, mix_context(adapter, options.imatrix is not None), options.mix_options)
    metadata = general_metadata(adapter, ckpt, mix) + adapter.metadata() + source.tokenizer(options.pre_tokenizer)
    metadata += extra_metadata or []
    check_text(metadata, str(ckpt.path))
    tensors = tuple(TensorPlan(s, types[s.name], tuple(ckpt.tensors[x].dtype for x in s.sources)) for s in specs)
    return Plan(ckpt.path, adapter.arch_name, mix, tuple(metadata), tensors)
