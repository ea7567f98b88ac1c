"""Shared pieces of the pipeline tests: the tiny test model and an isolated stage cache."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.paths import model_path

RELEASE3 = """\
name: release3
description: three types from one read
outputs:
  - type: F16
  - type: Q8_0
  - type: Q4_0
"""


@pytest.fixture()
def tiny_llama() -> Path:
    return model_path("tiny-llama")


@pytest.fixture()
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "stage-cache"
    monkeypatch.setenv("QUANTCLI_CACHE_DIR", str(folder))
    return folder


@pytest.fixture()
def release3(tmp_path: Path) -> Path:
    path = tmp_path / "release3.yaml"
    path.write_text(RELEASE3)
    return path
