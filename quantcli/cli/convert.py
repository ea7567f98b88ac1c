"""`quantcli convert MODEL`: HF checkpoint (folder or hub id) -> GGUF, one or many outputs from one read."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import ForceOpt, JsonOpt, ThreadsOpt, byte_progress, err, human_bytes, out, print_json, print_rows, progress_enabled, run, warn

EXAMPLES = """[bold]Examples[/]

  quantcli convert ./SmolLM2-135M-Instruct -o smol-q8_0.gguf --type Q8_0
  quantcli convert HuggingFaceTB/SmolLM2-135M-Instruct@main --recipe release -o out/
  quantcli convert ./model --type Q4_K_M --tensor-type 'attn_v=Q8_0' --output-tensor-type Q8_0
  quantcli convert ./model --recipe q8_0 -o out/                # a built-in recipe, by name
  quantcli convert ./model --recipe my-release.yaml -o out/      # or a recipe file
  quantcli convert ./model --type Q4_0 --dry-run
  quantcli convert ./model --type Q8_0 --verify full             # also compare every tensor with the source
  quantcli convert ./model --type Q3_K_M --calibrate calib.txt        # imatrix from calib.txt, then quantize
  quantcli convert ./model --recipe q4_k_m-imatrix                     # built-in text, 100 chunks of 512
  quantcli convert ./model --type Q4_K_M --method gptq --calibrate calib.txt   # GPTQ on the K-quant blocks
  quantcli convert ./model --format compressed-tensors --scheme W4A16 -o model-W4A16/
  quantcli convert ./model --format compressed-tensors --scheme W4A16_ASYM --group-size 64 --method mse
  quantcli convert ./model --format bnb-nf4 -o model-nf4/
