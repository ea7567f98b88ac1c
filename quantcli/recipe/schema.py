"""The recipe schema, its strict loader and its JSON Schema export.

Every error names the file and line: unknown keys, wrong types and bad type names are rejected, never ignored.
A recipe has either one `quantize:` section (shorthand) or an `outputs:` list; both load to the same canonical
form, a Recipe with a tuple of OutputSpec, which the run manifest records.

    recipe = load_recipe(Path("recipes/q4_k_m.yaml"))
    recipe.outputs[0].type, recipe.outputs[0].file
    # -> ('Q4_K_M', '{model}-{type}.gguf')
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from ..errors import RecipeError
from ..io.files import read_text
from .templates import template_problem
from .strict_yaml import YamlContext, check_keys, compose, mapping, scalar

DEFAULT_FILE = "{model}-{type}.gguf"
FILE_FIELDS = ("model", "type", "recipe")
GGUF_FORMAT = "gguf"
FOLDER_FIELDS = ("model", "scheme", "method", "recipe")
PUBLISH_FIELDS = ("model", "recipe")     # publish.repo: me/{model}-GGUF


@dataclass(frozen=True)
class OutputSpec:
    """One output file: its mix, tensor-type overrides and file-name template."""

    type: str
    file: str = DEFAULT_FILE
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    pure: bool = False
    tensor_types: tuple[tuple[str, str], ...] = ()
    pre_tokenizer: str | None = None

    def __post_init__(self) -> None:
        # Recipes name the line of a bad type before this runs; options given on the command line are checked
        # here, against the same list of writable types.
        from ..quant.mixes.options import parse_ggml_type

        for option, value in (("--output-tensor-type", self.output_tensor_type),
                              ("--token-embedding-type", self.token_embedding_type)):
            if value is not None:
                parse_ggml_type(value, option)
        for pattern, value in self.tensor_types:
            parse_ggml_type(value, f"--tensor-type {pattern}={value}")

    def filename(self, model: str, recipe: str = "") -> str:
        return self.file.format(model=model, type=self.type, recipe=recipe)


@dataclass(frozen=True)
class FolderOutputSpec:
    """One safetensors folder output (compressed-tensors, bnb-nf4): what `convert --format` takes on the command
    line. `dir` names the folder inside -o (None: `{model}-{scheme}`, plus `-{method}` when not min-max)."""

    format: str
    scheme: str | None = None
    bits: int | None = None
    group_size: int | None = None           # None: the scheme's; 0: one scale per output channel
    symmetric: bool | None = None           # None: the scheme's
    method: str = "minmax"
    options: tuple[tuple[str, Any], ...] = ()   # a calibrated method's options, checked by its registry entry
    ignore: tuple[str, ...] = ()
    double_quant: bool = True
    dir: str | None = None


@dataclass(frozen=True)
class VerifySpec:
    """Thresholds a written file must meet; None disables a check."""

    min_snr_db: float | None = None        # lowest allowed per-tensor signal-to-noise ratio, in dB
    max_rmse: float | None = None          # highest allowed per-tensor RMSE against the source
    enabled: bool = True
    max_kld: float | None = None           # highest allowed mean KL divergence from the source (verify --data)
    max_ppl_ratio: float | None = None     # highest allowed PPL(output) / PPL(source) (verify --data)
    # The text convert scores every output on when a model-level threshold is set (stages/verify_model.py)
    data: str | None = None                # None: the built-in evaluation text (builtin:eval)
    ctx: int | None = None                 # tokens per chunk; None: 512, or the model's context when shorter
    chunks: int | None = None              # the first n chunks; None: the whole text

    @property
    def model_level(self) -> bool:
        """Whether convert runs the model-level verify (the engine) on its outputs."""
        return self.max_kld is not None or self.max_ppl_ratio is not None


@dataclass(frozen=True)
class PublishSpec:
    repo: str | None = None                # org/name, or a template with {model} and {recipe}
    private: bool = False
    max_shard_size: str | None = None      # e.g. "2G": larger files are split gguf-split style
    on_convert: bool = False               # convert publishes the run's outputs as its last stage
    base_model: str | None = None          # the card's base_model (default: the source's hub id)
    quantized_by: str | None = None        # the card's quantized_by (default: the repo's namespace)


@dataclass(frozen=True)
class CalibrateSpec:
    """Compute an importance matrix before quantizing (llama-imatrix's statistics); see docs/calibrate.md."""

    data: str | None = None                # text file, folder, JSONL/parquet, hub dataset id; None: built-in text
    ctx: int | None = None                 # tokens per chunk; None: 512, or the model's context when shorter
    chunks: int | None = None              # the first n chunks; None: the whole text
    process_output: bool = False           # also collect output.weight
    field: str = "text"                    # the JSONL / parquet field that holds the text


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str = ""
    outputs: tuple[OutputSpec, ...] = ()
    verify: VerifySpec = field(default_factory=VerifySpec)
    publish: PublishSpec = field(default_factory=PublishSpec)
    source: str = "<string>"
    calibrate: CalibrateSpec | None = None
    folders: tuple[FolderOutputSpec, ...] = ()   # safetensors folder outputs, run after the GGUF ones

    def canonical(self) -> dict[str, Any]:
        """The recipe as plain data with every default filled in (what the manifest and the cache key use)."""
        data = asdict(self)
        data.pop("source")
        if not self.folders:
            data.pop("folders")   # GGUF-only recipes keep the canonical form (and cache keys) they always had
        for f in data.get("folders", ()):
            f["options"] = dict(f["options"])
        return data


# ---- strict loading ----------------------------------------------------------------------------------------

def _type_name(ctx: YamlContext, node: yaml.Node, key: str, valid: Callable[[str], bool], names: str) -> str:
    value = scalar(ctx, node, key, str).upper()
    if not valid(value):
        what = "a type quantcli can write" if valid is _valid_ggml else "a known type"
        raise ctx.fail(node, f"{key}: {value!r} is not {what}.", hint=f"Valid: {names}.")
    return value


def _valid_mix(name: str) -> bool:
    from ..quant.mixes import MIXES

    return name in MIXES


def _valid_ggml(name: str) -> bool:
    from ..quant.base import writable_types

    return name in {t.name for t in writable_types()}


def _ggml_names() -> str:
    from ..quant.base import writable_types

    return ", ".join(t.name for t in writable_types())


def _mix_names() -> str:
    from ..quant.mixes import MIXES

    return ", ".join(MIXES)


_OUTPUT_KEYS = tuple(f.name for f in fields(OutputSpec)) + ("format",)
_FOLDER_KEYS = tuple(f.name for f in fields(FolderOutputSpec))


def _folder_output(ctx: YamlContext, node: yaml.Node, items: dict, what: str) -> FolderOutputSpec:
    """A folder output: the keys of `convert --format`, each checked as the command line checks it."""
    from ..errors import InputError
    from ..quant.algorithms.registry import method_options
    from ..io.int_scheme import scheme_named
    from ..plan.safetensors import FORMATS

    check_keys(ctx, items, _FOLDER_KEYS, what)
    fmt = scalar(ctx, items["format"][1], "format", str).lower()
    if fmt not in FORMATS:
        raise ctx.fail(items["format"][1], f"format: {fmt!r} is not an output format.",
                       hint=f"Valid: {', '.join((GGUF_FORMAT,) + FORMATS)}.")
    kw: dict[str, Any] = {"format": fmt}
    for key, kind in (("scheme", str), ("method", str), ("dir", str), ("bits", int), ("group_size", int),
                      ("symmetric", bool), ("double_quant", bool)):
        if key in items:
            kw[key] = scalar(ctx, items[key][1], key, kind)
    if "scheme" in kw:
        try:
            kw["scheme"] = scheme_named(kw["scheme"]).name
        except InputError as exc:
            raise ctx.fail(items["scheme"][1], str(exc)) from None
    if "method" in kw:
        kw["method"] = kw["method"].lower()
    if "ignore" in items:
        inode = items["ignore"][1]
        if not isinstance(inode, yaml.SequenceNode):
            raise ctx.fail(inode, "ignore must be a list of module names or 're:' patterns.")
        kw["ignore"] = tuple(scalar(ctx, n, "ignore", str) for n in inode.value)
    if "options" in items:
        onode = items["options"][1]
        given = {}
        for k, (_, v) in mapping(ctx, onode, "options").items():
            if not isinstance(v, yaml.ScalarNode):
                raise ctx.fail(v, f"options.{k} must be a single value.")
            given[k] = yaml.safe_load(yaml.serialize(v))
        try:
            kw["options"] = tuple(method_options(kw.get("method", "minmax"), given).items())
        except InputError as exc:
            raise ctx.fail(onode, str(exc)) from None
    if "dir" in kw:
        problem = template_problem(kw["dir"], FOLDER_FIELDS)
        if problem is not None or "/" in kw["dir"] or kw["dir"].startswith(".") or not kw["dir"].strip():
            raise ctx.fail(items["dir"][1], f"dir template {kw['dir']!r} "
                           f"{problem or 'must be a plain folder name (no folders, no leading dot)'}.",
                           hint=f"Available: {', '.join('{%s}' % f for f in FOLDER_FIELDS)}.")
    return FolderOutputSpec(**kw)


def _output(ctx: YamlContext, node: yaml.Node, what: str) -> OutputSpec | FolderOutputSpec:
    items = mapping(ctx, node, what)
    if "format" in items and scalar(ctx, items["format"][1], "format", str).lower() != GGUF_FORMAT:
        return _folder_output(ctx, node, items, what)
    items.pop("format", None)
    check_keys(ctx, items, _OUTPUT_KEYS, what)
    if "type" not in items:
        raise ctx.fail(node, f"{what} needs a 'type' (e.g. type: Q4_K_M).")
    kw: dict[str, Any] = {"type": _type_name(ctx, items["type"][1], "type", _valid_mix, _mix_names())}
    ggml_names = _ggml_names()
    for key in ("output_tensor_type", "token_embedding_type"):
        if key in items:
            kw[key] = _type_name(ctx, items[key][1], key, _valid_ggml, ggml_names)
    if "pure" in items:
        kw["pure"] = scalar(ctx, items["pure"][1], "pure", bool)
    if "pre_tokenizer" in items:
        kw["pre_tokenizer"] = scalar(ctx, items["pre_tokenizer"][1], "pre_tokenizer", str)
    if "file" in items:
        fnode = items["file"][1]
        template = scalar(ctx, fnode, "file", str)
        if not template.strip():
            raise ctx.fail(fnode, "file is empty.", hint="Give a file name template such as {model}-{type}.gguf.")
        problem = template_problem(template, FILE_FIELDS)
        if problem is not None:
            raise ctx.fail(fnode, f"file template {template!r} {problem}.",
                           hint=f"Available: {', '.join('{%s}' % f for f in FILE_FIELDS)}.")
        if "/" in template or template.startswith("."):
            raise ctx.fail(fnode, "file must be a plain file name (no folders, no leading dot).")
        kw["file"] = template
    if "tensor_types" in items:
        tnode = items["tensor_types"][1]
        pairs = []
        for key, (pk, pv) in mapping(ctx, tnode, "tensor_types").items():
            try:
                re.compile(key)
            except re.error as exc:
                raise ctx.fail(pk, f"tensor_types pattern {key!r} is not a valid regex ({exc}).")
            pairs.append((key, _type_name(ctx, pv, f"tensor_types[{key}]", _valid_ggml, ggml_names)))
        kw["tensor_types"] = tuple(pairs)
    return OutputSpec(**kw)


def _section(ctx: YamlContext, node: yaml.Node, cls: type, what: str) -> Any:
    items = mapping(ctx, node, what)
    names = {f.name: f for f in fields(cls)}
    check_keys(ctx, items, tuple(names), what)
    kw = {}
    for key, (_, vnode) in items.items():
        ftype = names[key].type
        kind = bool if "bool" in str(ftype) else float if "float" in str(ftype) else str
        kw[key] = scalar(ctx, vnode, f"{what}.{key}", kind)
        if kind is float:
            _check_threshold(ctx, vnode, f"{what}.{key}", kw[key], non_negative=key.startswith("max_"))
    return cls(**kw)


def _publish(ctx: YamlContext, node: yaml.Node) -> PublishSpec:
    """The publish section; its repo may be a template over PUBLISH_FIELDS, expanded when a run publishes."""
    spec = _section(ctx, node, PublishSpec, "publish")
    if spec.repo is not None:
        problem = template_problem(spec.repo, PUBLISH_FIELDS)
        if problem is not None:
            rnode = mapping(ctx, node, "publish")["repo"][1]
            raise ctx.fail(rnode, f"publish.repo {spec.repo!r} {problem}.",
                           hint=f"Write org/name; available: {', '.join('{%s}' % f for f in PUBLISH_FIELDS)}.")
    if spec.on_convert and not spec.repo:
        raise ctx.fail(node, "publish.on_convert needs publish.repo: convert has no repo to publish to.",
                       hint="Add repo: you/{model}-GGUF, or drop on_convert.")
    return spec


def _check_threshold(ctx: YamlContext, node: yaml.Node, key: str, value: float, *, non_negative: bool) -> None:
    """A threshold must be a real number (a NaN compares false with everything and would disable the check)."""
    if not math.isfinite(value):
        raise ctx.fail(node, f"{key} must be a finite number, got {node.value!r}.",
                       hint="Give a number, or leave the key out to use the default.")
    if non_negative and value < 0:
        raise ctx.fail(node, f"{key} must be 0 or more, got {node.value!r}.",
                       hint="An error figure is never negative; a negative bound would fail every tensor.")


def _calibrate(ctx: YamlContext, node: yaml.Node) -> CalibrateSpec:
    items = mapping(ctx, node, "calibrate")
    check_keys(ctx, items, tuple(f.name for f in fields(CalibrateSpec)), "calibrate")
    kw: dict[str, Any] = {}
    for key in ("data", "field"):
        if key in items:
            kw[key] = scalar(ctx, items[key][1], f"calibrate.{key}", str)
    for key in ("ctx", "chunks"):
        if key in items:
            value = scalar(ctx, items[key][1], f"calibrate.{key}", int)
            if isinstance(value, bool) or value < 1:
                raise ctx.fail(items[key][1], f"calibrate.{key} must be a positive whole number, not {value!r}.")
            kw[key] = value
    if "process_output" in items:
        kw["process_output"] = scalar(ctx, items["process_output"][1], "calibrate.process_output", bool)
    return CalibrateSpec(**kw)


# Model-level thresholds: a ratio or a divergence bound that is zero, negative, inf or nan could never be met
# or never be missed, so it is a mistake in the recipe.
_POSITIVE_VERIFY_KEYS = ("max_kld", "max_ppl_ratio")


_VERIFY_TEXT_KEYS = ("data", "ctx", "chunks")


def _verify(ctx: YamlContext, node: yaml.Node) -> VerifySpec:
    items = mapping(ctx, node, "verify")
    check_keys(ctx, items, tuple(f.name for f in fields(VerifySpec)), "verify")
    kw: dict[str, Any] = {}
    for key in ("min_snr_db", "max_rmse", "max_kld", "max_ppl_ratio"):
        if key in items:
            kw[key] = scalar(ctx, items[key][1], f"verify.{key}", float)
            _check_threshold(ctx, items[key][1], f"verify.{key}", kw[key], non_negative=key.startswith("max_"))
    if "enabled" in items:
        kw["enabled"] = scalar(ctx, items["enabled"][1], "verify.enabled", bool)
    for key in _POSITIVE_VERIFY_KEYS:
        value = kw.get(key)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ctx.fail(items[key][1], f"verify.{key} must be a finite number above 0, got {value!r}.",
                           hint="e.g. max_kld: 0.1, max_ppl_ratio: 1.05")
    if "data" in items:
        kw["data"] = scalar(ctx, items["data"][1], "verify.data", str)
        if not kw["data"].strip():
            raise ctx.fail(items["data"][1], "verify.data is empty.",
                           hint="Give a text file, folder, JSONL/parquet or hub dataset, or builtin:eval.")
    for key, low in (("ctx", 4), ("chunks", 1)):
        if key in items:
            value = scalar(ctx, items[key][1], f"verify.{key}", int)
            if isinstance(value, bool) or value < low:
                raise ctx.fail(items[key][1], f"verify.{key} must be a whole number of at least {low}, not {value!r}.")
            kw[key] = value
    spec = VerifySpec(**kw)
    given = [k for k in _VERIFY_TEXT_KEYS if k in items]
    if given and not spec.model_level:
        # the text is only read to check a model-level threshold: without one it would be silently ignored
        raise ctx.fail(items[given[0]][1], f"verify.{given[0]} sets the text of the model-level check, but the "
                       "recipe sets no max_kld or max_ppl_ratio.",
                       hint="Add verify.max_kld or verify.max_ppl_ratio, or drop " + ", ".join(f"verify.{k}" for k in given) + ".")
    return spec


_TOP_KEYS = ("name", "description", "quantize", "outputs", "verify", "publish", "calibrate")


def parse_recipe(text: str, source: str = "<string>", default_name: str = "recipe") -> Recipe:
    ctx = YamlContext(source)
    root, items = compose(ctx, text, "the recipe", "Start with `quantize: {type: Q4_K_M}`.")
    check_keys(ctx, items, _TOP_KEYS, "the recipe")
    if ("quantize" in items) == ("outputs" in items):
        raise ctx.fail(root, "a recipe needs exactly one of 'quantize' (one output) or 'outputs' (a list).")
    if "quantize" in items:
        every = (_output(ctx, items["quantize"][1], "quantize"),)
    else:
        lnode = items["outputs"][1]
        if not isinstance(lnode, yaml.SequenceNode) or not lnode.value:
            raise ctx.fail(lnode, "outputs must be a non-empty list of output sections.")
        every = tuple(_output(ctx, n, f"outputs[{i}]") for i, n in enumerate(lnode.value))
    outputs = tuple(o for o in every if isinstance(o, OutputSpec))
    folders = tuple(o for o in every if isinstance(o, FolderOutputSpec))
    if "outputs" in items:
        files = [o.file.replace("{type}", o.type) for o in outputs]
        if len(set(files)) != len(files):
            raise ctx.fail(lnode, "two outputs would write the same file name.",
                           hint="Give each output a distinct 'file' template or type.")
        dirs = [(f.dir or "{model}-{scheme}-{method}", f.scheme, f.method, f.format) for f in folders]
        if len(set(dirs)) != len(dirs):
            raise ctx.fail(lnode, "two folder outputs would write the same folder.",
                           hint="Give each folder output a distinct 'dir' template, scheme or method.")
    name = scalar(ctx, items["name"][1], "name", str) if "name" in items else default_name
    desc = scalar(ctx, items["description"][1], "description", str) if "description" in items else ""
    verify = _verify(ctx, items["verify"][1]) if "verify" in items else VerifySpec()
    publish = _publish(ctx, items["publish"][1]) if "publish" in items else PublishSpec()
    calibrate = _calibrate(ctx, items["calibrate"][1]) if "calibrate" in items else None
    return Recipe(name, desc, outputs, verify, publish, source, calibrate, folders)


def load_recipe(path: Path) -> Recipe:
    if not Path(path).exists():
        raise RecipeError(f"cannot read recipe {path}: No such file or directory.",
                          hint="Give a recipe file path or a built-in name (quantcli recipes list).")
    text = read_text(Path(path), "recipe")
    return parse_recipe(text, str(path), default_name=Path(path).stem)


def recipe_json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of the recipe format, for editors."""
    from ..quant.base import writable_types
    from ..quant.mixes import MIXES

    ggml = sorted(t.name for t in writable_types())
    output = {
        "type": "object", "additionalProperties": False, "required": ["type"],
        "properties": {
            "type": {"enum": list(MIXES), "description": "The llama.cpp mix or type of this output."},
            "file": {"type": "string", "minLength": 1, "default": DEFAULT_FILE, "description": "File name template: {model}, {type}, {recipe}."},
            "output_tensor_type": {"enum": ggml}, "token_embedding_type": {"enum": ggml},
            "pure": {"type": "boolean", "default": False},
            "tensor_types": {"type": "object", "additionalProperties": {"enum": ggml},
                             "description": "Regex on the GGUF tensor name -> type; the first match wins."},
            "pre_tokenizer": {"type": "string"},
        },
    }
    from ..quant.algorithms.registry import METHOD_NAMES
    from ..io.int_scheme import SCHEMES
    from ..plan.safetensors import FORMATS

    # One object for both kinds of output: `format` absent or gguf needs a `type`; a folder format takes the
    # folder keys (what `convert --format` takes on the command line).
    output["properties"].update({
        "format": {"enum": [GGUF_FORMAT, *FORMATS], "default": GGUF_FORMAT,
                   "description": "gguf (a GGUF file), or a safetensors folder format."},
        "scheme": {"enum": list(SCHEMES)}, "bits": {"enum": [4, 8]},
        "group_size": {"enum": [0, 32, 64, 128], "description": "0: one scale per output channel."},
        "symmetric": {"type": "boolean"}, "method": {"enum": list(METHOD_NAMES)},
        "options": {"type": "object", "description": "A calibrated method's options (gptq: damp, act_order, "
                                                     "block_size, static_groups; awq: n_grid, clip)."},
        "ignore": {"type": "array", "items": {"type": "string"}}, "double_quant": {"type": "boolean"},
        "dir": {"type": "string", "description": "Folder name template: {model}, {scheme}, {method}, {recipe}."},
    })
    output.pop("required")
    output["if"] = {"properties": {"format": {"enum": list(FORMATS)}}, "required": ["format"]}
    output["else"] = {"required": ["type"]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "title": "quantcli recipe", "type": "object",
        "additionalProperties": False,
        "oneOf": [{"required": ["quantize"]}, {"required": ["outputs"]}],
        "properties": {
            "name": {"type": "string"}, "description": {"type": "string"},
            "quantize": output, "outputs": {"type": "array", "minItems": 1, "items": output},
            "verify": {"type": "object", "additionalProperties": False, "properties": {
                "min_snr_db": {"type": "number"}, "max_rmse": {"type": "number", "minimum": 0}, "enabled": {"type": "boolean"},
                "max_kld": {"type": "number", "exclusiveMinimum": 0,
                            "description": "Highest mean KL divergence from the source (verify --data)."},
                "max_ppl_ratio": {"type": "number", "exclusiveMinimum": 0,
                                  "description": "Highest PPL(output)/PPL(source) (verify --data)."},
                "data": {"type": "string", "minLength": 1,
                         "description": "Text convert scores the outputs on (with max_kld/max_ppl_ratio); "
                                        "default: builtin:eval."},
                "ctx": {"type": "integer", "minimum": 4, "description": "Tokens per chunk; default 512."},
                "chunks": {"type": "integer", "minimum": 1, "description": "First n chunks; default: all."}}},
            "publish": {"type": "object", "additionalProperties": False, "properties": {
                "repo": {"type": "string", "description": "org/name, or a template with {model} and {recipe}."},
                "private": {"type": "boolean"}, "max_shard_size": {"type": "string"},
                "on_convert": {"type": "boolean", "default": False,
                               "description": "convert publishes the outputs as its last stage."},
                "base_model": {"type": "string"}, "quantized_by": {"type": "string"}}},
            "calibrate": {"type": "object", "additionalProperties": False, "properties": {
                "data": {"type": "string", "description": "Text file, folder, JSONL/parquet, or hub dataset id; "
                                                          "default: the built-in text."},
                "ctx": {"type": "integer", "minimum": 1, "description": "Default: 512, or the model's context when shorter."}, "chunks": {"type": "integer", "minimum": 1},
                "process_output": {"type": "boolean", "default": False},
                "field": {"type": "string", "default": "text"}}},
        },
    }
