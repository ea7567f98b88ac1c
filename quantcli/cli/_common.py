"""Pieces every command shares: consoles, the error boundary, shared option aliases, progress bars."""
from __future__ import annotations

import errno
import json
import math
import os
import signal
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Collection, Iterator, Sequence

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


# OS errors that say the machine cannot do what was asked, whatever the input: they exit ExitCode.ENVIRONMENT
# with the OS's own words and a fix that fits the error, instead of reading as a quantcli bug. Everything else
# that nobody raised on purpose is an internal error.
_ENVIRONMENT_FIXES = {
    "ENOSPC": "Free disk space or write elsewhere with -o",
    "EDQUOT": "Free space within your disk quota or write elsewhere with -o",
    "EROFS": "Write to a folder on a writable file system (-o)",
    "EACCES": "Fix the permissions of that path or choose another one",
    "EPERM": "Fix the permissions of that path or choose another one",
    "EMFILE": "Raise the open-file limit (ulimit -n)",
    "ENFILE": "Close other programs; the system's open-file table is full",
    "ENOMEM": "Close other programs or use a machine with more memory",
    "EIO": "Check the disk: the system reported an I/O error",
}
_ENVIRONMENT_ERRNOS = {getattr(errno, name): fix for name, fix in _ENVIRONMENT_FIXES.items() if hasattr(errno, name)}


def _fail(message: str, code: int) -> "typer.Exit":
    from rich.markup import escape

    err.print(f"[bold red]Error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def run(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Call a command body inside the error boundary, the one place where failures become exit codes.

    Every command runs its body through here, so each is held to the table in errors.ExitCode: a failure
    prints exactly one line on stderr starting with `Error:` and exits with the code of its class.
    QUANTCLI_DEBUG=1 lets the exception through with its traceback instead.
    """
    from ..errors import ExitCode, Interrupted, QuantcliError, interrupted_code
    from ..pipeline.signals import stop_signals_raise

    try:
        with stop_signals_raise():       # Ctrl-C and SIGTERM: Interrupted, and partial files are removed
            return fn(*args, **kwargs)
    except QuantcliError as exc:
        if debug():
            raise
        raise _fail(str(exc), int(exc.exit_code)) from None
    except KeyboardInterrupt:
        if debug():
            raise
        raise _fail(str(Interrupted(signal.SIGINT)), interrupted_code(signal.SIGINT)) from None
    except typer.Exit:
        raise
    except MemoryError:
        if debug():
            raise
        raise _fail("out of memory. Close other programs or use a machine with more memory "
                    "(QUANTCLI_DEBUG=1 shows where it ran out).", ExitCode.ENVIRONMENT) from None
    except OSError as exc:
        if debug():
            raise
        if exc.errno in _ENVIRONMENT_ERRNOS:
            where = f" ({exc.filename})" if exc.filename else ""
            raise _fail(f"{exc.strerror or exc}{where}. {_ENVIRONMENT_ERRNOS[exc.errno]}, then run the same "
                        "command again.", ExitCode.ENVIRONMENT) from None
        raise _fail(_internal(exc), ExitCode.INTERNAL) from None
    except Exception as exc:  # noqa: BLE001 - the boundary of the program
        if debug():
            raise
        raise _fail(_internal(exc), ExitCode.INTERNAL) from None


def _internal(exc: BaseException) -> str:
    return (f"internal error: {type(exc).__name__}: {exc}. "
            "Set QUANTCLI_DEBUG=1 for the traceback and please report it.")


def json_ready(value: Any) -> Any:
    """`value` with every non-finite float (NaN, +-Infinity) replaced by None.

    JSON has no NaN or infinity; Python's json module writes the JavaScript words for them, which strict
    parsers (jq, Go, Rust's serde) reject. A lossless tensor's SNR is infinite, so it appears as null beside an
    RMSE of 0; docs/cli.md says so.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def print_json(data: Any, *, compact: bool = False) -> None:
    """Every command's --json output goes through here: strict JSON (non-finite floats as null) on stdout."""
    text = json.dumps(json_ready(data), allow_nan=False, **({"separators": (",", ":")} if compact else {"indent": 2}))
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def hide_flag_types(command: Any, help_option_names: list[str]) -> None:
    """Blank the value column of flags (--json, --dry-run, --help) in every command's --help.

    Typer's rich help prints each option's type, `<bool>` for a flag, which reads as if the flag took a
    value. A metavar of "" prints nothing there; the help option is made lazily, so it is made here first.
    """
    for param in getattr(command, "params", []):
        if getattr(param, "is_flag", False):
            param.metavar = ""
    if getattr(command, "add_help_option", False):
        ctx = command.context_class(command, info_name=command.name, help_option_names=help_option_names)
        help_option = command.get_help_option(ctx)
        if help_option is not None:
            help_option.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        hide_flag_types(sub, help_option_names)


def print_rows(header: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[int] = (),
               indent: str = "") -> None:
    """Rows as plain aligned columns on stdout, never cut or wrapped: a rich Table shrinks to the terminal's
    width (80 columns when piped) and cuts tensor names, which are what a reader greps for. Cells are text,
    not markup."""
    table = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for n, r in enumerate(table):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        line = indent + "  ".join(cells).rstrip()
        out.print(line, markup=False, highlight=False, style="bold" if n == 0 else None)


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