"""


def convert(
    model: Annotated[str, typer.Argument(help="A Hugging Face model folder, or a hub id org/name[@revision].")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output .gguf file, or a folder for recipe outputs (default: current folder).")] = None,
    type: Annotated[Optional[str], typer.Option("--type", help="Output type or llama.cpp mix: F16, BF16, Q8_0, Q4_0, Q4_K_M, ... Default: the source's 16-bit type.")] = None,
    recipe: Annotated[Optional[str], typer.Option("--recipe", "-r", help="A recipe file or built-in recipe name (quantcli recipes list).")] = None,
    tensor_type: Annotated[Optional[list[str]], typer.Option("--tensor-type", help="Override the type of tensors whose name matches a regex: 'attn_v=Q8_0'. Repeatable.")] = None,
    output_tensor_type: Annotated[Optional[str], typer.Option("--output-tensor-type", help="Type of output.weight.")] = None,
    token_embedding_type: Annotated[Optional[str], typer.Option("--token-embedding-type", help="Type of token_embd.weight.")] = None,
    pure: Annotated[bool, typer.Option("--pure", help="Every eligible tensor gets the same type (no mix rules).")] = False,
    imatrix: Annotated[Optional[Path], typer.Option("--imatrix", help="Importance matrix from llama-imatrix (GGUF or legacy .dat).")] = None,
    calibrate: Annotated[Optional[str], typer.Option("--calibrate", help="Compute the importance matrix from this text first (file, folder, JSONL/parquet or hub dataset; `builtin:calibration` for the built-in text); cached.")] = None,
    pre_tokenizer: Annotated[Optional[str], typer.Option("--pre-tokenizer", help="Force tokenizer.ggml.pre (e.g. llama-bpe) when detection fails.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (every tensor, source, shape, type, bytes) and write nothing.")] = False,
    verify: Annotated[str, typer.Option("--verify", help="After writing: none, structure (reopen and check), or full (also error vs source).")] = "structure",
    format: Annotated[str, typer.Option("--format", help="gguf (default); compressed-tensors (a safetensors folder transformers and vLLM load); bnb-nf4 (bitsandbytes 4-bit).")] = "gguf",
    scheme: Annotated[Optional[str], typer.Option("--scheme", help="Integer scheme of a folder format: W4A16 (default), W4A16_ASYM, W8A16, W8A8.")] = None,
    method: Annotated[str, typer.Option("--method", help="How integer values are chosen: minmax (RTN) or mse (RTN with a clip search); for GGUF K-quant types, gptq (with --calibrate).")] = "minmax",
    bits: Annotated[Optional[int], typer.Option("--bits", help="Weight bits of a folder format (4 or 8); picks W4A16 or W8A16 when --scheme is absent.")] = None,
    group_size: Annotated[Optional[int], typer.Option("--group-size", help="Values per scale: 32, 64, 128, or 0 for one scale per output channel. Default: the scheme's (128).")] = None,
    sym: Annotated[Optional[bool], typer.Option("--sym/--asym", help="Symmetric codes, or asymmetric with zero points. Default: the scheme's.", show_default=False)] = None,
    ignore: Annotated[Optional[list[str]], typer.Option("--ignore", help="Leave a module unquantized: its name, or 're:REGEX' over module names. Repeatable; lm_head always.")] = None,
    double_quant: Annotated[bool, typer.Option("--double-quant/--no-double-quant", help="bnb-nf4: store the block scales as 8-bit codes too (the default, as bitsandbytes' bnb_4bit_use_double_quant).")] = True,
    threads: ThreadsOpt = 0,
    force: ForceOpt = False,
    json: JsonOpt = False,
) -> None:
    """Convert a Hugging Face checkpoint to GGUF: download (hub ids), plan, quantize, write, verify.

    Finished outputs are cached: a re-run with the same inputs and settings re-checks each file's sha256
    and skips it. A run manifest (docs/pipeline.md) is written beside the outputs.
    """

    def body() -> None:
        from ..errors import InputError
        from ..pipeline.convert import ConvertRequest, parse_tensor_type, recipe_from_type
        from ..recipe import resolve_recipe

        if format.lower() != "gguf":
            from ..pipeline.convert_int import IntConvertRequest

            if recipe or type or tensor_type or output_tensor_type or token_embedding_type or pre_tokenizer or pure or imatrix or calibrate:
                raise InputError(f"--format {format} takes --scheme/--method/--bits/--group-size/--sym/--ignore, "
                                 "not the GGUF options (--type, --recipe, --tensor-type, --imatrix, --calibrate, ...).",
                                 hint="Drop the GGUF options, or use --format gguf.")
            execute_int(IntConvertRequest(model=model, format=format.lower(), scheme=scheme, method=method.lower(),
                                          bits=bits, group_size=-1 if group_size is None else group_size,
                                          symmetric=sym, ignore=tuple(ignore or ()), output=output, threads=threads,
                                          dry_run=dry_run, verify=verify, double_quant=double_quant), json=json)
            return
        gguf_method = method.lower() if method.lower() == "gptq" else None   # GPTQ on K-quants (docs/gguf-gptq.md)
        if (scheme or bits is not None or group_size is not None or sym is not None or ignore
                or method not in ("minmax", "gptq") or not double_quant):
            raise InputError("--scheme/--method/--bits/--group-size/--sym/--asym/--ignore apply to folder formats.",
                             hint="Add --format compressed-tensors, or use --type for GGUF.")
        if recipe and (type or tensor_type or output_tensor_type or token_embedding_type or pre_tokenizer or pure):
            raise InputError("--recipe cannot be combined with --type/--tensor-type/--output-tensor-type/"
                             "--token-embedding-type/--pure/--pre-tokenizer.",
                             hint="Put those settings in the recipe, or drop --recipe.")
        rec = resolve_recipe(recipe) if recipe else recipe_from_type(
            type, output_tensor_type=output_tensor_type, token_embedding_type=token_embedding_type, pure=pure,
            tensor_types=tuple(parse_tensor_type(t) for t in tensor_type or ()), pre_tokenizer=pre_tokenizer)
        request = ConvertRequest(model=model, recipe=rec, output=output, threads=threads, dry_run=dry_run,
                                 verify=verify, imatrix=imatrix, calibrate_data=calibrate, force=force,
                                 method=gguf_method)
        execute(request, json=json)

    run(body)


def execute(request, *, json: bool) -> None:  # type: ignore[no-untyped-def]
    """Run a conversion with the CLI's services on (stage cache, manifest, progress) and print the result."""
    from dataclasses import replace

    from ..pipeline.cache import default_cache_dir
    from ..pipeline.convert import convert as run_convert

    request = replace(request, cache_dir=default_cache_dir(), manifest=True, download_progress=progress_enabled())
    with byte_progress("quantizing") as bar:
        def on_plan(pairs: list) -> None:
            if request.dry_run and not json:
                for plan, path in pairs:
                    print_plan(plan, path)

        def on_write(pairs: list) -> None:
            bar.set_total(sum(plan.total_bytes for plan, _ in pairs))

        result = run_convert(request, progress=bar.advance, on_plan=on_plan, on_write=on_write, warn=warn)
    if json:
        print_json(result_json(result, request.dry_run))
    elif not request.dry_run:
        if result.calibration is not None:
            c = result.calibration
            out.print(f"{'cached' if c.cached else 'wrote'} {c.path} (imatrix: {c.chunks} chunks of {c.ctx} tokens "
                      f"from {c.data_name})", highlight=False)
        for g in result.gptq:
            out.print(f"gptq: {g['tensors']} matrices ({', '.join(f'{n} {t}' for t, n in g['types'].items())}) on "
                      f"{g['chunks']} chunks of {g['ctx']} tokens in {g['seconds']:.0f} s", highlight=False)
        for o in result.outputs:
            size = human_bytes(o.path.stat().st_size)
            if o.cached:
                out.print(f"cached {o.path} ({o.type}, {size}): same inputs and settings, sha256 re-checked; "
                          "skipped (--force redoes it)", highlight=False)
            else:
                out.print(f"wrote {o.path} ({o.type}, {size})", highlight=False)
            print_verify(o.verify, request.verify, source=result.source, cached=o.verify_cached)
        if result.manifest is not None:
            err.print(f"manifest: {result.manifest}", highlight=False)
        err.print(f"done in {result.seconds:.2f} s", highlight=False)


