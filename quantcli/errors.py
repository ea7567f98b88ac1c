"""quantcli's exception hierarchy and its exit codes. Every error a user can cause says what went wrong and what to do.

The exit codes are one table (ExitCode) that every command is held to, through the error boundary in
cli/_common.py; docs/cli.md explains them for users and scripts.
"""
from __future__ import annotations

import signal
from enum import IntEnum


class ExitCode(IntEnum):
    """What a script can learn from quantcli's exit status alone.

    1 is kept for "the output was judged and found wanting" so that a CI job can tell a quality failure from
    a mistake in its own command line (2), from the machine it runs on (3) and from a bug in quantcli (4),
    none of which say anything about the model. Python itself exits 1 on an uncaught exception; the boundary
    never lets one through, so an internal error is 4, not 1.
    """

    OK = 0
    VERIFY_FAILED = 1   # the output exists but failed a check: structure, or a figure past its threshold
    BAD_INPUT = 2       # the model, a file, an option or a recipe cannot be used as given (also usage errors)
    ENVIRONMENT = 3     # the input is fine but the machine is not: disk full, folder not writable, out of memory
    INTERNAL = 4        # a bug in quantcli (an exception nobody raised on purpose)
    # Interrupted runs exit 128 + the signal number, as shells do: 130 for SIGINT (Ctrl-C), 143 for SIGTERM.


def interrupted_code(signum: int) -> int:
    return 128 + signum


INTERRUPTED_SIGINT = interrupted_code(signal.SIGINT)
INTERRUPTED_SIGTERM = interrupted_code(signal.SIGTERM)


class QuantcliError(Exception):
    """Base of every error quantcli raises on purpose; its message is shown to the user as is."""

    exit_code: int = ExitCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} {self.hint}" if self.hint else base


class InputError(QuantcliError):
    """The model, a file or an option the user gave cannot be used as given."""

    exit_code = ExitCode.BAD_INPUT


class UnsupportedError(InputError):
    """A valid input that quantcli does not handle (an architecture, a dtype, a tokenizer)."""


class RecipeError(InputError):
    """A recipe that does not follow the schema; the message names file and line."""


class OutputError(InputError):
    """The output cannot be written (folder not writable, disk too small).

    It stays a subclass of InputError so that code catching bad input around a write keeps catching it, but it
    exits 3: the user's input was fine and the same command will work on a machine with room to write.
    """

    exit_code = ExitCode.ENVIRONMENT


class VerifyError(QuantcliError):
    """A written file failed verification: a structural problem or an error above the thresholds."""

    exit_code = ExitCode.VERIFY_FAILED


class JobsFailed(QuantcliError):
    """Some jobs of a batch failed; the exit code is the most serious of theirs (internal > environment > input >
    verify), so a CI script sees a bug or a full disk before a quality miss."""

    def __init__(self, message: str, *, exit_code: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code


class Interrupted(QuantcliError):
    """The run was stopped by SIGINT or SIGTERM. Files being written are removed on the way out, but the signal
    may also come after an output was complete, so the message promises only what always holds."""

    def __init__(self, signum: int) -> None:
        super().__init__("interrupted; no half-written file was left under a final name. Run the same command "
                         "again to finish (outputs already complete are reused from the cache).")
        self.exit_code = interrupted_code(signum)
