"""`quantcli inspect PATH`: metadata and tensor table of a GGUF file, a safetensors file or a model folder."""
# no `from __future__ import annotations`: typer would compile every string annotation at each start

from pathlib import Path
from typing import Annotated

import typer

from ._common import JsonOpt, human_bytes, out, print_json, print_rows, run


VALUE_WIDTH = 100   # metadata values longer than this (chat templates, token lists) are cut in the table


def inspect(
    path: Annotated[Path, typer.Argument(help="A .gguf file, a .safetensors file or a Hugging Face model folder.")],
    json: JsonOpt = False,
) -> None:
    """Show a model file's metadata and tensors; for a quantized folder, also its scheme and quantized modules.

    Shapes are listed as each format stores them: ggml order (row length first) for GGUF, as llama.cpp's
    tools print them; row-major (PyTorch) order for safetensors. --json gives every metadata value in full.

    [bold]Examples[/]

      quantcli inspect smol-q8_0.gguf
      quantcli inspect ./SmolLM2-135M-Instruct --json
      quantcli inspect ./SmolLM2-135M-Instruct/model.safetensors
      quantcli inspect ./smol-W4A16/            # a quantized folder: scheme, per-module bits and size
    """
    def body() -> None:
        from ..inspect import describe

        info = describe(path)
        if json:
            print_json(info)
            return
        out.print(f"{path} ({info['format']}, {len(info['metadata'])} metadata keys)", markup=False, highlight=False)
        print_rows(("key", "value"), [(k, _cell(v)) for k, v in info["metadata"].items()], indent="  ")
        if "modules" in info:
            _print_quantization(info)
        out.print(f"{len(info['tensors'])} tensors, {human_bytes(info['bytes'])}", highlight=False)
        print_rows(("name", "type", "shape", "bytes"),
                   [(t["name"], t["type"], "x".join(map(str, t["shape"])), f"{t['bytes']:,}") for t in info["tensors"]],
                   right={3}, indent="  ")

    run(body)


def _cell(value: object) -> str:
    """One line of at most VALUE_WIDTH characters for a metadata value."""
    text = str(value).replace("\n", "\\n")
    return text if len(text) <= VALUE_WIDTH else text[:VALUE_WIDTH - 3] + "..."


def _print_quantization(info: dict) -> None:
    """A quantized folder's scheme and its quantized modules (bits, stored size, bits per weight)."""
    q = info["quantization"]
    group = "per channel" if q.get("group_size") is None else str(q.get("group_size"))
    out.print(f"quantized: {q.get('quant_method')} {q.get('format')}, {q.get('num_bits')}-bit, group size {group}, "
              f"{'symmetric' if q.get('symmetric') else 'asymmetric'}, method {q.get('method') or 'not recorded'}; "
              f"{q['quantized_modules']} modules, "
              f"{human_bytes(q['quantized_bytes'])}, {q['bits_per_weight']} bits per weight", highlight=False)
    print_rows(("module", "shape", "bits", "bytes", "bits/weight"),
               [(m["name"], "x".join(map(str, m["shape"])), str(m["bits"]), f"{m['bytes']:,}",
                 f"{m['bits_per_weight']:.3f}") for m in info["modules"]], right={2, 3, 4}, indent="  ")
