"""`quantcli calibrate MODEL`: an importance matrix in llama.cpp's format, from calibration text."""
# no `from __future__ import annotations`: typer would compile every string annotation at each start

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import ForceOpt, JsonOpt, ThreadsOpt, err, out, progress_enabled, run, warn

EXAMPLES = """[bold]Examples[/]

  quantcli calibrate ./model --data calib.txt --ctx 512 --chunks 100 -o imatrix.gguf
  quantcli calibrate ./model --data calib.txt -o imatrix.dat                 # llama.cpp's legacy format
  quantcli calibrate ./model -o imatrix.gguf                                 # the built-in text
  quantcli calibrate ./model --data corpus.jsonl --data-field content -o imatrix.gguf
  quantcli calibrate ./model --data org/some-dataset -o imatrix.gguf          # a hub dataset (text/JSONL/parquet)
  quantcli convert ./model --type Q3_K_M --imatrix imatrix.gguf
"""


def calibrate(
    model: Annotated[str, typer.Argument(help="A Hugging Face model folder, or a hub id org/name (optionally @revision).")],
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Calibration text: a UTF-8 file, a folder of them, JSONL or parquet, or a hub dataset id org/name (optionally @revision). Default: the built-in public-domain text.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="The imatrix file to write (.gguf, or .dat for the legacy format).")] = Path("imatrix.gguf"),
    ctx: Annotated[Optional[int], typer.Option("--ctx", "-c", help="Tokens per chunk (llama-imatrix's --ctx-size). Default: 512, or the model's context when shorter.", min=1)] = None,
    chunks: Annotated[Optional[int], typer.Option("--chunks", help="Use only the first N chunks. Default: the whole text.", min=1)] = None,
    format: Annotated[Optional[str], typer.Option("--format", help="gguf or dat. Default: from the file suffix (.dat -> dat), else gguf.")] = None,
    process_output: Annotated[bool, typer.Option("--process-output", help="Also collect output.weight's statistics (llama-imatrix --process-output).")] = False,
    data_field: Annotated[str, typer.Option("--data-field", help="The JSONL field or parquet column that holds the text.")] = "text",
    threads: ThreadsOpt = 0,
    force: ForceOpt = False,
    json: JsonOpt = False,
) -> None:
    """Run the model over calibration text and write its importance matrix, as llama.cpp's llama-imatrix does.

    The text is tokenized once, cut into chunks of --ctx tokens (each starting with BOS when the model's
    vocabulary adds one), and for every matrix of the blocks the squared inputs are summed per column. The file
    is read by `quantcli convert --imatrix` and by llama.cpp's llama-quantize. A re-run with the same model,
    text and settings finds the file in the stage cache and skips the work.
    """

    def body() -> None:
        import json as jsonlib

        from ..pipeline.cache import default_cache_dir
        from ..pipeline.calibrate import CalibrationRequest, run_calibration

        request = CalibrationRequest(model=model, output=output, data=data, ctx=ctx, chunks=chunks,
                                     process_output=process_output, format=format, field=data_field,
                                     threads=threads, cache_dir=default_cache_dir(), force=force)
        show = progress_enabled() and not json

        def progress(done: int, total: int) -> None:
            if show:
                err.print(f"calibrating: {done}/{total} chunks", highlight=False)

        done = run_calibration(request, warn=warn, progress=progress)
        if json:
            out.print_json(jsonlib.dumps(done.manifest()))
            return
        what = "cached" if done.cached else "wrote"
        out.print(f"{what} {done.path}: {len(done.summary)} matrices, {done.chunks} chunks of {done.ctx} tokens "
                  f"from {done.data_name} (sha256 {done.data_sha256[:12]})", highlight=False)
        err.print(f"done in {done.seconds:.2f} s", highlight=False)

    run(body)


calibrate.__doc__ = f"{calibrate.__doc__}\n\n{EXAMPLES}"
