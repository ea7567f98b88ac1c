"""How a run stops on SIGINT (Ctrl-C) and SIGTERM (a CI cancel, `kill`): the first one raises Interrupted, so the
writers on the stack delete their partial files on the way out; any later one is ignored, so that a second
Ctrl-C (or the terminal's SIGINT reaching a process that its parent is already stopping with SIGTERM) cannot cut
that cleanup short and leave a partial file behind.

    with stop_signals_raise():
            long_running_work()            # Ctrl-C: Interrupted(SIGINT), exit code 130
"""
from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _ignore(signum: int, frame: object) -> None:
    """A Python-level "ignore". Not SIG_IGN: a signal that arrived just before the switch is still delivered to
    the current Python handler, and CPython reports one whose handler became SIG_IGN meanwhile as an error on
    stderr ("Signal 15 ignored due to race condition")."""


def _raise_once(signum: int, frame: object) -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, _ignore)
    raise Interrupted(signum)


def install(signals: tuple[int, ...] = STOP_SIGNALS) -> dict[int, Any]:
    """Make `signals` raise Interrupted (once); returns the previous handlers for `restore`."""
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        signal.signal(sig, _raise_once)
    return previous


def restore(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    previous = install()
    try:
        yield
    finally:
        restore(previous)


@contextmanager
def stop_signals_ignored() -> Iterator[None]:
    """For a bounded cleanup that must finish (stopping worker processes): stop signals wait until it ends."""
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _ignore)
    except ValueError:        # not the main thread: signals are not ours to handle here
        previous = {}
    try:
        yield
    finally:
        restore(previous)
