"""Fixtures shared across the test tree."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest


@pytest.fixture(scope="session")
def ggml_quantize() -> Callable[..., np.ndarray]:
    """llama.cpp's own block quantizer (tests/ggml_oracle.py); skips the test when llama-cpp-python is missing
    (`make test` always installs it)."""
    pytest.importorskip("llama_cpp")
    from tests.ggml_oracle import ggml_quantize as quantize

    return quantize
