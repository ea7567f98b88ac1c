"""Run a command and measure its wall time and peak RSS (the child's own, via wait4's rusage)."""
from __future__ import annotations

import compileall
import functools
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence


@dataclass(frozen=True)
class Sample:
    seconds: float
    peak_rss_mb: float


@dataclass(frozen=True)
class Measurement:
    label: str
    samples: tuple[Sample, ...]

    @property
    def seconds(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def peak_rss_mb(self) -> float:
        return max(s.peak_rss_mb for s in self.samples)


class TimedOut(RuntimeError):
    """The command ran longer than its timeout and was killed."""


@functools.cache
def byte_compile_quantcli() -> None:
    """Write quantcli's bytecode before the first timed run, as installing a wheel does. An editable install on a
    machine with PYTHONDONTWRITEBYTECODE set (this one) otherwise compiles about a hundred modules on every run:
    0.12 s of start-up that no user pays, and all of it serial."""
    import quantcli

    compileall.compile_dir(Path(quantcli.__file__).parent, quiet=1)


def run_once(cmd: Sequence[str], env: Mapping[str, str] | None = None, timeout: float | None = None) -> Sample:
    """With a timeout, the child is polled every 0.2 s (so the time may read up to 0.2 s long) and killed, raising
    TimedOut, when it runs past the timeout."""
    byte_compile_quantcli()
    full_env = {**os.environ, **(env or {})}
    # stderr goes to a file, not a pipe: nothing reads a pipe until the child ends, so a chatty child (progress
    # bars, per-layer logs) would fill its 64 KiB and block forever
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env=full_env, stdout=subprocess.DEVNULL, stderr=err)
        while True:
            pid, status, usage = os.wait4(proc.pid, 0 if timeout is None else os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout:  # type: ignore[operator]
                proc.kill()
                os.wait4(proc.pid, 0)
                raise TimedOut(f"{' '.join(cmd)} was stopped after {timeout:.0f} s")
            time.sleep(0.2)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(cmd)} failed with {proc.returncode}:\n{tail}")
    return Sample(elapsed, usage.ru_maxrss / 1024)  # ru_maxrss is in KiB on Linux


def measure(label: str, cmd: Sequence[str], repeats: int, env: Mapping[str, str] | None = None,
            timeout: float | None = None) -> Measurement:
    return Measurement(label, tuple(run_once(cmd, env, timeout) for _ in range(repeats)))
