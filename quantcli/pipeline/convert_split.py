"""convert --method splitquant: source -> plan (the same Linear selection as the integer folders) -> split and
quantize each Linear (one read) -> a dense HF folder, or with --splitquant-branches the three-branch folder.

    result = convert_split(SplitConvertRequest(model="./SmolLM2-135M-Instruct"))
    result.path, result.branches       # (PosixPath('SmolLM2-135M-Instruct-splitquant'), False)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError
from ..io.checkpoint import Checkpoint
from ..io.int_scheme import IntScheme, scheme_named
from ..plan.safetensors import IntOptions, IntPlan, ModulePlan, make_int_plan

# The branches are INT4 (the paper's setting); the schemes say symmetric or not. 8-bit gains little from a split.
SPLIT_SCHEMES = ("W4A16", "W4A16_ASYM")

DENSE_CARD = """# {name} (SplitQuantV2, dense)

Made by `quantcli convert --method splitquant --scheme {scheme}` from `{source}`.

Each Linear layer was split by a 1-D k-means (k = 3) into lower, middle and upper clusters; each masked copy was
quantized to INT{bits} ({groups}, {sym}) with its own scales, and the sum of the three dequantized copies
replaced the weight. This folder stores that sum **dense, in the source dtype**: it is an ordinary checkpoint
with no `quantization_config`, it loads everywhere the source loads, and it is **as large as the source**. It
carries the accuracy of SplitQuantV2, not its memory saving. The three-branch INT4 form (smaller, run by
quantcli's engine only) is written with `--splitquant-branches`; see quantcli's docs/splitquant.md.
"""

BRANCH_CARD = """# {name} (SplitQuantV2, three branches)

Made by `quantcli convert --method splitquant --splitquant-branches --scheme {scheme}` from `{source}`.

Each Linear layer is stored as three INT{bits} branches ({groups}, {sym}) plus 2-bit cluster ids, in
`splitquant.safetensors` (layout: quantcli's formats/splitquant.md). **No stock loader runs this layout**
(transformers, vLLM and llama.cpp do not know it); quantcli's engine does
(`quantcli.engine.split_weights.SplitWeights`). For a folder every loader reads, convert without
`--splitquant-branches` (the dense sum).
"""


@dataclass(frozen=True)
class SplitConvertRequest:
    model: str
    scheme: str | None = None           # W4A16 (default) or W4A16_ASYM
    group_size: int = -1                # -1: per channel (the paper's); 0 also per channel; 32/64/128 groups
    symmetric: bool | None = None
    ignore: tuple[str, ...] = ()
    branches: bool = False              # write the three-branch layout instead of the dense sum
    output: Path | None = None
    threads: int = 0
    dry_run: bool = False
    max_shard_bytes: int | None = 5 * 10**9


@dataclass
class SplitConvertResult:
    source: Path
    path: Path
    plan: IntPlan
    branches: bool
    seconds: float = 0.0
    # what the stage runner adds, as for the integer folders (pipeline/convert_int.IntConvertResult)
    files: dict[str, str] = field(default_factory=dict)
    sha256: str | None = None
    cached: bool = False
    model_verify: dict[str, Any] | None = None
    report: None = None                 # no folder check: the dense sum has no quantization_config to check
    calibration: None = None
    method_options: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "splitquant-branches" if self.branches else "splitquant"

    @property
    def format(self) -> str:
        return "splitquant-branches" if self.branches else "dense"

    @property
    def method(self) -> str:
        return "splitquant"


def resolve_split_scheme(request: SplitConvertRequest) -> IntScheme:
    name = (request.scheme or "W4A16").upper()
    if name not in SPLIT_SCHEMES:
        raise InputError(f"--method splitquant quantizes its branches to INT4; --scheme {request.scheme} does not apply.",
                         hint=f"Use --scheme {' or '.join(SPLIT_SCHEMES)}.")
    return scheme_named(name).with_options(group_size=0 if request.group_size == -1 else request.group_size,
                                           symmetric=request.symmetric)


def default_output(source: Path, branches: bool) -> Path:
    return Path(".") / f"{source.resolve().name}-splitquant{'-branches' if branches else ''}"


def card(source: Path, out: Path, scheme: IntScheme, branches: bool) -> str:
    text = BRANCH_CARD if branches else DENSE_CARD
    return text.format(name=out.name, source=source.name, scheme=scheme.name, bits=scheme.bits,
                       groups="per channel" if scheme.group_size is None else f"groups of {scheme.group_size}",
                       sym="symmetric" if scheme.symmetric else "asymmetric")


def check_split_options(*, method: str, format: str, bits: int | None, gguf_options: bool) -> None:
    """Refuse flags that do not apply to --method splitquant (before anything is read)."""
    if method.lower() != "splitquant":
        raise InputError("--splitquant-branches applies to --method splitquant.",
                         hint="Add --method splitquant, or drop --splitquant-branches.")
    if format.lower() != "gguf" or gguf_options:
        raise InputError("--method splitquant writes its own folder (dense, or --splitquant-branches); --format and "
                         "the GGUF options do not apply.", hint="Drop --format/--type/--recipe/--imatrix/--calibrate.")
    if bits not in (None, 4):
        raise InputError(f"--method splitquant quantizes its branches to 4 bits; --bits {bits} does not apply.",
                         hint="Drop --bits.")


def describe_split(result: SplitConvertResult, dry_run: bool) -> list[str]:
    """What the CLI prints: the folder, and plainly what kind of folder it is."""
    split = [m for m in result.plan.modules if m.quantized]
    if dry_run:
        return [f"{m.source}  {'x'.join(map(str, m.shape))}  {m.dtype} -> "
                f"{'split into 3 INT4 branches' if m.quantized else 'kept'}" for m in result.plan.modules] + \
               [f"{len(split)} of {len(result.plan.modules)} tensors split; ignore: {', '.join(result.plan.ignore)}"]
    size = sum(p.stat().st_size for p in result.path.iterdir() if p.is_file())
    gb = f"{size / 1e6:.1f} MB"
    verb = "cached" if result.cached else "wrote"     # a cache hit was re-hashed, not written
    if result.branches:
        return [f"{verb} {result.path}/ (SplitQuantV2 three-branch layout, {len(split)} Linear weights, {gb})",
                "  only quantcli's engine runs this layout (formats/splitquant.md); transformers/vLLM/llama.cpp do not"]
    return [f"{verb} {result.path}/ (SplitQuantV2 dense sum, {len(split)} Linear weights, {gb})",
            "  a plain checkpoint in the source dtype with no quantization_config: every loader reads it, and it is "
            "as large as the source (the three-branch INT4 form: --splitquant-branches)"]


@dataclass
class SplitJob:
    """A SplitQuantV2 folder output as the stage runner carries it (the integer folders' FolderJob has the same
    shape): planned, then packed; it has no calibration and no folder check."""

    request: SplitConvertRequest
    result: SplitConvertResult
    scheme: IntScheme
    calibrated: bool = False

    @property
    def options(self) -> dict[str, Any]:
        """What tells this output's cache key from an integer folder's with the same plan."""
        return {"splitquant": True, "branches": self.request.branches}

    def write(self, ckpt: Checkpoint, threads: int, progress: Callable[[ModulePlan], None] | None = None,
              on_block: Callable[[int, int], None] | None = None) -> None:
        from ..stages.pack_split import splitquant_dense, write_branch_folder, write_dense_folder

        plan, out, source = self.result.plan, self.result.path, self.result.source
        text = card(source, out, self.scheme, self.request.branches)
        if self.request.branches:
            write_branch_folder(plan, ckpt, out, threads=threads, card=text, progress=progress)
            return
        from ..quant.backend import get_backend
        from ..stages.pack_safetensors import scale_dtype

        # scales in the source dtype (as the integer folders store them), so the sum is what the branches give
        dtypes = {scale_dtype(m) for m in plan.modules if m.quantized}
        sdtype = "F32" if len(dtypes) > 1 else dtypes.pop()
        write_dense_folder(plan, ckpt, out, splitquant_dense(self.scheme, sdtype, get_backend(), threads), card=text,
                           progress=progress)

    def check(self) -> None:
        """Nothing to check: the dense sum is a plain checkpoint, the branches a layout only quantcli reads."""
        return None


def plan_split(request: SplitConvertRequest, source: Path, ckpt: Checkpoint) -> SplitJob:
    """Plan one SplitQuantV2 folder from the opened checkpoint (metadata only) and place it."""
    scheme = resolve_split_scheme(request)
    plan = make_int_plan(ckpt, IntOptions(scheme=scheme, method="minmax", ignore=request.ignore,
                                          max_shard_bytes=request.max_shard_bytes))
    out = request.output if request.output is not None else default_output(source, request.branches)
    if out.suffix in (".gguf", ".safetensors"):
        raise InputError(f"-o {out} names a file, but --method splitquant writes a folder.",
                         hint="Give a folder name with -o, e.g. -o model-splitquant/.")
    if out.resolve() == source.resolve():
        raise InputError(f"-o {out} is the source folder.", hint="Write the converted model to another folder.")
    return SplitJob(request, SplitConvertResult(source, out, plan, request.branches), scheme)


def split_request(request: SplitConvertRequest, *, force: bool = False) -> Any:
    """The runner's request for one SplitQuantV2 folder (pipeline/convert.ConvertRequest)."""
    from ..recipe.schema import Recipe
    from .convert import ConvertRequest

    return ConvertRequest(model=request.model, recipe=Recipe(name="splitquant", source="<command line>"),
                          threads=request.threads, dry_run=request.dry_run, verify="none", force=force,
                          folders=(request,))


def convert_split(request: SplitConvertRequest, progress: Callable[[ModulePlan], None] | None = None) -> SplitConvertResult:
    """One SplitQuantV2 folder through the stage runner (pipeline/runner.py), without the cache or a manifest."""
    from .runner import RunHooks, run_convert

    resolve_split_scheme(request)
    return run_convert(split_request(request), RunHooks(folder_progress=progress)).folders[0]
