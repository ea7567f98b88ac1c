"""The mix rules against llama.cpp's own quantizer: same input GGUF, same switches, same type for every tensor.

The oracle tests quantize tiny real models (tests/quant/mix_fixtures.py) with llama_model_quantize and compare
the type of each tensor in its output with choose_types on the names and shapes of the input, and the context
read from the input's metadata, as the converter will compute it.
"""
from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf import Keys
from gguf import LlamaFileType as F
from hypothesis import given, settings
from hypothesis import strategies as st

from quantcli.errors import InputError
from quantcli.quant.mixes import (
    MIXES, MixContext, MixOptions, MixTensor, choose_types, get_mix, parse_tensor_type_option,
)
from tests.quant.mix_fixtures import FIXTURE_MODELS, SyntheticModel, fixture_gguf, synthetic_gguf
from tests.gguf_files import scalar_metadata, tensor_shapes, tensor_types

# Every mix the brief asks for, spelled as llama-quantize spells them.
SUPPORTED_MIXES = (
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L",
    "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0",
)
# llama.cpp refuses these without an importance matrix
MIXES_NEEDING_IMATRIX = {"Q2_K_S"}

SYNTHETIC_MODELS = (
    SyntheticModel("llama-70b", "llama", n_layer=80, n_head=8, n_head_kv=1),
    SyntheticModel("llama-65b", "llama", n_layer=80, n_head=8, n_head_kv=8),
    SyntheticModel("qwen2-80-blocks", "qwen2", n_layer=80, n_head=8, n_head_kv=8),
    SyntheticModel("llama-80-blocks-8-experts", "llama", n_layer=80, n_head=8, n_head_kv=1, n_expert=8),
    SyntheticModel("llama-gqa-3", "llama", n_layer=12, n_head=12, n_head_kv=4),
)
MODELS_BY_NAME = {m.name: m for m in FIXTURE_MODELS}
SYNTHETIC_BY_NAME = {m.name: m for m in SYNTHETIC_MODELS}


# --- reading an input GGUF the way the converter sees a model ---------------------------------------------------

@dataclass(frozen=True)
class ModelInput:
    path: Path
    tensors: tuple[MixTensor, ...]
    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int

    def context(self, has_imatrix: bool = False) -> MixContext:
        return MixContext(arch=self.arch, n_layer=self.n_layer, n_head=self.n_head, n_head_kv=self.n_head_kv,
                          n_expert=self.n_expert, has_imatrix=has_imatrix)


def read_model_input(path: Path) -> ModelInput:
    meta = scalar_metadata(path)

    def field(key: str, default: int | None = None) -> int:
        if key in meta:
            return int(meta[key])  # type: ignore[call-overload]
        if default is None:
            raise KeyError(key)
        return default

    arch = str(meta[Keys.General.ARCHITECTURE])
    n_head = field(Keys.Attention.HEAD_COUNT.format(arch=arch))
    return ModelInput(
        path=path,
        tensors=tuple(MixTensor(name, shape) for name, shape in tensor_shapes(path).items()),
        arch=arch,
        n_layer=field(Keys.LLM.BLOCK_COUNT.format(arch=arch)),
        n_head=n_head,
        n_head_kv=field(Keys.Attention.HEAD_COUNT_KV.format(arch=arch), n_head),
        n_expert=field(Keys.LLM.EXPERT_COUNT.format(arch=arch), 0),
    )


@functools.cache
def cached_model_input(name: str) -> ModelInput:
    """The ModelInput of a fixture model, building (or reusing the cached) GGUF on first use in this process."""
    if name in SYNTHETIC_BY_NAME:
        return read_model_input(synthetic_gguf(SYNTHETIC_BY_NAME[name]))
    return read_model_input(fixture_gguf(MODELS_BY_NAME[name]))


@pytest.fixture()
def model_input() -> Callable[[str], ModelInput]:
    """name -> ModelInput. The GGUFs live in a locked cache folder (mix_fixtures.py), and reading one is cheap, so
    this is not a session fixture: pytest-xdist may send these tests to either worker (tests/conftest.py)."""
    return cached_model_input


# --- the oracle comparison ---------------------------------------------------------------------------------------

