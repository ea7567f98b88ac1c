"""llama.cpp runs the BERT encoders quantcli converts: token states match transformers' last hidden state, and
all-MiniLM-L6-v2's sentence embeddings (llama.cpp's own tokenizer and mean pooling from our metadata) point the
same way as sentence-transformers' recipe."""
from __future__ import annotations

import numpy as np
import pytest

from tests.fixtures.paths import model_path

from .clients import hf_sentence_embeddings, hf_token_states, llama_sentence_embeddings, llama_token_states
from .conftest import assert_close_to_reference, relative_tolerance

pytestmark = pytest.mark.slow

MINILM = "all-MiniLM-L6-v2"
MIN_COSINE = 0.999
SENTENCES = (
    "A man is eating food.",
    "The new movie is awesome.",
    "Quantized models run on plain CPUs.",
    "Il pleut à Paris depuis ce matin.",
)


@pytest.mark.parametrize("qtype", ["F32", "F16"])
@pytest.mark.parametrize("model", ["tiny-bert", MINILM])
def test_llama_cpp_token_states_match_transformers(model: str, qtype: str, converted, text_ids,  # type: ignore[no-untyped-def]
                                                   llama_cpp_module) -> None:
    ids = text_ids(model)
    ref = hf_token_states(model_path(model), ids)
    got = llama_token_states(converted(model, qtype), ids)
    assert_close_to_reference(got, ref, relative_tolerance(model, qtype), f"{model} {qtype} token states")


def test_minilm_f16_sentence_embeddings_match_sentence_transformers(converted, torch_module,  # type: ignore[no-untyped-def]
                                                                    llama_cpp_module) -> None:
    ref = hf_sentence_embeddings(model_path(MINILM), SENTENCES)
    got = llama_sentence_embeddings(converted(MINILM, "F16"), SENTENCES)
    cosine = (got * ref).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert (cosine > MIN_COSINE).all(), dict(zip(SENTENCES, cosine.round(6)))
    # the pooled vectors are unit length, as sentence-transformers returns them
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
