"""quantcli's engine gives transformers' logits (float32) on every decoder quantcli converts, the same logits from
the F32 GGUF it writes, and llama.cpp's logits on that file; BERT's pooled embeddings match the
sentence-transformers recipe; the capture hook sees what torch's forward hooks see.

Tolerance: max |engine - transformers| <= ENGINE_REL_TOL x max |transformers logits|, and the same top-1 token at
every position. Measured on this suite's models: at most 1.1e-6 relative on the tiny models and 1.5e-5 on SmolLM2
over 512 random tokens (both compute in float32; only summation order differs). Allowed: 1e-4, still a hundred
times below what a wrong norm, rope or mask moves the logits (tests/interop/test_negative_controls.py).
Against llama.cpp the bounds of conftest.py apply (its GELU table costs up to 3.2e-4 on gemma and bert).
"""
from __future__ import annotations

import numpy as np
import pytest

from quantcli.engine import Engine
from tests.fixtures.paths import model_path

from .clients import hf_sentence_embeddings, hf_token_states, llama_logits, llama_token_states
from .conftest import TEXT, assert_close_to_reference, relative_tolerance
from .test_decoder_logits import DECODERS

pytestmark = pytest.mark.slow

ENGINE_REL_TOL = 1e-4
# Longer than the tiny models' sliding window (128), so the windowed layers of gemma2/gemma3 really slide.
LONG_CTX = 200


def engine_logits(eng: Engine, ids: list[int] | np.ndarray) -> np.ndarray:
    return next(eng.run(np.asarray([ids], dtype=np.int32)))


def assert_top1_equal(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    agree = got.argmax(axis=1) == ref.argmax(axis=1)
    assert agree.all(), f"{what}: top-1 differs at positions {np.nonzero(~agree)[0][:10].tolist()}"


@pytest.mark.parametrize("model", DECODERS)
def test_engine_matches_transformers(model: str, text_ids, reference_logits) -> None:  # type: ignore[no-untyped-def]
    eng = Engine.from_hf(model_path(model), threads=2)
    ref = reference_logits(model)
    got = engine_logits(eng, text_ids(model))
    assert_close_to_reference(got, ref, ENGINE_REL_TOL, f"engine {model}")
    assert_top1_equal(got, ref, f"engine {model}")


@pytest.mark.parametrize("model", ["tiny-gemma2", "tiny-gemma3", "tiny-qwen3"])
def test_engine_matches_transformers_past_the_window(model: str, torch_module) -> None:  # type: ignore[no-untyped-def]
    import transformers

    folder = model_path(model)
    eng = Engine.from_hf(folder, threads=2)
    ids = np.random.default_rng(5).integers(0, eng.vocab_size, size=(2, LONG_CTX)).astype(np.int32)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch_module.float32).eval()
    with torch_module.no_grad():
        ref = hf(torch_module.tensor(ids, dtype=torch_module.long)).logits.numpy()
    for s, got in enumerate(eng.run(ids)):
        assert_close_to_reference(got, ref[s], ENGINE_REL_TOL, f"engine {model} seq {s}")
        assert_top1_equal(got, ref[s], f"engine {model} seq {s}")


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gemma2", "tiny-gemma3", "tiny-phi3", "tiny-qwen2", "tiny-qwen3",
                                   "SmolLM2-135M-Instruct"])
def test_engine_on_the_f32_gguf(model: str, converted, text_ids, llama_cpp_module) -> None:  # type: ignore[no-untyped-def]
    """The F32 file undoes to the same weights (logits equal from_hf's) and llama.cpp agrees with the engine."""
    path = converted(model, "F32")
    ids = text_ids(model)
    from_gguf = engine_logits(Engine.from_gguf(path, source=model_path(model), threads=2), ids)
    from_hf = engine_logits(Engine.from_hf(model_path(model), threads=2), ids)
    np.testing.assert_allclose(from_gguf, from_hf, rtol=0, atol=1e-6 * float(np.abs(from_hf).max()))
    cpp = llama_logits(path, ids)
    what = f"{model} llama.cpp vs engine"
    assert_close_to_reference(cpp, from_gguf, relative_tolerance(model, "F32"), what)
    assert_top1_equal(cpp, from_gguf, what)


