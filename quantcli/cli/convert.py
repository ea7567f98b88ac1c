"""`quantcli convert MODEL`: HF checkpoint (folder or hub id) -> GGUF files and safetensors folders, through the
stage runner (pipeline/runner.py); which options go together is decided in pipeline/options.py."""
# no `from __future__ import annotations`: typer would compile every string annotation at each start

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
  quantcli convert ./model --format gptq --bits 4 --group-size 128 -o model-gptq/
  quantcli convert ./model --format awq --group-size 128 -o model-awq/
  quantcli convert ./model --format compressed-tensors --scheme W4A16 --method gptq --calibrate calib.txt -o out/
  quantcli convert ./model --format compressed-tensors --method gptq --act-order --damp 0.05 --chunks 64
  quantcli convert ./model --format compressed-tensors --method awq -o out/   # built-in calibration text
  quantcli convert ./model --recipe release -o out/ --publish me/SmolLM2-GGUF        # upload when all checks pass
  quantcli convert ./model --recipe mixed.yaml -o out/ --publish 'me/{model}-quantized' --publish-private
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
    calibrate: Annotated[Optional[str], typer.Option("--calibrate", help="GGUF: compute the importance matrix from this text first (cached). Folder formats with --method gptq/awq: the calibration text (default builtin:calibration). A file, folder, JSONL/parquet or hub dataset.")] = None,
    pre_tokenizer: Annotated[Optional[str], typer.Option("--pre-tokenizer", help="Force tokenizer.ggml.pre (e.g. llama-bpe) when detection fails.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (every tensor, source, shape, type, bytes) and write nothing.")] = False,
    verify: Annotated[str, typer.Option("--verify", help="After writing: none, structure (reopen and check), or full (also error vs source).")] = "structure",
    format: Annotated[str, typer.Option("--format", help="gguf (default); compressed-tensors (a safetensors folder transformers and vLLM load); bnb-nf4 (bitsandbytes 4-bit); gptq (AutoGPTQ/GPTQModel v1); awq (AutoAWQ GEMM).")] = "gguf",
    scheme: Annotated[Optional[str], typer.Option("--scheme", help="Integer scheme of a folder format: W4A16 (default), W4A16_ASYM, W8A16, W8A8.")] = None,
    method: Annotated[str, typer.Option("--method", help="How integer values are chosen: minmax (RTN), mse (RTN with a clip search), hqq (asymmetric schemes: HQQ zero points and scales), the calibrated gptq and awq (they read --calibrate), or splitquant (SplitQuantV2, see docs/splitquant.md); for GGUF K-quant types, gptq (with --calibrate, docs/gguf-gptq.md).")] = "minmax",
    bits: Annotated[Optional[int], typer.Option("--bits", help="Weight bits of a folder format: 4 or 8 (gptq also 2; awq 4 only); picks W4A16 or W8A16 when --scheme is absent.")] = None,
    group_size: Annotated[Optional[int], typer.Option("--group-size", help="Values per scale: 32, 64, 128, or 0 for one scale per output channel. Default: the scheme's (128).")] = None,
    sym: Annotated[Optional[bool], typer.Option("--sym/--asym", help="Symmetric codes, or asymmetric with zero points. Default: the scheme's.", show_default=False)] = None,
    ignore: Annotated[Optional[list[str]], typer.Option("--ignore", help="Leave a module unquantized: its name, or 're:REGEX' over module names. Repeatable; lm_head always.")] = None,
    splitquant_branches: Annotated[bool, typer.Option("--splitquant-branches", help="--method splitquant: write the three INT4 branches (quantcli's engine runs them) instead of the dense sum every loader reads.")] = False,
    double_quant: Annotated[bool, typer.Option("--double-quant/--no-double-quant", help="bnb-nf4: store the block scales as 8-bit codes too (the default, as bitsandbytes' bnb_4bit_use_double_quant).")] = True,
    ctx: Annotated[Optional[int], typer.Option("--ctx", help="gptq/awq: tokens per calibration sequence. Default: 512, or the model's context when shorter.")] = None,
    chunks: Annotated[Optional[int], typer.Option("--chunks", help="gptq/awq: calibration sequences (the first n of the text). Default: 128.")] = None,
    damp: Annotated[Optional[float], typer.Option("--damp", help="gptq: dampening of the Hessian's diagonal, a fraction of its mean. Default: 0.01.")] = None,
    act_order: Annotated[bool, typer.Option("--act-order", help="gptq: quantize columns in order of decreasing activation energy (groups stay contiguous).")] = False,
    method_option: Annotated[Optional[list[str]], typer.Option("--method-option", help="A calibrated method's option KEY=VALUE, e.g. block_size=64, static_groups=true, n_grid=10, clip=false. Repeatable.")] = None,
    publish: Annotated[Optional[str], typer.Option("--publish", help="After every stage passed (verify thresholds too): upload every output and a model card to this hub repo, org/name or a template with {model} and {recipe}. Needs HF_TOKEN.")] = None,
    publish_private: Annotated[Optional[bool], typer.Option("--publish-private/--publish-public", help="Visibility of a repo --publish creates. Default: the recipe's publish.private, else public.", show_default=False)] = None,
    threads: ThreadsOpt = 0,
    force: ForceOpt = False,
    json: JsonOpt = False,
) -> None:
    """Convert a Hugging Face checkpoint to GGUF: download (hub ids), plan, quantize, write, verify.

    Finished outputs are cached: a re-run with the same inputs and settings re-checks each file's sha256
    and skips it. A run manifest (docs/pipeline.md) is written beside the outputs.
    """

    def body() -> None:
        from ..pipeline.options import ConvertFlags, request_from_flags

        request = request_from_flags(ConvertFlags(
            model=model, output=output, type=type, recipe=recipe, tensor_type=tuple(tensor_type or ()),
            output_tensor_type=output_tensor_type, token_embedding_type=token_embedding_type, pure=pure,
            imatrix=imatrix, calibrate=calibrate, pre_tokenizer=pre_tokenizer, dry_run=dry_run, verify=verify,
            format=format, scheme=scheme, method=method, bits=bits, group_size=group_size, sym=sym,
            ignore=tuple(ignore or ()), splitquant_branches=splitquant_branches, double_quant=double_quant, ctx=ctx,
            chunks=chunks, damp=damp, act_order=act_order, method_option=tuple(method_option or ()),
            threads=threads, force=force, publish=publish, publish_private=publish_private))
        execute(request, json=json)

    run(body)


