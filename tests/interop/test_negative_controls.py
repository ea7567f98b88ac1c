"""The logit comparison can fail: a conversion with one family rule switched off lands far outside the tolerance.

Each case converts a tiny model with one transform disabled and checks that llama.cpp's logits now miss
transformers' by more than ten times the F32 tolerance, so a passing interop test means the rule is applied
right, not that the tolerance is too loose to notice.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantcli.models.base import IDENTITY
from quantcli.models.families.gemma2 import Gemma2
from quantcli.models.families.llama import Llama
from quantcli.pipeline.convert import ConvertRequest, convert, recipe_from_type
from tests.fixtures.paths import model_path

from .clients import llama_logits
from .conftest import relative_tolerance

pytestmark = pytest.mark.slow

MARGIN = 10


@pytest.mark.parametrize(("model", "family"), [("tiny-llama", Llama),    # q/k rope permutation left out
                                               ("tiny-gemma2", Gemma2)])  # norm weights left at w - 1
def test_a_dropped_transform_is_caught_by_the_logit_comparison(model: str, family: type, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                               monkeypatch: pytest.MonkeyPatch, text_ids,
                                                               reference_logits, llama_cpp_module) -> None:
    monkeypatch.setattr(family, "transform_for", lambda self, gguf_name, hf_name, info: IDENTITY)
    out = tmp_path / f"{model}-broken.gguf"
    convert(ConvertRequest(model=str(model_path(model)), recipe=recipe_from_type("F32"), output=out, threads=2,
                           verify="none"))
    ref = reference_logits(model)
    diff = float(np.abs(llama_logits(out, text_ids(model)) - ref).max())
    assert diff > MARGIN * relative_tolerance(model, "F32") * float(np.abs(ref).max())
