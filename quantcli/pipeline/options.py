"""Which `convert` options go with which output format and method: the one place that says so.

The command line gives every flag at once; `request_from_flags` sorts them into the request of the path they
belong to, refusing a combination that does not fit (a GGUF option with a folder format, a folder option with a
GGUF type, --recipe with the flags a recipe holds) with the message a user sees. The finer checks of each path
stay with it: a folder format's scheme, bits and method in pipeline/convert_int.py (resolve_scheme,
resolve_method), GPTQ on GGUF in pipeline/convert.py (check_method), SplitQuantV2 in pipeline/convert_split.py.

    flags = ConvertFlags(model="./m", format="compressed-tensors", scheme="W4A16")
    request_from_flags(flags).folders[0].scheme
    # -> 'W4A16'   (a ConvertRequest whose folders hold the one folder output)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    from .convert import ConvertRequest

GGUF = "gguf"


@dataclass(frozen=True)
class ConvertFlags:
    """Every option of `quantcli convert`, as given (None / False / empty: not given)."""

    model: str
    output: Path | None = None
    type: str | None = None
    recipe: str | None = None
    tensor_type: tuple[str, ...] = ()
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    pure: bool = False
    imatrix: Path | None = None
    calibrate: str | None = None
    pre_tokenizer: str | None = None
    dry_run: bool = False
    verify: str = "structure"
    format: str = GGUF
    scheme: str | None = None
    method: str = "minmax"
    bits: int | None = None
    group_size: int | None = None
    sym: bool | None = None
    ignore: tuple[str, ...] = ()
    splitquant_branches: bool = False
    double_quant: bool = True
    ctx: int | None = None
    chunks: int | None = None
    damp: float | None = None
    act_order: bool = False
    method_option: tuple[str, ...] = ()
    threads: int = 0
    force: bool = False
    publish: str | None = None             # --publish REPO: upload the outputs when every stage passed
    publish_private: bool | None = None    # --publish-private/--publish-public

    def gguf_options(self) -> bool:
        """Whether any option that only GGUF output takes was given."""
        return any((self.recipe, self.type, self.tensor_type, self.output_tensor_type, self.token_embedding_type,
                    self.pre_tokenizer, self.pure, self.imatrix))

    def folder_options(self) -> bool:
        """Whether any option that only folder formats take was given (GGUF takes --method gptq alone)."""
        return bool(self.scheme or self.bits is not None or self.group_size is not None or self.sym is not None
                    or self.ignore or self.method.lower() not in ("minmax", "gptq") or not self.double_quant
                    or self.ctx is not None or self.chunks is not None or self.damp is not None or self.act_order
                    or self.method_option)


def request_from_flags(flags: ConvertFlags) -> ConvertRequest:
    """The request the flags describe, for the stage runner: SplitQuantV2's own folder, one folder format, or GGUF
    outputs (a type or a recipe, which may list folder outputs too). Refuses flags that do not go together, before anything is read."""
    method = flags.method.lower()
    if method == "splitquant" or flags.splitquant_branches:
        request = _split_request(flags)
    elif flags.format.lower() != GGUF:
        request = _folder_request(flags)
    else:
        request = _gguf_request(flags)
    return _with_publish(request, flags)


def _with_publish(request: ConvertRequest, flags: ConvertFlags) -> ConvertRequest:
    """--publish REPO (with --publish-private/--public) becomes the request's publish stage; the recipe's
    publish section fills what the flags leave out (pipeline/publish_stage.check_publish)."""
    from dataclasses import replace

    from .publish_stage import PublishRequest

    if flags.publish is None:
        if flags.publish_private is not None and not request.recipe.publish.on_convert:
            raise InputError("--publish-private/--publish-public set the visibility of the repo --publish creates.",
                             hint="Add --publish you/model-GGUF, or drop the flag.")
        return request if flags.publish_private is None else replace(
            request, publish=PublishRequest(private=flags.publish_private))
    return replace(request, publish=PublishRequest(repo=flags.publish, private=flags.publish_private))


def _split_request(flags: ConvertFlags) -> ConvertRequest:
    from .convert_split import SplitConvertRequest, check_split_options, split_request

    check_split_options(method=flags.method, format=flags.format, bits=flags.bits,
                        gguf_options=flags.gguf_options() or flags.calibrate is not None)
    return split_request(SplitConvertRequest(model=flags.model, scheme=flags.scheme,
                                             group_size=-1 if flags.group_size is None else flags.group_size,
                                             symmetric=flags.sym, ignore=flags.ignore,
                                             branches=flags.splitquant_branches, output=flags.output,
                                             threads=flags.threads, dry_run=flags.dry_run), force=flags.force)


def _folder_request(flags: ConvertFlags) -> ConvertRequest:
    from .convert import ConvertRequest
    from .convert_int import IntConvertRequest, gathered_method_options
    from .runner import folder_recipe

    if flags.gguf_options():
        raise InputError(f"--format {flags.format} takes --scheme/--method/--bits/--group-size/--sym/--ignore, "
                         "not the GGUF options (--type, --recipe, --tensor-type, --imatrix, ...).",
                         hint="Drop the GGUF options, or use --format gguf.")
    options = gathered_method_options(flags.method_option, damp=flags.damp, act_order=flags.act_order or None)
    folder = IntConvertRequest(model=flags.model, format=flags.format.lower(), scheme=flags.scheme,
                               method=flags.method.lower(), bits=flags.bits,
                               group_size=-1 if flags.group_size is None else flags.group_size, symmetric=flags.sym,
                               ignore=flags.ignore, output=flags.output, threads=flags.threads, dry_run=flags.dry_run,
                               verify=flags.verify, double_quant=flags.double_quant, calibrate=flags.calibrate,
                               ctx=flags.ctx, chunks=flags.chunks, method_options=options)
    return ConvertRequest(model=flags.model, recipe=folder_recipe(folder), threads=flags.threads,
                          dry_run=flags.dry_run, verify=flags.verify, force=flags.force, folders=(folder,))


def _gguf_request(flags: ConvertFlags) -> ConvertRequest:
    from ..recipe import resolve_recipe
    from .convert import ConvertRequest, parse_tensor_type, recipe_from_type

    method = flags.method.lower()
    if flags.folder_options():
        raise InputError("--scheme/--method/--bits/--group-size/--sym/--asym/--ignore/--ctx/--chunks/--damp/"
                         "--act-order/--method-option apply to folder formats (GGUF takes --method gptq alone).",
                         hint="Add --format compressed-tensors, or use --type for GGUF.")
    if flags.recipe and (flags.type or flags.tensor_type or flags.output_tensor_type or flags.token_embedding_type
                         or flags.pre_tokenizer or flags.pure):
        raise InputError("--recipe cannot be combined with --type/--tensor-type/--output-tensor-type/"
                         "--token-embedding-type/--pure/--pre-tokenizer.",
                         hint="Put those settings in the recipe, or drop --recipe.")
    recipe = resolve_recipe(flags.recipe) if flags.recipe else recipe_from_type(
        flags.type, output_tensor_type=flags.output_tensor_type, token_embedding_type=flags.token_embedding_type,
        pure=flags.pure, tensor_types=tuple(parse_tensor_type(t) for t in flags.tensor_type),
        pre_tokenizer=flags.pre_tokenizer)
    return ConvertRequest(model=flags.model, recipe=recipe, output=flags.output, threads=flags.threads,
                          dry_run=flags.dry_run, verify=flags.verify, imatrix=flags.imatrix,
                          calibrate_data=flags.calibrate, force=flags.force,
                          method=method if method == "gptq" else None)   # GPTQ on K-quants (docs/gguf-gptq.md)
