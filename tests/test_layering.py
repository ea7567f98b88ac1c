"""Imports run down the layers: cli -> pipeline -> stages -> plan/engine -> models/quant -> io.

Every `import` and `from ... import` in quantcli/ is parsed with ast (module level, inside functions and under
TYPE_CHECKING alike: a lazy import is still a dependency) and resolved to the package it names. A module may
import its own layer or any layer below, never one above. The few known exceptions are listed with their reason
in KNOWN; the test fails when a new violation appears and also when a listed one is gone, so the list can only
shrink.
"""
from __future__ import annotations

import ast
from pathlib import Path

import quantcli

ROOT = Path(quantcli.__file__).parent

# Rank of each top-level part of quantcli (higher imports lower). errors, the version and the shipped data sit
# under everything. recipe/ is the strict schema the CLI and the pipeline parse; it validates names against the
# registries below it (encodings in quant/, INT schemes in io/, folder formats in plan/), so it ranks just above
# plan. inspect.py is the `inspect` command's logic over stages and io.
RANKS: dict[str, int] = {
    "cli": 7,
    "pipeline": 6, "inspect": 6,
    "stages": 5,
    "recipe": 4,
    "plan": 3, "engine": 3,
    "models": 2, "quant": 2,
    "io": 1,
    "errors": 0, "__init__": 0, "data": 0, "_kernels": 0,
}

# (importing module, imported module) pairs that break the order today, with why they are not fixed here.
KNOWN: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every quantcli module `path` imports, resolved to absolute dotted names (the module, not the name in it)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "quantcli")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "quantcli":
                continue
            if node.module is None:      # `from .. import families`: the names are modules
                out.update(f"{target}.{a.name}" for a in node.names)
            else:
                out.add(target)
    return out


def rank(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    assert top in RANKS, f"{module}: quantcli.{top} has no layer in tests/test_layering.py RANKS"
    return RANKS[top]


def upward_imports() -> set[tuple[str, str]]:
    found = set()
    for path in sorted(ROOT.rglob("*.py")):
        source = module_name(path)
        for target in imported_modules(path):
            # `from quantcli import __version__` names quantcli itself; a name, not a package above
            if target in ("quantcli.__version__",):
                continue
            if rank(target) > rank(source):
                found.add((source, target))
    return found


def test_every_part_of_quantcli_has_a_layer() -> None:
    tops = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
            if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert tops <= set(RANKS), tops - set(RANKS)


def test_imports_run_down_the_layers() -> None:
    found = upward_imports()
    new = sorted(found - set(KNOWN))
    assert not new, "imports that run up the layers (cli -> pipeline -> stages -> plan/engine -> models/quant " \
                    "-> io):\n" + "\n".join(f"  {a} imports {b}" for a, b in new)
    fixed = sorted(set(KNOWN) - found)
    assert not fixed, "no longer violated; remove from KNOWN: " + ", ".join(f"{a} -> {b}" for a, b in fixed)


def test_the_parser_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The check itself: a function-level relative import of a higher layer is found (guards against a parser
    that only reads module-level absolute imports and so passes everything)."""
    found = imported_modules(ROOT / "stages" / "verify_model.py")
    assert any(rank(t) == RANKS["plan"] for t in found)               # the plan, imported inside a function
    assert any(rank(t) == 1 for t in found)                          # io, imported relatively
