"""A recipe mixing GGUF files and safetensors folders on tiny-llama: the pack stage reads each source tensor once
for all calibration-free outputs, the files are those of single-output runs, the cache spares outputs (and the
reads only they need), and Ctrl-C mid-pack leaves nothing under a final name."""
from __future__ import annotations

import shutil
import signal
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from quantcli.io.checkpoint import Checkpoint
from quantcli.pipeline.cache import file_sha256, folder_files
from quantcli.pipeline.convert import ConvertRequest, convert, recipe_from_type
from quantcli.pipeline.convert_int import IntConvertRequest, convert_int
from quantcli.recipe import parse_recipe
from tests.pipeline.test_interrupt import cli, env_for, finals_and_partials, interrupt

# needs the built test models (make models); the bytes depend on the backend: run with both
pytestmark = [pytest.mark.slow, pytest.mark.backend]

MIXED4 = """\
name: mixed4
outputs:
  - type: Q4_K_M
  - type: Q8_0
  - format: compressed-tensors
    scheme: W4A16
    group_size: 32
  - format: bnb-nf4
    ignore: ["re:.*down_proj"]
"""
# tiny-llama's down_proj rows (672 values) take groups of 32 but not NF4's blocks of 64


@pytest.fixture()
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Every read of a source tensor during the test, by name: copied (read_raw) or mapped (map_raw)."""
    counts: Counter = Counter()
    for method in ("read_raw", "map_raw"):
        def counted(self: Checkpoint, name: str, real=getattr(Checkpoint, method)) -> np.ndarray:  # type: ignore[no-untyped-def]
            counts[name] += 1
            return real(self, name)
        monkeypatch.setattr(Checkpoint, method, counted)
    return counts


def mixed(tmp_path: Path, model: Path, out: Path) -> ConvertRequest:
    recipe = parse_recipe(MIXED4, source=str(tmp_path / "mixed4.yaml"))
    return ConvertRequest(model=str(model), recipe=recipe, output=out, threads=2, verify="none",
                          cache_dir=tmp_path / "cache", manifest=True)


def test_a_mixed_recipe_reads_each_tensor_once_and_writes_the_bytes_of_single_runs(
        tiny_llama: Path, tmp_path: Path, reads: Counter) -> None:
    out = tmp_path / "out"
    result = convert(mixed(tmp_path, tiny_llama, out))
    ckpt = Checkpoint.open(tiny_llama)
    assert set(reads) == set(ckpt.tensors) and set(reads.values()) == {1}
    packs = [s for s in result.stages if s.stage == "pack"]
    assert [(s.output, s.status) for s in packs if s.output is None] == [(None, "ran")]   # one read for the group
    assert sorted(s.status for s in packs if s.output is not None) == ["written"] * 4

    alone = tmp_path / "alone"
    for mix in ("Q4_K_M", "Q8_0"):
        convert(ConvertRequest(model=str(tiny_llama), recipe=recipe_from_type(mix), output=alone / f"{mix}.gguf",
                               threads=1, verify="none"))
        assert file_sha256(alone / f"{mix}.gguf") == file_sha256(out / f"tiny-llama-{mix}.gguf")
    for name, request in (("tiny-llama-W4A16", IntConvertRequest(model=str(tiny_llama), scheme="W4A16", group_size=32)),
                          ("tiny-llama-NF4", IntConvertRequest(model=str(tiny_llama), format="bnb-nf4",
                                                               ignore=("re:.*down_proj",)))):
        convert_int(replace(request, output=alone / name, threads=1, verify="none"))
        assert folder_files(alone / name) == folder_files(out / name)


def test_outputs_that_hit_the_cache_are_neither_written_nor_read_for(tiny_llama: Path, tmp_path: Path,
                                                                      reads: Counter) -> None:
    out = tmp_path / "out"
    convert(mixed(tmp_path, tiny_llama, out))
    reads.clear()
    again = convert(mixed(tmp_path, tiny_llama, out))
    assert not reads                                         # every output hit: nothing read
    assert all(o.cached for o in again.outputs) and all(f.cached for f in again.folders)
    assert not [s for s in again.stages if s.stage == "pack" and s.output is None]

    # one GGUF gone: only the GGUF sources are read, once each, and only that file is written
    before = {p.name: p.stat().st_mtime_ns for p in (out / "tiny-llama-NF4").iterdir()}
    (out / "tiny-llama-Q8_0.gguf").unlink()
    third = convert(mixed(tmp_path, tiny_llama, out))
    gguf_sources = {s for t in third.outputs[1].plan.tensors for s in t.spec.sources}
    assert set(reads) == gguf_sources and set(reads.values()) == {1}
    assert [o.cached for o in third.outputs] == [True, False]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "tiny-llama-NF4").iterdir()} == before

    # one folder gone: the GGUFs hit, the folder is written alone from one read of its tensors
    reads.clear()
    shutil.rmtree(out / "tiny-llama-W4A16")
    fourth = convert(mixed(tmp_path, tiny_llama, out))
    assert set(reads) == set(Checkpoint.open(tiny_llama).tensors) and set(reads.values()) == {1}
    assert [f.cached for f in fourth.folders] == [False, True]


def test_ctrl_c_mid_pack_leaves_no_output_of_a_mixed_recipe(tiny_llama: Path, tmp_path: Path) -> None:
    (tmp_path / "mixed4.yaml").write_text(MIXED4)
    clean = cli(["convert", str(tiny_llama), "--recipe", str(tmp_path / "mixed4.yaml"), "--verify", "none",
                 "-o", str(tmp_path / "clean")], env_for(tmp_path, QUANTCLI_CACHE_DIR=str(tmp_path / "clean-cache")))
    assert clean.returncode == 0, clean.stderr
    out, marker = tmp_path / "out", tmp_path / "writing"
    args = ["convert", str(tiny_llama), "--recipe", str(tmp_path / "mixed4.yaml"), "--verify", "none", "-o", str(out)]
    stopped = interrupt(args, env_for(tmp_path, QC_MARKER=str(marker), QC_SLOW_TYPE="Q8_0"), marker, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr
    finals, partials = finals_and_partials(out)
    assert finals == [] and partials == []
    assert not out.exists() or [p.name for p in out.iterdir() if not p.name.startswith(".")] == []   # nor a folder
    rerun = cli(args, env_for(tmp_path))
    assert rerun.returncode == 0, rerun.stderr
    for name in ("tiny-llama-Q4_K_M.gguf", "tiny-llama-Q8_0.gguf"):
        assert file_sha256(out / name) == file_sha256(tmp_path / "clean" / name)
    for name in ("tiny-llama-W4A16", "tiny-llama-NF4"):
        assert folder_files(out / name) == folder_files(tmp_path / "clean" / name)
