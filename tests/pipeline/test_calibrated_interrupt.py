"""Ctrl-C or SIGTERM while a calibrated method walks the blocks (block 0's choices already spooled): exit 130/143,
no folder under the final name, no partial folder and no spool left beside it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.paths import REPO_ROOT, model_path
from tests.fixtures.signals import default_sigint

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_walk_leaves_nothing(tmp_path: Path, signum: int, code: int) -> None:
    marker = tmp_path / "stalled"
    out = tmp_path / "out"
    env = dict(os.environ, QUANTCLI_NO_PROGRESS="1", HF_HUB_OFFLINE="1", QUANTCLI_TEST_MARKER=str(marker),
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "tests.pipeline.calibrated_cli", "convert",
                             str(model_path("tiny-llama")), "--format", "compressed-tensors", "--group-size", "32",
                             "--method", "t-stall", "--ctx", "32", "--chunks", "2", "-o", str(out)],
                            env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _, err = proc.communicate()
            pytest.fail(f"the run ended or stalled before block 1 (rc {proc.returncode}): {err}")
        time.sleep(0.02)
    spool = [p for p in tmp_path.glob(".out.partial-*/.quantcli-choices/*.npy")]
    assert spool, "block 0's choices are spooled inside the partial folder"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stalled"]
