"""A quantized file behaves like the original where a user sees it: SmolLM2 in Q8_0 answers a chat prompt with
exactly the tokens transformers picks greedily from the float32 checkpoint."""
from __future__ import annotations

import pytest

from tests.fixtures.paths import model_path

from .clients import hf_greedy, hf_tokenizer, llama_greedy

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
N_NEW = 16
MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def test_smollm2_q8_0_greedy_generation_equals_transformers(converted, torch_module, llama_cpp_module) -> None:  # type: ignore[no-untyped-def]
    folder = model_path(MODEL)
    tokenizer = hf_tokenizer(folder)
    prompt_text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    prompt = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    expected = hf_greedy(folder, prompt, N_NEW)
    got = llama_greedy(converted(MODEL, "Q8_0"), prompt, N_NEW)
    assert got == expected, (f"llama.cpp (Q8_0): {tokenizer.decode(got)!r}\n"
                             f"transformers:     {tokenizer.decode(expected)!r}")
