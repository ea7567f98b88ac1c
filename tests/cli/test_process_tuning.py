"""The CLI tunes the process before numpy loads: OpenBLAS threads sleep at once, freed memory is reused
(quantcli/cli/__init__.py says why)."""
from __future__ import annotations

import os
import subprocess
import sys

# After a two-thread matmul, how much CPU the process burns while its main thread sleeps for 0.3 s: OpenBLAS's
# default keeps its idle thread spinning for about 2^28 cycles (~0.1 s); with the CLI's setting it sleeps at once.
PROBE = """
import os, sys, time
sys.argv = ["quantcli", "--help"]
import quantcli.cli.app
assert "numpy" not in sys.modules, "numpy loaded before the CLI could set OpenBLAS's environment"
import numpy as np
from threadpoolctl import threadpool_limits
a = np.ones((512, 512), dtype=np.float32)
with threadpool_limits(2, user_api="blas"):
    for _ in range(3):
        a @ a
    before = time.process_time()
    time.sleep(0.3)
    print(os.environ["OPENBLAS_THREAD_TIMEOUT"], time.process_time() - before)
"""


def probe(env: dict[str, str]) -> tuple[str, float]:
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    value, spun = r.stdout.split()
    return value, float(spun)


def test_cli_sets_the_timeout_before_numpy_and_openblas_sleeps() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    value, spun = probe(env)
    assert value == "4"
    assert spun < 0.05, f"OpenBLAS's idle threads burned {spun:.3f} s of CPU in 0.3 s of sleep"


def test_a_timeout_the_caller_set_wins() -> None:
    value, _ = probe({**os.environ, "OPENBLAS_THREAD_TIMEOUT": "12"})
    assert value == "12"


# Page faults while allocating, filling and freeing a 20 MB array 50 times (the engine's pattern, per chunk).
REUSE = """
import resource, sys
if sys.argv[1] == "cli":
    import quantcli.cli
import numpy as np
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(5 << 20, dtype=np.float32)
del a
before = faults()
for _ in range(50):
    a = np.ones(5 << 20, dtype=np.float32)
    del a
print(faults() - before)
"""


def test_cli_reuses_freed_memory_instead_of_faulting_it_in_again() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

    def faults(mode: str) -> int:
        r = subprocess.run([sys.executable, "-c", REUSE, mode], env=env, capture_output=True, text=True, timeout=120,
                           check=False)
        assert r.returncode == 0, r.stderr
        return int(r.stdout)

    plain, cli = faults("plain"), faults("cli")
    assert plain >= 50          # glibc's default: every allocation is mapped and faulted in anew
    assert cli < plain / 10, (plain, cli)
