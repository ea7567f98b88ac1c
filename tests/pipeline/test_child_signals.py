"""The interrupt tests' children get SIGINT's default disposition even when the suite runs with SIGINT ignored."""
from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.fixtures.signals import default_sigint

# What the child reports: Python's own handler (KeyboardInterrupt) or "ignored".
PROBE = "import signal; h = signal.getsignal(signal.SIGINT); print('ignored' if h == signal.SIG_IGN else h.__name__)"


@pytest.fixture()
def sigint_ignored() -> Iterator[None]:
    """This process ignores SIGINT for the test's duration, as under `nohup` or `make test &`."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def probe(**popen: object) -> str:
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                          **popen).stdout.strip()  # type: ignore[call-overload]


def test_an_ignored_sigint_is_inherited_without_the_helper(sigint_ignored: None) -> None:
    # the situation the helper exists for: the control case must show it, or the next test proves nothing
    assert probe() == "ignored"


def test_the_helper_gives_the_child_python_s_sigint_handler(sigint_ignored: None) -> None:
    assert probe(preexec_fn=default_sigint) == "default_int_handler"