def execute(request, *, json: bool) -> None:  # type: ignore[no-untyped-def]
    """Run a conversion with the CLI's services on (stage cache, manifest, progress) and print the result."""
    from dataclasses import replace

    from ..pipeline.cache import default_cache_dir
    from ..pipeline.convert import convert as run_convert

    request = replace(request, cache_dir=default_cache_dir(), manifest=True, download_progress=progress_enabled())

    def on_block(method: str, done: int, total: int) -> None:
        if progress_enabled() and not json:
            err.print(f"{method}: block {done}/{total}", highlight=False)

    with byte_progress("quantizing") as bar:
        def on_plan(pairs: list) -> None:
            if request.dry_run and not json:
                for plan, path in pairs:
                    print_plan(plan, path)

        def on_write(pairs: list) -> None:
            bar.set_total(sum(plan.total_bytes for plan, _ in pairs))

        result = run_convert(request, progress=bar.advance, on_plan=on_plan, on_write=on_write, warn=warn,
                             on_block=on_block)
    if result.folders:      # imported only for a run with folder outputs: a GGUF run never needs it
        from ..pipeline.convert_split import SplitConvertResult, describe_split
    if result.folders and isinstance(result.folders[0], SplitConvertResult):
        split = result.folders[0]
        if json:
            print_json({"source": str(split.source), "path": str(split.path), "dry_run": request.dry_run,
                        "method": "splitquant", "scheme": split.plan.options.scheme.name, "branches": split.branches,
                        "split": [m.source for m in split.plan.modules if m.quantized],
                        "seconds": round(split.seconds, 3), "sha256": split.sha256, "cached": split.cached,
                        "manifest": str(result.manifest) if result.manifest else None, "publish": result.publish})
            return
        for line in describe_split(split, request.dry_run):
            out.print(line, highlight=False)
        if split.cached and not request.dry_run:
            out.print("  same inputs and settings, sha256 re-checked; skipped (--force redoes it)", highlight=False)
        print_publish(result.publish)
        if not request.dry_run:
            err.print(f"done in {result.seconds:.2f} s", highlight=False)
        return
    if json:
        print_json({**convert_json(result, request), "publish": result.publish})
        return
    if request.dry_run:
        for f in result.folders:
            print_folder_plan(f)
        print_publish(result.publish)
        return
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
        print_model_verify(o.model_verify)
    for f in result.folders:
        print_folder(f)
    if result.manifest is not None:
        err.print(f"manifest: {result.manifest}", highlight=False)
    print_publish(result.publish)
    err.print(f"done in {result.seconds:.2f} s", highlight=False)


