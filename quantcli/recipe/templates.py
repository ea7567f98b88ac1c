"""File and folder name templates ({model}, {type}, {recipe}): checked once, where they are read.

A template is refused unless every replacement field is one of the allowed names, bare: no attribute or index
(`{model.upper}`, `{model[0]}`), no conversion and no format spec (`{model:>300000000}` would build a 300 MB
name before the file system refused it). Unbalanced braces and NUL characters are refused too.

    >>> template_problem("{model}-{type}.gguf", ("model", "type"))
    >>> template_problem("out/{model.x}", ("model", "recipe"))
    'uses {model.x}; only {model}, {recipe} can be used, as they are'
"""
from __future__ import annotations

import string


def template_problem(template: str, fields: tuple[str, ...]) -> str | None:
    """What is wrong with `template` (a phrase to follow its name), or None when it is fine."""
    allowed = ", ".join("{%s}" % f for f in fields)
    if "\0" in template:
        return "contains a NUL character, which no file name can hold"
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"is not a valid template ({exc}); write a literal brace as {{{{ or }}}}"
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in fields:
            return f"uses {{{name}}}; only {allowed} can be used, as they are"
        if spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            return f"formats a field ({shown}); only {allowed} can be used, as they are"
    return None