def compare_with_llama_cpp(model: ModelInput, mix: str, options: MixOptions, out: Path,
                           with_imatrix: bool = False) -> None:
    oracle = pytest.importorskip("tests.llama_quantize_oracle")
    run = oracle.QuantizeRun(
        ftype=get_mix(mix).ftype,
        output_tensor_type=options.output_tensor_type,
        token_embedding_type=options.token_embedding_type,
        pure=options.pure,
        tensor_types=options.tensor_types,
        imatrix=oracle.random_imatrix(model.path) if with_imatrix else None,
    )
    status = oracle.llama_quantize(model.path, out, run)
    assert status == 0, f"llama_model_quantize failed on {model.path.name} {mix}"
    try:
        theirs = tensor_types(out)
        file_type = oracle.gguf_file_type(out)
    finally:
        out.unlink(missing_ok=True)
    ours = choose_types(mix, model.tensors, model.context(with_imatrix), options)

    assert set(ours) == set(theirs)
    wrong = {name: (ours[name].name, theirs[name].name) for name in theirs if ours[name] != theirs[name]}
    assert not wrong, f"{len(wrong)} of {len(theirs)} tensors differ (ours, llama.cpp): {wrong}"
    assert file_type == get_mix(mix).ftype


@pytest.mark.slow
@pytest.mark.parametrize("model_name", [m.name for m in FIXTURE_MODELS])
@pytest.mark.parametrize("mix", SUPPORTED_MIXES)
def test_every_mix_matches_llama_quantize(model_input, tmp_path: Path, model_name: str, mix: str) -> None:
    pytest.importorskip("llama_cpp")
    compare_with_llama_cpp(model_input(model_name), mix, MixOptions(), tmp_path / "out.gguf",
                           with_imatrix=mix in MIXES_NEEDING_IMATRIX)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", [m.name for m in SYNTHETIC_MODELS])
@pytest.mark.parametrize("mix", [m for m in SUPPORTED_MIXES if m not in ("F32", "F16", "BF16", "Q8_0")])
def test_size_and_expert_rules_match_llama_quantize(model_input, tmp_path: Path, model_name: str, mix: str) -> None:
    """80-block llama/qwen2 (the "70B" rule), 65B-style MHA, 8 experts, GQA just below 4."""
    pytest.importorskip("llama_cpp")
    compare_with_llama_cpp(model_input(model_name), mix, MixOptions(), tmp_path / "out.gguf",
                           with_imatrix=mix in MIXES_NEEDING_IMATRIX)


