"""quantcli's exception hierarchy. Every error a user can cause says what went wrong and what to do.

Exit codes (design.md): 2 for bad input or usage, 1 for a failed verification or an internal error,
130/143 for an interrupt or a termination signal.
"""
from __future__ import annotations


class QuantcliError(Exception):
    """Base of every error quantcli raises on purpose; its message is shown to the user as is."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} {self.hint}" if self.hint else base


class InputError(QuantcliError):
    """The model, a file or an option the user gave cannot be used as given."""

    exit_code = 2


class UnsupportedError(InputError):
    """A valid input that quantcli does not handle (an architecture, a dtype, a tokenizer)."""


class RecipeError(InputError):
    """A recipe that does not follow the schema; the message names file and line."""


class OutputError(InputError):
    """The output cannot be written (folder not writable, disk too small)."""


class VerifyError(QuantcliError):
    """A written file failed verification: a structural problem or an error above the thresholds."""

    exit_code = 1


class Interrupted(QuantcliError):
    """The run was stopped by SIGINT or SIGTERM. Files being written are removed on the way out, but the signal
    may also come after an output was complete, so the message promises only what always holds."""

    def __init__(self, signum: int) -> None:
        super().__init__("interrupted; no half-written file was left under a final name. Run the same command "
                         "again to finish (outputs already complete are reused from the cache).")
        self.exit_code = 128 + signum
