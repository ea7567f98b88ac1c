"""convert: source -> plan -> quantize+pack -> verify, for every output of a recipe, from one read of the source.

    >>> result = convert(ConvertRequest(model="./SmolLM2-135M-Instruct", recipe=recipe_from_type("Q8_0"),
    ...                                 output=Path("out/")))
    >>> result.outputs[0].path
    PosixPath('out/SmolLM2-135M-Instruct-Q8_0.gguf')
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gguf import GGMLQuantizationType

from ..errors import InputError, VerifyError
from ..io.checkpoint import Checkpoint
from ..plan import Plan, QuantOptions, TensorPlan, make_plan
from ..quant.mixes import MixOptions
from ..recipe.schema import OutputSpec, Recipe, VerifySpec

VERIFY_LEVELS = ("none", "structure", "full")


@dataclass(frozen=True)
class ConvertRequest:
    model: str
    recipe: Recipe
    output: Path | None = None          # a file (one output) or a folder; default: the current folder
    threads: int = 0                    # 0: all cores
    dry_run: bool = False
    verify: str = "structure"
    imatrix: Path | None = None


@dataclass
class OutputResult:
    path: Path
    type: str
    plan: Plan
    verify: dict | None = None
    seconds: float = 0.0


@dataclass
class ConvertResult:
    source: Path
    arch: str
    outputs: list[OutputResult] = field(default_factory=list)
    seconds: float = 0.0


def recipe_from_type(mix: str | None, *, output_tensor_type: str | None = None, token_embedding_type: str | None = None,
                     pure: bool = False, tensor_types: tuple[tuple[str, str], ...] = (),
                     pre_tokenizer: str | None = None, file: str | None = None) -> Recipe | None:
    """The one-output recipe that command-line flags describe; None when no type was given (the default)."""
    spec = OutputSpec(type=(mix or "AUTO").upper(), output_tensor_type=output_tensor_type,
                      token_embedding_type=token_embedding_type, pure=pure, tensor_types=tensor_types,
                      pre_tokenizer=pre_tokenizer, **({"file": file} if file else {}))
    return Recipe(name=(mix or "auto").lower(), outputs=(spec,), source="<command line>")


def parse_tensor_type(arg: str) -> tuple[str, str]:
    """`attn_v=Q8_0` -> ("attn_v", "Q8_0"), as llama-quantize's --tensor-type takes it."""
    pattern, sep, qtype = arg.rpartition("=")
    if not sep or not pattern or not qtype:
        raise InputError(f"--tensor-type {arg!r} is not PATTERN=TYPE.", hint="Example: --tensor-type 'attn_v=Q8_0'.")
    if qtype.upper() not in GGMLQuantizationType.__members__:
        raise InputError(f"--tensor-type {arg!r}: {qtype!r} is not a ggml type.", hint="Example: --tensor-type 'attn_v=Q8_0'.")
    return pattern, qtype.upper()


def _ggml(name: str | None) -> GGMLQuantizationType | None:
    return None if name is None else GGMLQuantizationType[name.upper()]


def quant_options(spec: OutputSpec, imatrix: Path | None) -> QuantOptions:
    mix_options = MixOptions(output_tensor_type=_ggml(spec.output_tensor_type),
                             token_embedding_type=_ggml(spec.token_embedding_type), pure=spec.pure,
                             tensor_types=tuple((p, GGMLQuantizationType[t]) for p, t in spec.tensor_types))
    return QuantOptions(mix=None if spec.type == "AUTO" else spec.type, mix_options=mix_options,
                        pre_tokenizer=spec.pre_tokenizer, imatrix=imatrix)


def resolve_source(model: str) -> Path:
    """A local folder as is; anything else must be a hub id, fetched (or found in the hub cache) by download."""
    path = Path(model).expanduser()
    if path.exists():
        return path
    if model.count("/") == 1 and not model.startswith((".", "/")):
        from ..stages.download import download

        return download(model).path
    raise InputError(f"{model} is neither a local folder nor a hub id (org/name).",
                     hint="Pass the path of a Hugging Face model folder or a hub id like HuggingFaceTB/SmolLM2-135M-Instruct.")


def output_paths(request: ConvertRequest, ckpt: Checkpoint, plans: list[Plan]) -> list[Path]:
    model_name = ckpt.path.resolve().name
    out = request.output
    specs = request.recipe.outputs
    if out is not None and (out.suffix == ".gguf") and not out.is_dir():
        if len(plans) != 1:
            raise InputError(f"-o {out} names one file but the recipe has {len(plans)} outputs.",
                             hint="Give a folder with -o, or a recipe with one output.")
        return [out]
    folder = out if out is not None else Path(".")
    return [folder / spec.filename(model_name, request.recipe.name).replace("AUTO", plan.mix)
            for spec, plan in zip(specs, plans)]


def convert(request: ConvertRequest, progress: Callable[[TensorPlan, int], None] | None = None,
            on_plan: Callable[[list[tuple[Plan, Path]]], None] | None = None) -> ConvertResult:
    from ..quant.imatrix import load_imatrix
    from ..stages.quantize import write_ggufs
    from ..stages.verify import verify_file

    if request.verify not in VERIFY_LEVELS:
        raise InputError(f"--verify {request.verify!r} is not a level.", hint=f"Use one of: {', '.join(VERIFY_LEVELS)}.")
    started = time.perf_counter()
    source = resolve_source(request.model)
    ckpt = Checkpoint.open(source)
    imatrix = load_imatrix(request.imatrix) if request.imatrix else None
    plans = [make_plan(ckpt, quant_options(spec, request.imatrix), extra_metadata=imatrix.metadata() if imatrix else None)
             for spec in request.recipe.outputs]
    paths = output_paths(request, ckpt, plans)
    result = ConvertResult(source, plans[0].arch)
    pairs = list(zip(plans, paths))
    if on_plan is not None:
        on_plan(pairs)
    if request.dry_run:
        result.outputs = [OutputResult(p, plan.mix, plan) for plan, p in pairs]
        return result
    threads = request.threads or os.cpu_count() or 1
    write_ggufs(pairs, ckpt, threads=threads, imatrix=imatrix.weights if imatrix else None, progress=progress)
    for plan, path in pairs:
        entry = OutputResult(path, plan.mix, plan)
        if request.verify != "none":
            v = request.recipe.verify
            report = verify_file(path, source if request.verify == "full" else None,
                                 min_snr_db=v.min_snr_db, max_rmse=v.max_rmse)
            entry.verify = report.to_json()
            if not report.ok:
                raise VerifyError(f"{path} failed verification: " + "; ".join(
                    report.problems[:3] + [f"{t.name} SNR {t.snr_db:.1f} dB < {t.min_snr_db}" for t in report.tensors if not t.ok][:3]),
                    hint="Run `quantcli verify` on it for the full table.")
        result.outputs.append(entry)
    result.seconds = time.perf_counter() - started
    return result
