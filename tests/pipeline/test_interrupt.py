"""Ctrl-C and SIGTERM during a write: no file under a final name, exit 130/143, and the next run finishes the
work (skipping what was complete) with the bytes of an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quantcli.pipeline.cache import file_sha256
from tests.fixtures.paths import REPO_ROOT
from tests.fixtures.signals import default_sigint

# needs the built test models (make models)
pytestmark = pytest.mark.slow


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, QUANTCLI_NO_PROGRESS="1", QUANTCLI_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quantcli.cli.app", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)


def interrupt(args: list[str], env: dict[str, str], marker: Path, signum: int) -> subprocess.CompletedProcess:
    """Start the slowed CLI, wait until it is writing, send `signum`, and collect the result."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.pipeline.fault_cli", *args], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            pytest.fail(f"the run ended or stalled before writing (rc {proc.returncode}): {err}")
        time.sleep(0.02)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def finals_and_partials(folder: Path) -> tuple[list[str], list[str]]:
    names = sorted(p.name for p in folder.rglob("*")) if folder.exists() else []
    return [n for n in names if n.endswith(".gguf") and not n.startswith(".")], [n for n in names if "partial" in n]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_write_leaves_nothing_and_the_rerun_matches_a_clean_run(
        tiny_llama: Path, release3: Path, tmp_path: Path, signum: int, code: int) -> None:
    clean = cli(["convert", str(tiny_llama), "--recipe", str(release3), "--verify", "none", "-o", str(tmp_path / "clean")],
                env_for(tmp_path, QUANTCLI_CACHE_DIR=str(tmp_path / "clean-cache")))
    assert clean.returncode == 0, clean.stderr
    out = tmp_path / "out"
    marker = tmp_path / "writing"
    args = ["convert", str(tiny_llama), "--recipe", str(release3), "--verify", "none", "-o", str(out)]
    stopped = interrupt(args, env_for(tmp_path, QC_MARKER=str(marker)), marker, signum)
    assert stopped.returncode == code, stopped.stderr
    assert "interrupted" in stopped.stderr and "Traceback" not in stopped.stderr
    finals, partials = finals_and_partials(out)
    assert finals == [] and partials == []
    assert not list(out.glob("*.manifest.json"))
    rerun = cli(args, env_for(tmp_path))
    assert rerun.returncode == 0, rerun.stderr
    for name in ("tiny-llama-F16.gguf", "tiny-llama-Q8_0.gguf", "tiny-llama-Q4_0.gguf"):
        assert file_sha256(out / name) == file_sha256(tmp_path / "clean" / name)


def test_interrupted_batch_resumes_skipping_the_finished_job(tiny_llama: Path, tmp_path: Path) -> None:
    batch = tmp_path / "batch.yaml"
    batch.write_text(f"output: out\nverify: none\nmodels: [{tiny_llama}]\nrecipes: [q8_0, f16]\n")
    marker = tmp_path / "writing"
    stopped = interrupt(["batch", str(batch)], env_for(tmp_path, QC_MARKER=str(marker), QC_SLOW_TYPE="F16"),
                        marker, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    finals, partials = finals_and_partials(tmp_path / "out")
    assert finals == ["tiny-llama-Q8_0.gguf"] and partials == []     # the first job had finished
    rerun = cli(["batch", str(batch), "--json"], env_for(tmp_path))
    assert rerun.returncode == 0, rerun.stderr
    import json

    jobs = {j["id"]: j for j in json.loads(rerun.stdout)["jobs"]}
    assert jobs["tiny-llama.q8_0"]["outputs"][0]["cached"] is True
    assert jobs["tiny-llama.f16"]["outputs"][0]["cached"] is False


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, read from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            pids.append(int(entry))
    return pids


def start_in_own_group(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """As a terminal starts a job: its own process group, SIGINT at its default (a child started from a shell
    with `&` would inherit SIGINT ignored and prove nothing)."""
    return subprocess.Popen([sys.executable, "-m", "tests.pipeline.fault_cli", *args], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(marker: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the run ended or stalled before writing (rc {proc.returncode}): {proc.communicate()[1]}")
        time.sleep(0.01)


@pytest.mark.parametrize("delay", [0.0, 0.15, 0.4])
def test_ctrl_c_to_the_group_stops_a_parallel_batch_cleanly(tiny_llama: Path, tmp_path: Path, delay: float) -> None:
    batch = tmp_path / "batch.yaml"
    batch.write_text(f"output: out\nverify: none\nmodels: [{tiny_llama}]\nrecipes: [q8_0, f16, q4_0]\n")
    marker = tmp_path / "writing"
    proc = start_in_own_group(["batch", str(batch), "--jobs", "2"],
                              env_for(tmp_path, QC_MARKER=str(marker), QC_SLOW_SECONDS="0.05"))
    wait_for(marker, proc)
    time.sleep(delay)                                   # different points of the write
    os.killpg(proc.pid, signal.SIGINT)                  # what Ctrl-C in a terminal does
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the batch did not exit within 120 s of Ctrl-C")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Signal" not in err and "interrupted" in err
    deadline = time.monotonic() + 30
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert group_members(proc.pid) == []                # no worker, no orphan left running
    _, partials = finals_and_partials(tmp_path / "out")
    assert partials == [] and not list((tmp_path / "out").glob(".*.lock"))


def test_partials_of_a_killed_run_are_swept_by_the_next_run(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    marker = tmp_path / "writing"
    args = ["convert", str(tiny_llama), "--type", "Q8_0", "--verify", "none", "-o", str(out)]
    proc = start_in_own_group(args, env_for(tmp_path, QC_MARKER=str(marker)))
    wait_for(marker, proc)
    os.killpg(proc.pid, signal.SIGKILL)                 # no handler runs: the partial file stays
    proc.communicate(timeout=60)
    _, partials = finals_and_partials(out)
    assert len(partials) == 1 and str(proc.pid) in partials[0]
    rerun = cli(args, env_for(tmp_path))
    assert rerun.returncode == 0, rerun.stderr
    finals, partials = finals_and_partials(out)
    assert finals == ["tiny-llama-Q8_0.gguf"] and partials == []
    assert not list(out.glob(".*.lock"))                # the killed run's lock file was taken over and removed


def test_concurrent_runs_to_one_path_leave_a_manifest_that_describes_the_file(tiny_llama: Path, tmp_path: Path) -> None:
    import json

    target = tmp_path / "out" / "m.gguf"
    marker = tmp_path / "writing"
    first = start_in_own_group(["convert", str(tiny_llama), "--type", "Q8_0", "-o", str(target)],
                               env_for(tmp_path, QC_MARKER=str(marker)))
    wait_for(marker, first)                             # the first run is writing, slowly
    second = start_in_own_group(["convert", str(tiny_llama), "--type", "Q4_0", "-o", str(target)],
                                env_for(tmp_path))
    results = [p.communicate(timeout=600) for p in (first, second)]
    assert (first.returncode, second.returncode) == (0, 0), results
    assert "another quantcli run is writing" in results[1][1]      # the second waited for the first
    manifest = json.loads((tmp_path / "out" / "m.manifest.json").read_text())
    (entry,) = manifest["outputs"]
    assert entry["sha256"] == file_sha256(target) and entry["bytes"] == target.stat().st_size
    assert entry["type"] == "Q4_0"                      # the second run finished last: its file and its manifest
