"""Every way quantcli chooses integer values, in one table: which methods need calibration data, where a calibrated
method's class lives, and the options it takes.

Per-tensor methods (min-max RTN, RTN with an MSE clip search, HQQ) look at one weight at a time and are run by the
pack stage itself (quant/int). Calibrated methods (GPTQ, AWQ) see the model block by block through the engine
and are driven by stages/calibrated.py; their classes are imported only when a run uses them, so a method whose
module is absent from this install is refused with a clean error instead of breaking every command.

    method = make_method("gptq", {"damp": 0.05})            # a GPTQ(damp=0.05)
    is_calibrated("mse"), is_calibrated("awq")               # (False, True)
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import InputError
from .base import BlockMethod

# Methods the pack stage runs tensor by tensor, without data. `hqq` joins once quant/int has its solver; it is
# listed here so that the CLI's checks (e.g. --calibrate refused) treat it as per-tensor from the start.
PER_TENSOR = ("minmax", "mse", "hqq")


@dataclass(frozen=True)
class Option:
    """One keyword a calibrated method's constructor takes: its type and the value the class defaults to."""

    name: str
    kind: type
    default: Any
    help: str


@dataclass(frozen=True)
class MethodEntry:
    """A calibrated method: `module:Class` of its BlockMethod, the options its constructor accepts from the
    user, and the keywords the driver supplies from the run itself (`context`: "scale_dtype", the stored scale
    dtype(s) of the planned weights, "scale_dtype_one" for a method that takes a single dtype, "threads")."""

    name: str
    target: str
    options: tuple[Option, ...]
    summary: str
    context: tuple[str, ...] = ()

    def option(self, key: str) -> Option | None:
        return next((o for o in self.options if o.name == key), None)


CALIBRATED: dict[str, MethodEntry] = {
    "gptq": MethodEntry("gptq", "quantcli.quant.algorithms.gptq:GPTQ", (
        Option("damp", float, 0.01, "dampening added to the Hessian's diagonal, as a fraction of its mean"),
        Option("act_order", bool, False, "quantize columns in order of decreasing activation energy"),
        Option("block_size", int, 128, "columns updated together between the lazy error propagations"),
        Option("static_groups", bool, False, "compute every group's scale before the column loop"),
    ), "error-compensating column-by-column rounding with the inputs' Hessian (Frantar et al. 2022)",
        ("scale_dtype", "threads")),
    "awq": MethodEntry("awq", "quantcli.quant.algorithms.awq:AWQ", (
        Option("n_grid", int, 20, "points of the per-channel scale exponent search"),
        Option("clip", bool, True, "also search a clipping range per group"),
    ), "activation-aware per-channel scales folded into the preceding layer (Lin et al. 2023)",
        ("scale_dtype_one",)),
}
METHOD_NAMES = PER_TENSOR + tuple(CALIBRATED)


def is_calibrated(method: str) -> bool:
    return method in CALIBRATED


def check_method(method: str) -> None:
    if method not in METHOD_NAMES:
        raise InputError(f"--method {method} is not available.", hint=f"Use one of: {', '.join(METHOD_NAMES)}.")


def _coerce(method: str, opt: Option, value: Any) -> Any:
    """A value given on the command line (text) or in a recipe (YAML scalar) as the option's type."""
    if opt.kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    else:
        try:
            out = opt.kind(value)
            if opt.kind is int and isinstance(value, float) and value != out:
                raise ValueError(value)
            if not isinstance(value, bool):
                return out
        except (TypeError, ValueError):
            pass
    words = {bool: "true or false", int: "a whole number", float: "a number"}
    raise InputError(f"{method} option {opt.name}={value!r} is not {words.get(opt.kind, opt.kind.__name__)}.",
                     hint=f"{opt.name}: {opt.help} (default {opt.default}).")


def method_options(method: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The options the user set for `method`, checked and typed; refuses an option the method does not take."""
    entry = CALIBRATED.get(method)
    if entry is None:
        if given:
            raise InputError(f"--method {method} takes no options ({', '.join(sorted(given))} given).",
                             hint="Method options apply to the calibrated methods: " + ", ".join(CALIBRATED) + ".")
        return {}
    out: dict[str, Any] = {}
    for key, value in given.items():
        opt = entry.option(key.replace("-", "_"))
        if opt is None:
            raise InputError(f"--method {method} has no option {key!r}.",
                             hint=f"{method} takes: {', '.join(o.name for o in entry.options)}.")
        out[opt.name] = _coerce(method, opt, value)
    _check_values(method, out)
    return out


def _check_values(method: str, options: Mapping[str, Any]) -> None:
    damp = options.get("damp")
    if damp is not None and not 0 <= damp < 1:
        raise InputError(f"--damp {damp} is outside [0, 1).", hint="GPTQ's dampening is a small fraction, e.g. 0.01.")
    for key in ("block_size", "n_grid"):
        value = options.get(key)
        if value is not None and value < 1:
            raise InputError(f"{method} option {key}={value} is not a positive number.",
                             hint=f"Leave {key} out for the default.")


def make_method(method: str, options: Mapping[str, Any] | None = None,
                context: Mapping[str, Any] | None = None) -> BlockMethod:
    """Import and construct a calibrated method with the (checked) options the user set and, of the run's
    `context` (scale_dtype: name -> dtype; threads), the keywords its entry asks for; nothing else."""
    entry = CALIBRATED.get(method)
    if entry is None:
        raise InputError(f"--method {method} is not a calibrated method.",
                         hint=f"Calibrated methods: {', '.join(CALIBRATED)}.")
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise  # the method's module exists but one of its own imports is missing: a real bug or a broken install
        raise InputError(f"--method {method} is not part of this quantcli install ({module_name} is missing).",
                         hint=f"Use --method {' or '.join(PER_TENSOR[:2])}, or update quantcli.") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise InputError(f"--method {method} is not part of this quantcli install ({entry.target} is missing).",
                         hint=f"Use --method {' or '.join(PER_TENSOR[:2])}, or update quantcli.")
    return cls(**method_options(method, options or {}), **_context(entry, context or {}))


def _context(entry: MethodEntry, context: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    dtypes = context.get("scale_dtype")
    if "scale_dtype" in entry.context and dtypes:
        out["scale_dtype"] = dict(dtypes)
    if "scale_dtype_one" in entry.context and dtypes:
        # one dtype for the whole model: the weights' own when they agree (the usual case), else float32
        kinds = set(dict(dtypes).values())
        out["scale_dtype"] = kinds.pop() if len(kinds) == 1 else "F32"
    if "threads" in entry.context and context.get("threads"):
        out["threads"] = int(context["threads"])
    return out
