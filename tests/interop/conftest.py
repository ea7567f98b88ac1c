"""Shared pieces of the interop tests: conversions done once per session, reference outputs, tolerances.

A missing test model fails with the `make models` message (tests.fixtures.paths.model_path), never skips.

Tolerances are relative to the largest |value| of the transformers reference (logits or hidden states), so one
rule serves SmolLM2 (logits up to ~36) and the random tiny models (~1). Measured with llama.cpp 0c1e570 on this
suite's models (2 threads, float32 KV cache):
- F32 file: llama.cpp computes in float32 and differs from torch only in summation order: at most 2.1e-6
  relative (SmolLM2), 1e-6 on the tiny models. Allowed: 2e-5.
- F32 file, GELU families (gemma, bert): ggml's CPU GELU looks its result up in a half-precision table (the
  input and output are rounded to float16, relative step 2^-11 = 4.9e-4), and bert's exact (erf) GELU meets
  llama.cpp's tanh approximation: up to 3.2e-4 relative. Allowed: 2e-3.
- F16 file: every weight, and every activation entering a matmul, is rounded to float16 (2^-11 each): up to
  2.4e-3 relative after SmolLM2's 30 layers, 1.2e-3 on the tiny models. Allowed: 5e-3.
A conversion bug (a missing rope permutation, an unshifted gemma norm, a swapped projection) moves the output
by the order of the values themselves, hundreds of times these bounds: test_negative_controls.py shows it.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.paths import model_path

F32_REL_TOL = 2e-5
F32_GELU_REL_TOL = 2e-3
F16_REL_TOL = 5e-3

# Ordinary text, about 60 tokens with a real vocabulary (every position is compared). A tiny vocabulary splits
# it much finer, so at most MAX_TOKENS are used: llama-cpp-python's buffers hold n_ctx = 128 positions.
MAX_TOKENS = 96
TEXT = ("The quick brown fox jumps over the lazy dog. Quantization stores each weight in fewer bits, and a "
        "careful converter keeps the model's answers unchanged: llama.cpp reads the file, runs every layer, and "
        "returns the same next-token scores as the original checkpoint.")

# bitsandbytes' own CPU kernel. On a CPU with AVX512-BF16 (recent Xeons, Zen 4), Linear4bit's forward in eval mode
# repacks the weight and runs a fused kernel that computes in bfloat16: the input, the block scales and the output
# are rounded to bf16 (bitsandbytes/backends/cpu/ops.py, gemv_4bit). Elsewhere it dequantizes the weight to the
# compute dtype and calls torch's linear, in float32 for a float32 model. The float32 path is the one compared
# exactly (bnb_float32_path); the bf16 kernel's logits are held to bf16 precision, 2^-8 relative per rounding:
# measured up to 0.6 % of the largest logit on tiny-llama and 1.7 % on SmolLM2's 30 layers, with the same top-1
# token everywhere (Xeon with AMX, 2026-11-28). A wrong weight moves the logits by their own order (see above).
BNB_BF16_REL_TOL = 5e-2
BNB_BF16_TOP1 = 0.9     # share of positions whose top-1 token must agree: bf16 may flip a near-tie


def bnb_bf16_kernel() -> bool:
    """Whether bitsandbytes' Linear4bit takes its bf16 kernel on this CPU (it asks its native library)."""
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


def bnb_float32_path(model: object) -> int:
    """Make every bitsandbytes Linear4bit in `model` compute as bitsandbytes does on a CPU without AVX512-BF16
    (dequantize, then float32 linear); returns how many would have taken the bf16 kernel on this CPU. Call it
    before the first forward: that forward repacks the weights for the kernel."""
    import bitsandbytes as bnb

    changed = 0
    for module in model.modules():  # type: ignore[attr-defined]
        if isinstance(module, bnb.nn.Linear4bit) and module.support_avx512bf16_for_cpu:
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def relative_tolerance(model: str, qtype: str) -> float:
    """The allowed max |llama.cpp - transformers| over the reference's max |value| (see the module docstring)."""
    import json

    from quantcli.models.base import adapter_for

    folder = model_path(model)
    numerics = adapter_for(json.loads((folder / "config.json").read_text()), folder).numerics
    if qtype == "F16":
        return F16_REL_TOL
    if qtype == "F32":
        return F32_GELU_REL_TOL if numerics.activation.startswith("gelu") else F32_REL_TOL
    raise ValueError(f"no logit tolerance for {qtype}")


def assert_close_to_reference(got: np.ndarray, ref: np.ndarray, rel_tol: float, what: str) -> float:
    """Max |got - ref| within rel_tol x max |ref|; returns that bound for further checks."""
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, reference {ref.shape}"
    bound = rel_tol * float(np.abs(ref).max())
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    worst = np.unravel_index(int(diff.argmax()), diff.shape)
    assert diff.max() <= bound, (f"{what}: max |llama.cpp - transformers| = {diff.max():.3g} at {worst} "
                                 f"exceeds {bound:.3g} ({rel_tol:g} x max |reference| {np.abs(ref).max():.3g})")
    return bound


@pytest.fixture(scope="session")
def llama_cpp_module():  # type: ignore[no-untyped-def]
    # make test always installs llama-cpp-python; a bare checkout without it skips these tests only
    return pytest.importorskip("llama_cpp")


@pytest.fixture(scope="session")
def torch_module():  # type: ignore[no-untyped-def]
    pytest.importorskip("transformers")
    return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """converted(model, type) -> the GGUF quantcli writes for it; each (model, type) is converted once."""
    from quantcli.pipeline.convert import ConvertRequest, convert, recipe_from_type

    cache: dict[tuple[str, str], Path] = {}
    folder = tmp_path_factory.mktemp("interop-gguf")

    def get(model: str, qtype: str) -> Path:
        key = (model, qtype)
        if key not in cache:
            out = folder / f"{model}-{qtype}.gguf"
            convert(ConvertRequest(model=str(model_path(model)), recipe=recipe_from_type(qtype), output=out,
                                   threads=2, verify="none"))
            cache[key] = out
        return cache[key]

    return get


@pytest.fixture(scope="session")
def text_ids(torch_module) -> Callable[[str], list[int]]:  # type: ignore[no-untyped-def]
    """text_ids(model) -> TEXT tokenized by the model's own HF tokenizer (special tokens as it adds them), cut to
    MAX_TOKENS."""
    from .clients import hf_tokenizer

    cache: dict[str, list[int]] = {}

    def get(model: str) -> list[int]:
        if model not in cache:
            cache[model] = list(hf_tokenizer(model_path(model))(TEXT)["input_ids"])[:MAX_TOKENS]
        return cache[model]

    return get


@pytest.fixture(scope="session")
def reference_logits(text_ids) -> Callable[[str], np.ndarray]:  # type: ignore[no-untyped-def]
    """reference_logits(model) -> transformers' float32 logits over text_ids(model); computed once per model."""
    from .clients import hf_logits

    cache: dict[str, np.ndarray] = {}

    def get(model: str) -> np.ndarray:
        if model not in cache:
            cache[model] = hf_logits(model_path(model), text_ids(model))
        return cache[model]

    return get


def assert_bnb_kernel_close(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    """bitsandbytes' bf16 CPU kernel against float32 logits [positions, vocab]: bf16 precision, same top-1."""
    assert_close_to_reference(got, ref, BNB_BF16_REL_TOL, what)
    agree = float(np.mean(got.argmax(axis=-1) == ref.argmax(axis=-1)))
    assert agree >= BNB_BF16_TOP1, f"{what}: same top-1 token at {agree:.0%} of positions"
