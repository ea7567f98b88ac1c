"""Run a command and measure its wall time and peak RSS (the child's own, via wait4's rusage)."""
from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
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


def run_once(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> Sample:
    full_env = {**os.environ, **(env or {})}
    # stderr goes to a file, not a pipe: nothing reads a pipe until the child ends, so a chatty child (progress
    # bars, per-layer logs) would fill its 64 KiB and block forever
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env=full_env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(cmd)} failed with {proc.returncode}:\n{tail}")
    return Sample(elapsed, usage.ru_maxrss / 1024)  # ru_maxrss is in KiB on Linux


def measure(label: str, cmd: Sequence[str], repeats: int, env: Mapping[str, str] | None = None) -> Measurement:
    return Measurement(label, tuple(run_once(cmd, env) for _ in range(repeats)))
