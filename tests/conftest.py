"""Fixtures shared across the test tree, and the rules that keep the test tiers honest."""
from __future__ import annotations

import doctest
import os

# first: the worker's share of the cores has to be in the environment before numpy and torch load their thread pools
from tests.fixtures import threads  # noqa: F401  (isort: skip)
from collections.abc import Iterator
from typing import Callable

import numpy as np
import pytest
from _pytest.doctest import DoctestItem

from tests.fixtures.paths import MODELS_ENV


# tryfirst: pytest-xdist's own hook (in each worker) reads the xdist_group marks this one adds.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A docstring whose every example is marked +SKIP is a usage sketch, not a test: leave it out rather than
    report it as a skipped test on every run."""
    sketches = [item for item in items if isinstance(item, DoctestItem) and item.dtest is not None
                and all(example.options.get(doctest.SKIP) for example in item.dtest.examples)]
    if sketches:
        config.hook.pytest_deselected(items=sketches)
        items[:] = [item for item in items if item not in sketches]
    for item in items:
        group = shared_fixture_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


SHARED_SCOPES = ("module", "package", "session")


def shared_fixture_group(item: pytest.Item) -> str | None:
    """The pytest-xdist group of a test (`make test` runs `-n 2 --dist loadgroup`, docs/ci.md), or None to let
    the scheduler send it to either worker on its own.

    A module- or session-scoped fixture is built once per worker process: a test module whose tests share such a
    fixture of its own (a conversion, a compiled reader, a loaded model) keeps them on one worker, so the fixture
    is built once, as in a serial run. A test that already names its group (tests/oracle splits by model) keeps
    it; shared fixtures of a conftest (tests/interop's conversions, cached per model) are cheap enough to be
    built once per worker."""
    if item.get_closest_marker("xdist_group") is not None:
        return None
    info = getattr(item, "_fixtureinfo", None)
    if info is None:                     # a doctest: no fixtures of its own
        return None
    module = item.nodeid.split("::", 1)[0]
    for name in item.fixturenames:
        definitions = info.name2fixturedefs.get(name)
        if definitions and definitions[-1].scope in SHARED_SCOPES and definitions[-1].baseid == module:
            return module
    return None


@pytest.fixture(autouse=True)
def models_only_in_slow_tests(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`pytest -m "not slow"` must pass on a clean clone, where no test model is built: so a test not marked
    slow sees an empty models folder even on a machine that has them, and fails (MissingModelError naming the
    folder below) the day it starts to need a model without saying so."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv(MODELS_ENV, str(tmp_path_factory.getbasetemp() / "no-models-outside-slow-tests"))


# Where huggingface_hub and transformers look for the hub cache, as the suite was started. Some libraries the
# interop tests import change these for the whole process (tokenicer, which gptqmodel imports, even at collection,
# sets HF_HOME and HF_HUB_CACHE), and a later test's subprocess would inherit them: a test's own HF_HOME would
# then point nowhere.
HUB_CACHE_KEYS = ("HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_MODULES_CACHE")
HUB_CACHE_AT_START = {key: os.environ.get(key) for key in HUB_CACHE_KEYS}


def _restore_hub_cache_keys() -> None:
    for key, value in HUB_CACHE_AT_START.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def hub_cache_as_started() -> Iterator[None]:
    _restore_hub_cache_keys()
    yield
    _restore_hub_cache_keys()


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