OPTION_CASES = {
    "output-type-untied": ("llama-gqa4-16l", "Q4_K_M", MixOptions(output_tensor_type=T.Q8_0)),
    "embedding-type-untied": ("llama-gqa4-16l", "Q4_K_M", MixOptions(token_embedding_type=T.Q3_K)),
    "output-type-reaches-tied-embedding": ("qwen2-tied", "Q4_K_M", MixOptions(output_tensor_type=T.Q5_K)),
    "embedding-type-tied": ("qwen2-tied", "Q5_K_M", MixOptions(token_embedding_type=T.Q8_0)),
    "both-types-tied": ("gemma2", "Q3_K_M", MixOptions(token_embedding_type=T.Q4_0, output_tensor_type=T.Q8_0)),
    "embedding-type-in-float-mix": ("bert", "F16", MixOptions(token_embedding_type=T.Q8_0)),
    "pure": ("llama-gqa4-16l", "Q3_K_M", MixOptions(pure=True)),
    "pure-with-fallbacks": ("qwen2-odd-rows", "Q4_K_M", MixOptions(pure=True)),
    "pure-tied": ("gemma3", "Q5_K_S", MixOptions(pure=True)),
    "pure-with-types": ("llama-gqa4-16l", "Q4_K_M",
                        MixOptions(pure=True, output_tensor_type=T.Q8_0, token_embedding_type=T.Q8_0)),
    # overridden tensors skip the layer counters, so the later ffn_down / attn_v layers shift
    "patterns-skip-counters": ("llama-gqa4-16l", "Q4_K_M",
                               MixOptions(tensor_types=((r"blk\.[0-3]\.ffn_down", T.Q8_0), (r"blk\.1\.attn_v", T.Q5_0)))),
    "pattern-order-first-wins": ("llama-gqa4-16l", "Q5_K_M",
                                 MixOptions(tensor_types=(("attn_v", T.Q8_0), ("attn", T.Q4_0)))),
    "pattern-to-float": ("gemma3", "Q6_K", MixOptions(tensor_types=(("attn_q", T.F16),))),
    "pattern-falls-back": ("qwen2-odd-rows", "Q8_0",
                           MixOptions(output_tensor_type=T.F16, tensor_types=(("ffn_down", T.Q4_0), ("attn", T.Q4_K)))),
    "pattern-on-experts": ("mixtral-8x", "Q4_K_M", MixOptions(tensor_types=((r"ffn_.*_exps", T.Q2_K),))),
    "pattern-on-fused-qkv": ("phi3", "Q4_K_S", MixOptions(tensor_types=(("blk.0.attn_qkv", T.Q8_0),))),
    "pattern-ignored-by-float-mix": ("qwen3", "BF16", MixOptions(tensor_types=(("ffn", T.Q4_0),))),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_options_match_llama_quantize(model_input, tmp_path: Path, case: str) -> None:
    pytest.importorskip("llama_cpp")
    model_name, mix, options = OPTION_CASES[case]
    compare_with_llama_cpp(model_input(model_name), mix, options, tmp_path / "out.gguf")


IMATRIX_CASES = (
    ("llama-gqa4-16l", "Q4_0"), ("llama-gqa4-16l", "Q5_0"), ("llama-gqa4-16l", "IQ4_NL"),
    ("llama-gqa4-16l", "IQ4_XS"), ("llama-gqa4-16l", "Q4_K_M"), ("mixtral-8x", "Q2_K_S"), ("qwen3", "Q4_0"),
)


@pytest.mark.slow
@pytest.mark.parametrize(("model_name", "mix"), IMATRIX_CASES)
def test_imatrix_rules_match_llama_quantize(model_input, tmp_path: Path, model_name: str, mix: str) -> None:
    pytest.importorskip("llama_cpp")
    compare_with_llama_cpp(model_input(model_name), mix, MixOptions(), tmp_path / "out.gguf", with_imatrix=True)


REFUSED_CASES = {
    "q2_k_s-without-imatrix": ("llama-gqa4-16l", "Q2_K_S", MixOptions()),
    "iq2-pattern-without-imatrix": ("qwen3", "Q4_K_M", MixOptions(tensor_types=(("ffn_up", T.IQ2_XXS),))),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(REFUSED_CASES))
def test_refuses_what_llama_quantize_refuses(model_input, tmp_path: Path, case: str) -> None:
    pytest.importorskip("llama_cpp")
    oracle = pytest.importorskip("tests.llama_quantize_oracle")
    model_name, mix, options = REFUSED_CASES[case]
    model = model_input(model_name)
    run = oracle.QuantizeRun(ftype=get_mix(mix).ftype, tensor_types=options.tensor_types)
    assert oracle.llama_quantize(model.path, tmp_path / "out.gguf", run) != 0
    with pytest.raises(InputError, match="importance matrix"):
        choose_types(mix, model.tensors, model.context(has_imatrix=False), options)


# --- behaviour that needs no oracle ------------------------------------------------------------------------------

LLAMA_CTX = MixContext(arch="llama", n_layer=2, n_head=8, n_head_kv=8)


def small_llama(row: int = 256, n_layer: int = 2) -> list[MixTensor]:
    tensors = [MixTensor("token_embd.weight", (row, 1000)), MixTensor("output.weight", (row, 1000)),
               MixTensor("output_norm.weight", (row,))]
    for block in range(n_layer):
        for role in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up"):
            tensors.append(MixTensor(f"blk.{block}.{role}.weight", (row, row)))
        tensors.append(MixTensor(f"blk.{block}.ffn_down.weight", (2 * row, row)))
        tensors.append(MixTensor(f"blk.{block}.attn_norm.weight", (row,)))
    return tensors


def test_unknown_mix_names_the_valid_ones() -> None:
    with pytest.raises(InputError) as caught:
        choose_types("Q4_K_XL", small_llama(), LLAMA_CTX)
    message = str(caught.value)
    assert "Q4_K_XL" in message
    assert all(name in message for name in SUPPORTED_MIXES)


def test_every_requested_mix_is_offered() -> None:
    assert set(SUPPORTED_MIXES) <= set(MIXES)


@pytest.mark.parametrize(("alias", "meaning"), [("Q3_K", F.MOSTLY_Q3_K_M), ("Q4_K", F.MOSTLY_Q4_K_M),
                                                ("Q5_K", F.MOSTLY_Q5_K_M), ("q4_k_m", F.MOSTLY_Q4_K_M)])
def test_mix_names_accept_llama_quantize_spellings(alias: str, meaning: F) -> None:
    assert get_mix(alias).ftype == meaning
    assert choose_types(alias, small_llama(), LLAMA_CTX) == choose_types(meaning.name.removeprefix("MOSTLY_"),
                                                                         small_llama(), LLAMA_CTX)


def test_result_does_not_depend_on_input_order() -> None:
    """The quantizer walks tensors in its own order (block, then name), so the caller's order must not matter."""
    tensors = small_llama(n_layer=12)
    ctx = MixContext(arch="llama", n_layer=12, n_head=8, n_head_kv=2)
    expected = choose_types("Q4_K_M", tensors, ctx)
    shuffled = tensors[:]
    random.Random(1).shuffle(shuffled)
    assert choose_types("Q4_K_M", shuffled, ctx) == expected


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(SUPPORTED_MIXES), st.integers(min_value=1, max_value=40).map(lambda k: 32 * k))
def test_every_chosen_type_can_hold_its_rows(mix: str, row: int) -> None:
    """Whatever the mix and row length (a multiple of 32), the chosen block size divides the row."""
    tensors = small_llama(row=row)
    ctx = MixContext("llama", n_layer=2, n_head=8, n_head_kv=8, has_imatrix=mix in MIXES_NEEDING_IMATRIX)
    chosen = choose_types(mix, tensors, ctx)
    for tensor in tensors:
        assert tensor.shape[0] % GGML_QUANT_SIZES[chosen[tensor.name]][0] == 0


