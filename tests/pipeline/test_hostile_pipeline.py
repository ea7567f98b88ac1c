"""The pipeline's own inputs gone wrong: an unwritable cache, a full disk at the manifest, an imatrix for another
model, and verify's figures for decoded Inf/NaN."""
from __future__ import annotations

import errno
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from quantcli.errors import InputError, OutputError
from quantcli.pipeline import manifest as manifest_module
from quantcli.pipeline.cache import StageCache, StageKey
from quantcli.pipeline.convert import ConvertRequest, convert, recipe_from_type
from quantcli.stages.download import repo_id_problem
from quantcli.stages.verify import error_figures
from tests.fixtures.paths import model_path


def q8_request(tmp_path: Path, **kw: object) -> ConvertRequest:
    return ConvertRequest(model=str(model_path("tiny-llama")), recipe=recipe_from_type("Q8_0"),
                          output=tmp_path / "out" / "m.gguf", verify="none", **kw)  # type: ignore[arg-type]


def test_cache_folder_that_is_a_file_turns_the_cache_off_before_writing(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("")
    warnings: list[str] = []
    cache = StageCache(not_a_dir, warn=warnings.append)
    assert not cache.enabled and "cannot be written" in warnings[0]
    out = tmp_path / "o.gguf"
    out.write_bytes(b"x")
    key = StageKey("quantize", 1, {}, {})
    cache.store(key, out, sha256="0" * 64)     # a no-op, not an error
    assert cache.lookup(key, out) is None and not_a_dir.read_text() == ""


def test_cache_that_fills_up_after_the_probe_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[str] = []
    cache = StageCache(tmp_path / "cache", warn=warnings.append)
    assert cache.enabled

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("quantcli.pipeline.cache.atomic_write", full)
    out = tmp_path / "o.gguf"
    out.write_bytes(b"x")
    cache.store(StageKey("quantize", 1, {}, {}), out, sha256="0" * 64)
    assert not cache.enabled and "No space left on device" in warnings[-1]


@pytest.mark.slow  # needs the built test models
def test_disk_full_at_the_manifest_is_an_output_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manifest_module, "atomic_write", full)
    with pytest.raises(OutputError, match="writing the run manifest .* failed: No space left on device") as info:
        convert(q8_request(tmp_path, manifest=True))
    assert "were written" in str(info.value)   # an OutputError: the output side's exit code, not internal
    assert (tmp_path / "out" / "m.gguf").is_file()


def legacy_imatrix(path: Path, entries: dict[str, int]) -> Path:
    blob = struct.pack("<i", len(entries))
    for name, n in entries.items():
        blob += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", 1, n)
        blob += np.ones(n, dtype="<f4").tobytes()
    path.write_bytes(blob)
    return path


@pytest.mark.slow  # needs the built test models
def test_imatrix_for_another_model_is_refused_before_writing(tmp_path: Path) -> None:
    im = legacy_imatrix(tmp_path / "im.dat", {"model.layers.0.mlp.up_proj": 256, "blk.77.ffn_up.weight": 256})
    with pytest.raises(InputError, match="was made for another model: 2 of its 2 entries name no matrix"):
        convert(q8_request(tmp_path, imatrix=im))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # needs the built test models
def test_partial_imatrix_says_what_was_used(tmp_path: Path) -> None:
    # entries naming tensors the model lacks are refused (test above); one that covers only part is used and said
    im = legacy_imatrix(tmp_path / "im.dat", {"blk.0.ffn_up.weight": 256})
    warnings: list[str] = []
    convert(q8_request(tmp_path, imatrix=im), warn=warnings.append)
    assert len(warnings) == 1
    assert "used for 1 of" in warnings[0]


@pytest.mark.parametrize("got", [[1.0, 1.0, math.inf], [1.0, math.nan, 1.0], [-math.inf, 1.0, 1.0]])
def test_verify_figures_are_defined_for_inf_and_nan(got: list[float]) -> None:
    rmse, max_abs, snr = error_figures(np.ones(3, np.float32), np.array(got, np.float32))
    assert not math.isfinite(rmse) and not math.isfinite(max_abs) and snr == -math.inf   # NaN or inf, never a crash


def test_verify_figures_for_signal_free_and_exact_tensors() -> None:
    assert error_figures(np.zeros(3), np.ones(3))[2] == -math.inf
    assert error_figures(np.ones(3), np.ones(3)) == (0.0, 0.0, math.inf)
    assert error_figures(np.full(3, 1e300), np.full(3, 1e300) * 0.5)[2] == -math.inf   # overflowing sums


@pytest.mark.parametrize("repo, ok", [("me/模型", False), ("me/a--b", False), ("me/x..y", False), ("me/x.git", False),
                                      ("me/-x", False), ("me/x-", False), ("a/b/c", False), ("me/model-GGUF", True),
                                      ("Org_1/Name.v2", True)])
def test_repo_ids_follow_the_hub_rules(repo: str, ok: bool) -> None:
    assert (repo_id_problem(repo) is None) == ok
