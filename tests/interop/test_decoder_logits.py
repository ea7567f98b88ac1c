"""llama.cpp runs every decoder quantcli converts and gives transformers' logits at every position.

For each model and for F32 and F16 files: the same token ids go to llama.cpp (our GGUF) and to transformers
(the source checkpoint, float32); the logits must agree within the tolerance of conftest.py at every position,
and so must the top-1 token.
"""
from __future__ import annotations

import numpy as np
import pytest

from .clients import llama_logits
from .conftest import assert_close_to_reference, relative_tolerance

pytestmark = pytest.mark.slow

DECODERS = (
    "SmolLM2-135M-Instruct",   # real weights, llama, tied embeddings, 30 layers
    "tiny-llama",              # untied output, GQA
    "tiny-llama-bf16",         # BF16 source
    "tiny-llama-f16",          # F16 source
    "tiny-mistral",
    "tiny-qwen2",              # q/k/v biases
    "tiny-qwen3",              # q/k norms, q wider than hidden
    "tiny-gemma2",             # +1 norms, post norms, soft-capping, sliding window pattern
    "tiny-gemma3",             # q/k norms, local rope base
    "tiny-phi3",               # fused qkv and gate_up
)


def assert_same_top1(got: np.ndarray, ref: np.ndarray, bound: float, what: str) -> None:
    """The argmax agrees at every position.

    The one allowance: where the reference's best two logits are closer than twice the allowed error, the
    reference itself cannot rank them at this precision, and llama.cpp may pick either of the tied tokens.
    """
    ref_top, got_top = ref.argmax(axis=1), got.argmax(axis=1)
    for pos in np.nonzero(ref_top != got_top)[0]:
        margin = float(ref[pos, ref_top[pos]] - ref[pos, got_top[pos]])
        assert margin <= 2 * bound, (f"{what}: position {pos}: llama.cpp's top token {got_top[pos]} differs from "
                                     f"transformers' {ref_top[pos]}, which leads it by {margin:.3g} (> {2 * bound:.3g})")


@pytest.mark.parametrize("qtype", ["F32", "F16"])
@pytest.mark.parametrize("model", DECODERS)
def test_llama_cpp_logits_match_transformers(model: str, qtype: str, converted, text_ids, reference_logits,  # type: ignore[no-untyped-def]
                                             llama_cpp_module) -> None:
    ids = text_ids(model)
    ref = reference_logits(model)
    got = llama_logits(converted(model, qtype), ids)
    what = f"{model} {qtype}"
    bound = assert_close_to_reference(got, ref, relative_tolerance(model, qtype), what)
    assert_same_top1(got, ref, bound, what)