def test_explicit_output_type_that_cannot_hold_the_row_is_refused() -> None:
    # llama.cpp applies --output-tensor-type without a fallback and then aborts mid-file; we refuse up front
    with pytest.raises(InputError, match="output-tensor-type"):
        choose_types("Q8_0", small_llama(row=96), LLAMA_CTX, MixOptions(output_tensor_type=T.Q4_K))


def test_repeated_tensor_names_are_refused() -> None:
    tensors = small_llama() + [MixTensor("blk.0.attn_v.weight", (256, 256))]
    with pytest.raises(InputError, match="blk.0.attn_v.weight"):
        choose_types("Q8_0", tensors, LLAMA_CTX)


def test_bad_pattern_is_refused() -> None:
    with pytest.raises(InputError, match="regular expression"):
        choose_types("Q8_0", small_llama(), LLAMA_CTX, MixOptions(tensor_types=(("attn_(v", T.Q8_0),)))


def test_ggml_one_dimensional_shapes_stay_f32() -> None:
    # ggml ignores trailing dimensions of size 1, so a (256, 1) matrix is a vector to the quantizer
    tensors = small_llama() + [MixTensor("blk.0.extra.weight", (256, 1))]
    assert choose_types("Q4_0", tensors, LLAMA_CTX)["blk.0.extra.weight"] == T.F32


@pytest.mark.parametrize(("text", "expected"), [
    ("attn_v=q8_0", ("attn_v", T.Q8_0)),
    ("Blk\\.0\\.FFN_DOWN=Q5_K", ("blk\\.0\\.ffn_down", T.Q5_K)),   # the pattern is lower-cased, the type any case
])
def test_tensor_type_option_reads_like_llama_quantize(text: str, expected: tuple[str, T]) -> None:
    assert parse_tensor_type_option(text) == expected


@pytest.mark.parametrize("text", ["attn_v", "=q8_0", "attn_v=", "attn_v=q9_9", "a=b=f16"])
def test_malformed_tensor_type_option_is_refused(text: str) -> None:
    with pytest.raises(InputError):
        parse_tensor_type_option(text)