def execute_int(request, *, json: bool) -> None:  # type: ignore[no-untyped-def]
    """Run a folder-format conversion and print the folder, its size and (with --verify full) the error summary."""
    from ..pipeline.convert_int import convert_int

    result = convert_int(request)
    if json:
        report = result.report.to_json() if result.report else None
        print_json({"source": str(result.source), "path": str(result.path), "dry_run": request.dry_run,
                    "scheme": result.plan.options.scheme.name, "method": result.plan.options.method,
                    "quantized": [m.source for m in result.plan.modules if m.quantized],
                    "seconds": round(result.seconds, 3), "verify": report})
        return
    quantized = [m for m in result.plan.modules if m.quantized]
    if request.dry_run:
        for m in result.plan.modules:
            out.print(f"{m.source}  {'x'.join(map(str, m.shape))}  {m.dtype} -> "
                      f"{result.plan.options.scheme.name if m.quantized else 'kept'}", highlight=False)
        out.print(f"{len(quantized)} of {len(result.plan.modules)} tensors quantized; ignore: "
                  f"{', '.join(result.plan.ignore)}", highlight=False)
        return
    size = sum(p.stat().st_size for p in result.path.iterdir() if p.is_file())
    kind = "NF4" if request.format == "bnb-nf4" else result.plan.options.scheme.name
    out.print(f"wrote {result.path}/ ({kind}, {len(quantized)} weights quantized, "
              f"{human_bytes(size)})", highlight=False)
    if result.report is not None and result.report.weights:
        r = result.report.to_json()
        err.print(f"verify: min SNR {r['min_snr_db']:.1f} dB, mean {r['mean_snr_db']:.1f} dB over "
                  f"{len(result.report.weights)} weights", highlight=False)
    err.print(f"done in {result.seconds:.2f} s", highlight=False)


def print_verify(report: dict | None, level: str, *, source: Path, cached: bool) -> None:
    """What verify said about one output: one line for a structure check, the summary for a full one."""
    if report is None:
        return
    if level == "full":
        from .verify import print_summary

        print_summary(report, source=source, cached=cached)
    elif report.get("ok"):
        out.print(f"  verified: structure ok ({report.get('n_tensors')} tensors){', cached' if cached else ''}",
                  highlight=False)


def print_plan(plan, path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = []
    for t in plan.tensors:
        src = ", ".join(t.spec.sources) or "(computed from config.json)"  # rope_freqs and friends
        if t.spec.transform.describe():
            src += f"  [{t.spec.transform.describe()}]"
        # ggml order (row length first), as inspect, verify and llama.cpp's own tools print shapes.
        rows.append((t.name, src, "x".join(map(str, t.ggml_shape)), t.qtype.name, f"{t.nbytes:,}"))
    out.print(f"{path}  ({plan.arch}, {plan.mix})", markup=False, highlight=False)
    print_rows(("tensor", "source", "shape", "type", "bytes"), rows, right={4}, indent="  ")
    out.print(f"total: {len(plan.tensors)} tensors, {plan.n_params:,} parameters, {plan.total_bytes:,} bytes "
              f"({human_bytes(plan.total_bytes)})", highlight=False)


def result_json(result, dry_run: bool) -> dict:  # type: ignore[no-untyped-def]
    outputs = []
    for o in result.outputs:
        entry = {"path": str(o.path), "type": o.type, "bytes": o.plan.total_bytes, "verify": o.verify,
                 "sha256": o.sha256, "cached": o.cached}
        if dry_run:
            entry["tensors"] = [{"name": t.name, "sources": list(t.spec.sources), "shape": list(t.ggml_shape),
                                 "transform": t.spec.transform.describe(), "type": t.qtype.name, "bytes": t.nbytes}
                                for t in o.plan.tensors]
        outputs.append(entry)
    snap = result.snapshot
    return {"source": str(result.source), "repo_id": snap.repo_id if snap else None,
            "commit": snap.commit if snap else None, "arch": result.arch, "dry_run": dry_run,
            "seconds": round(result.seconds, 3), "manifest": str(result.manifest) if result.manifest else None,
            "outputs": outputs}


# cleandoc first: the examples are not indented, so the docstring's own indent would survive into --help.
convert.__doc__ = f"{inspect.cleandoc(convert.__doc__ or '')}\n\n{EXAMPLES}"