def test_bert_from_the_f32_gguf_equals_the_source_and_llama_cpp(converted, llama_cpp_module) -> None:  # type: ignore[no-untyped-def]
    model = "all-MiniLM-L6-v2"
    ids = np.random.default_rng(3).integers(1000, 30000, size=(2, 40))
    mask = np.ones_like(ids)
    mask[1, 25:] = 0
    path = converted(model, "F32")
    gguf_engine = Engine.from_gguf(path, source=model_path(model))
    from_gguf = gguf_engine.embed(ids, attention_mask=mask)
    from_hf = Engine.from_hf(model_path(model)).embed(ids, attention_mask=mask)
    np.testing.assert_allclose(from_gguf, from_hf, rtol=0, atol=1e-6)
    states = next(gguf_engine.run(ids[:1]))
    cpp = llama_token_states(path, ids[0].tolist())
    assert_close_to_reference(cpp, states, relative_tolerance(model, "F32"), f"{model} llama.cpp vs engine")


def test_engine_on_a_quantized_gguf_tracks_the_source(converted, text_ids) -> None:  # type: ignore[no-untyped-def]
    """Q8_0 SmolLM2: close to the source logits (not equal), and the same as llama.cpp's on that file."""
    model = "SmolLM2-135M-Instruct"
    ids = text_ids(model)
    path = converted(model, "Q8_0")
    q8 = engine_logits(Engine.from_gguf(path, source=model_path(model), threads=2), ids)
    src = engine_logits(Engine.from_hf(model_path(model), threads=2), ids)
    rel = float(np.abs(q8 - src).max() / np.abs(src).max())
    assert 0 < rel < 0.05, rel
    assert (q8.argmax(1) == src.argmax(1)).mean() > 0.9


@pytest.mark.parametrize("model", ["tiny-bert", "all-MiniLM-L6-v2"])
def test_bert_states_and_pooling(model: str, torch_module) -> None:  # type: ignore[no-untyped-def]
    from .clients import hf_tokenizer

    folder = model_path(model)
    eng = Engine.from_hf(folder, threads=2)
    ids = hf_tokenizer(folder)(TEXT)["input_ids"][:64]
    states = next(eng.run(np.asarray([ids])))
    ref = hf_token_states(folder, ids)
    assert_close_to_reference(states, ref, ENGINE_REL_TOL, f"engine {model} states")
    if model == "all-MiniLM-L6-v2":
        sentences = ["The quick brown fox jumps over the lazy dog.", "A short one.", TEXT[:200]]
        batch = hf_tokenizer(folder)(sentences, padding=True, return_tensors="np")
        got = eng.embed(batch["input_ids"], attention_mask=batch["attention_mask"])
        want = hf_sentence_embeddings(folder, sentences)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-phi3", "tiny-gemma2"])
def test_capture_matches_torch_forward_hooks(model: str, torch_module) -> None:  # type: ignore[no-untyped-def]
    """Sum of x^2 over every linear's input equals what forward pre-hooks on transformers' Linear modules see."""
    import transformers

    torch = torch_module
    folder = model_path(model)
    ids = np.random.default_rng(9).integers(0, 1000, size=(2, 40)).astype(np.int32)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ref: dict[str, float] = {}
    handles = []
    for name, module in hf.named_modules():
        if isinstance(module, torch.nn.Linear):
            def hook(mod, args, name=name):  # type: ignore[no-untyped-def]
                ref[name + ".weight"] = ref.get(name + ".weight", 0.0) + float((args[0].double() ** 2).sum())
            handles.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        hf(torch.tensor(ids, dtype=torch.long))
    for h in handles:
        h.remove()
    got: dict[str, float] = {}
    shapes: dict[str, int] = {}

    def capture(name: str, x: np.ndarray) -> None:
        got[name] = got.get(name, 0.0) + float(np.square(x, dtype=np.float64).sum())
        shapes[name] = x.shape[1]

    eng = Engine.from_hf(folder, threads=2)
    list(eng.run(ids, capture=capture))
    if eng.spec.tied_embeddings:  # transformers' tied head is still the lm_head module
        ref[eng.source.name(eng.spec.tensor("tok_embd"))] = ref.pop("lm_head.weight")
    assert set(got) == set(ref)
    for name, value in ref.items():
        assert got[name] == pytest.approx(value, rel=1e-4), name
    linears = {t.hf_name: t.shape[1] for t in eng.spec.tensors if len(t.shape) == 2 and t.layer is not None}
    assert all(shapes[n] == cols for n, cols in linears.items())


def test_gguf_with_the_wrong_source_is_refused(converted) -> None:  # type: ignore[no-untyped-def]
    from quantcli.errors import InputError

    path = converted("tiny-llama", "F32")
    with pytest.raises(InputError, match="qwen2"):
        Engine.from_gguf(path, source=model_path("tiny-qwen2"))
    with pytest.raises(InputError, match="shape"):   # same family, other shapes
        Engine.from_gguf(path, source=model_path("SmolLM2-135M-Instruct"))
