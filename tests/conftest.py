"""Fixtures shared across the test tree."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Callable

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite never reads or writes the developer's ~/.cache/quantcli: a stale record there could hide a bug,
    and tests should leave nothing behind. Tests that study the cache set their own folder on top of this one."""
    mp = pytest.MonkeyPatch()
    mp.setenv("QUANTCLI_CACHE_DIR", str(tmp_path_factory.mktemp("quantcli-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def ggml_quantize() -> Callable[..., np.ndarray]:
    """llama.cpp's own block quantizer (tests/ggml_oracle.py); skips the test when llama-cpp-python is missing
    (`make test` always installs it)."""
    pytest.importorskip("llama_cpp")
    from tests.ggml_oracle import ggml_quantize as quantize

    return quantize
