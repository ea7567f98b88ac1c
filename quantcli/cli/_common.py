"""Pieces every command shares: consoles, the error boundary, shared option aliases, progress bars."""
from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Iterator

import typer

if TYPE_CHECKING:
    from rich.console import Console


class _LazyConsole:
    """A rich Console made on first use: importing rich.console costs tens of milliseconds that `--help`
    (and every command that prints nothing) should not pay. Attribute access goes to the real Console."""

    def __init__(self, **options: object) -> None:
        self._options = options
        self._console: Console | None = None

    def get(self) -> "Console":
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)  # type: ignore[arg-type]
        return self._console

    def __getattr__(self, name: str) -> object:
        return getattr(self.get(), name)


out = _LazyConsole(soft_wrap=True)                   # results
err = _LazyConsole(stderr=True, soft_wrap=True)      # diagnostics and progress

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")]
MAX_THREADS = 1024  # quant.backend.MAX_THREADS (not imported: --help must not load numpy)
ThreadsOpt = Annotated[int, typer.Option("--threads", "-t", help="Threads for the quantization kernels (0: all cores).",
                                         min=0, max=MAX_THREADS)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Redo every stage even when the cache says the output is up to date.")]


def debug() -> bool:
    return os.environ.get("QUANTCLI_DEBUG", "") not in ("", "0")


def warn(message: str) -> None:
    """A non-fatal diagnostic on stderr (a stale cache entry, a skipped file)."""
    from rich.markup import escape

    err.print(f"[yellow]Warning:[/] {escape(message)}", highlight=False)


def progress_enabled() -> bool:
    if os.environ.get("QUANTCLI_NO_PROGRESS") or os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"):
        return False
    return sys.stderr.isatty()


def _raise_interrupt(signum: int, frame: object) -> None:
    from ..errors import Interrupted

    raise Interrupted(signum)


def run(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Call a command body inside the error boundary: our errors become one line and an exit code."""
    from ..errors import Interrupted, QuantcliError

    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return fn(*args, **kwargs)
    except QuantcliError as exc:
        if debug():
            raise
        from rich.markup import escape

        # escaped: a message quoting user input ("tensor_types[attn_v]") must not be read as rich markup
        err.print(f"[bold red]Error:[/] {escape(str(exc))}", markup=True, highlight=False)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        if debug():
            raise
        err.print(f"[bold red]Error:[/] {Interrupted(signal.SIGINT)}", highlight=False)
        raise typer.Exit(128 + signal.SIGINT) from None
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - the boundary of the program
        if debug():
            raise
        from rich.markup import escape

        err.print(f"[bold red]Error:[/] internal error: {type(exc).__name__}: {escape(str(exc))}. "
                  "Set QUANTCLI_DEBUG=1 for the traceback and please report it.", highlight=False)
        raise typer.Exit(1) from None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


class ByteProgress:
    """Progress over output bytes on stderr; every method is a no-op when progress is off."""

    def __init__(self, bar: object | None, label: str) -> None:
        self._bar = bar
        self._label = label
        self._task = bar.add_task(label, total=None) if bar is not None else None  # type: ignore[attr-defined]

    def set_total(self, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=total)  # type: ignore[attr-defined]

    def advance(self, tensor: object, nbytes: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=nbytes,  # type: ignore[attr-defined]
                             description=f"{self._label} {getattr(tensor, 'name', '')}")


@contextmanager
def byte_progress(label: str) -> Iterator[ByteProgress]:
    if not progress_enabled():
        yield ByteProgress(None, label)
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=err.get(), transient=True) as bar:
        yield ByteProgress(bar, label)