def print_publish(record: dict | None) -> None:
    """The publish stage's outcome: where the outputs went."""
    if not record:
        return
    if record.get("status") == "planned":
        out.print(f"would publish every output to {record['url']}{' (private)' if record.get('private') else ''}",
                  highlight=False)
        return
    out.print(f"published {len(record.get('files') or [])} files to {record['url']}", highlight=False)
    if record.get("commit_url"):
        out.print(f"commit: {record['commit_url']}", highlight=False)


def folder_json(f, dry_run: bool) -> dict:  # type: ignore[no-untyped-def]
    """The JSON record of one folder output."""
    report = f.report.to_json() if f.report else None
    return {"source": str(f.source), "path": str(f.path), "format": f.plan.options.format, "dry_run": dry_run,
            "scheme": f.plan.options.scheme.name, **f.method_record(),
            "quantized": [m.source for m in f.plan.modules if m.quantized], "seconds": round(f.seconds, 3),
            "verify": report, "sha256": f.sha256, "cached": f.cached, "model_verify": f.model_verify}


def convert_json(result, request) -> dict:  # type: ignore[no-untyped-def]
    """GGUF outputs only: result_json; one folder output alone: its record; otherwise every output in order,
    GGUF entries first, under the recipe's name."""
    if not result.folders:
        return result_json(result, request.dry_run)
    folders = [folder_json(f, request.dry_run) for f in result.folders]
    manifest = str(result.manifest) if result.manifest else None
    if not result.outputs and len(folders) == 1:
        return {**folders[0], "manifest": manifest}
    gguf = result_json(result, request.dry_run)
    return {"recipe": request.recipe.name, "source": gguf["source"], "dry_run": request.dry_run,
            "seconds": gguf["seconds"], "manifest": manifest, "outputs": gguf["outputs"] + folders}


def print_folder_plan(f) -> None:  # type: ignore[no-untyped-def]
    quantized = [m for m in f.plan.modules if m.quantized]
    for m in f.plan.modules:
        out.print(f"{m.source}  {'x'.join(map(str, m.shape))}  {m.dtype} -> "
                  f"{f.plan.options.scheme.name if m.quantized else 'kept'}", highlight=False)
    out.print(f"{len(quantized)} of {len(f.plan.modules)} tensors quantized; ignore: "
              f"{', '.join(f.plan.ignore)}", highlight=False)


def print_folder(f) -> None:  # type: ignore[no-untyped-def]
    """What one folder output became: written or cached, its kind, size and verify figures."""
    quantized = [m for m in f.plan.modules if m.quantized]
    size = sum(p.stat().st_size for p in f.path.rglob("*") if p.is_file())
    how = "" if f.calibration is None else (f", {f.plan.options.method} on {f.calibration['chunks']} x "
                                            f"{f.calibration['ctx']} tokens of {f.calibration['data']}")
    verb = "cached" if f.cached else "wrote"
    tail = ": same inputs and settings, sha256 re-checked; skipped (--force redoes it)" if f.cached else ""
    out.print(f"{verb} {f.path}/ ({f.kind}{how}, {len(quantized)} weights quantized, {human_bytes(size)}){tail}",
              highlight=False)
    if f.report is not None and f.report.weights:
        r = f.report.to_json()
        err.print(f"verify: min SNR {r['min_snr_db']:.1f} dB, mean {r['mean_snr_db']:.1f} dB over "
                  f"{len(f.report.weights)} weights", highlight=False)
    print_model_verify(f.model_verify)


def print_model_verify(figures: dict | None) -> None:
    """The model-level figures convert computed for an output (recipe verify.max_kld / max_ppl_ratio)."""
    if not figures:
        return
    if figures.get("kld_mean") is not None:
        text = (f"PPL {figures['ppl']:.4f} vs source {figures['ppl_source']:.4f} (ratio {figures['ppl_ratio']:.4f}), "
                f"mean KLD {figures['kld_mean']:.6f}, same top-1 {100 * figures['same_top1']:.2f} %")
    else:
        text = f"cosine mean {figures.get('cos_mean', float('nan')):.6f}, min {figures.get('cos_min', float('nan')):.6f}"
    status = "ok" if figures.get("ok") else "FAILED"
    out.print(f"  verified on {figures.get('data')}: {text}{', cached' if figures.get('cached') else ''}: {status}",
              highlight=False)


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
