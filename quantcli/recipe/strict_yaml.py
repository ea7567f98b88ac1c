"""Strict YAML reading shared by recipes and batch files: every error names the file and line of the node.

    >>> ctx = YamlContext("r.yaml")
    >>> root, items = compose(ctx, "quantize: {type: Q4_K_M}", "the recipe", "Start with quantize:.")
    >>> check_keys(ctx, items, ("quantize",), "the recipe")
"""
from __future__ import annotations

from typing import Any

import yaml

from ..errors import RecipeError


class YamlContext:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: yaml.Node | None, message: str, hint: str | None = None) -> RecipeError:
        where = f"{self.source}:{node.start_mark.line + 1}" if node is not None else self.source
        return RecipeError(f"{where}: {message}", hint=hint)


def mapping(ctx: YamlContext, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise ctx.fail(node, f"{what} must be a mapping (key: value lines).")
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for k, v in node.value:
        if not isinstance(k, yaml.ScalarNode):
            raise ctx.fail(k, f"{what} has a non-text key.")
        if k.value in out:
            raise ctx.fail(k, f"{what} repeats the key {k.value!r}.")
        out[k.value] = (k, v)
    return out


def scalar(ctx: YamlContext, node: yaml.Node, key: str, kind: type) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise ctx.fail(node, f"{key} must be a single {kind.__name__}.")
    value = yaml.safe_load(yaml.serialize(node)) if node.tag != "tag:yaml.org,2002:str" else node.value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ctx.fail(node, f"{key} must be a {kind.__name__}, got {node.value!r}.")
    return value


def check_keys(ctx: YamlContext, items: dict, allowed: tuple[str, ...], what: str) -> None:
    for key, (knode, _) in items.items():
        if key not in allowed:
            raise ctx.fail(knode, f"unknown key {key!r} in {what}.", hint=f"Allowed keys: {', '.join(allowed)}.")


def compose(ctx: YamlContext, text: str, what: str, empty_hint: str) -> tuple[yaml.Node, dict[str, tuple[yaml.Node, yaml.Node]]]:
    """Parse `text` into its root node and top-level mapping; invalid YAML and an empty document are errors."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{ctx.source}:{mark.line + 1}" if mark is not None else ctx.source
        raise RecipeError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)}).") from exc
    except RecursionError as exc:  # PyYAML's composer recurses once per nesting level
        raise RecipeError(f"{ctx.source}: {what} nests deeper than any recipe or batch file does.",
                          hint="Recipes are at most a few levels deep; check the file.") from exc
    if root is None:
        raise RecipeError(f"{ctx.source}: {what} is empty.", hint=empty_hint)
    _refuse_tags(ctx, root)
    return root, mapping(ctx, root, what)


_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")}


def _refuse_tags(ctx: YamlContext, root: yaml.Node) -> None:
    """An explicit tag (`!foo`, `!!python/object`) is refused where it stands: a recipe holds plain data only,
    and PyYAML would otherwise fail on it later with an error that names no line."""
    stack = [root]
    while stack:
        node = stack.pop()
        if node.tag not in _PLAIN_TAGS:
            raise ctx.fail(node, f"YAML tag {node.tag!r} is not allowed.", hint="Recipes hold plain values; remove the tag.")
        if isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
