"""The engine on random checkpoints written from a spec: batching, causality, sliding windows, capture, errors.

Agreement with transformers and llama.cpp on the real test models is in tests/interop/test_engine_logits.py;
these properties hold for any weights and need no built model.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from quantcli.engine import Engine
from quantcli.engine import forward
from quantcli.errors import InputError

from .conftest import LLAMA_CONFIG, token_ids, write_random_checkpoint

def tokens(n_seq: int, ctx: int, vocab: int = 97) -> np.ndarray:
    return token_ids(n_seq, ctx, seed=7, vocab=vocab)


def logits(eng: Engine, ids: np.ndarray) -> np.ndarray:
    return np.stack(list(eng.run(ids)))


def test_sequences_are_independent_of_batching(random_model: Callable[..., Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    eng = Engine.from_hf(random_model())
    ids = tokens(3, 20)
    together = logits(eng, ids)
    alone = np.stack([logits(eng, ids[s:s + 1])[0] for s in range(3)])
    # chunks of one sequence, and attention scores in slices of a few query rows
    monkeypatch.setattr(forward, "CHUNK_TOKENS", 1)
    monkeypatch.setattr(forward, "SCORE_ROWS", 8)
    monkeypatch.setattr(forward, "QUERY_BLOCK", 3)
    sliced = logits(eng, ids)
    assert together.shape == (3, 20, 97)
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)
    np.testing.assert_allclose(together, sliced, rtol=0, atol=1e-5)


def test_logits_from_gives_the_later_positions_and_the_same_values(random_model: Callable[..., Path]) -> None:
    eng = Engine.from_hf(random_model())
    ids = tokens(2, 12)
    full = logits(eng, ids)
    later = np.stack(list(eng.run(ids, logits_from=6)))
    assert later.shape == (2, 6, 97)
    np.testing.assert_allclose(later, full[:, 6:], rtol=0, atol=1e-5)   # BLAS may block fewer rows differently
    with pytest.raises(ValueError, match="logits_from"):
        eng.run(ids, logits_from=12)


def test_attention_workers_do_not_change_the_result(random_model: Callable[..., Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # the attention's (sequence, query block) tasks run on `threads` workers, each writing its own rows
    monkeypatch.setattr(forward, "QUERY_BLOCK", 4)
    ids = tokens(3, 20)
    one = logits(Engine.from_hf(random_model(), threads=1), ids)
    three = logits(Engine.from_hf(random_model(), threads=3), ids)
    np.testing.assert_array_equal(one, three)


def test_decoder_is_causal(random_model: Callable[..., Path]) -> None:
    eng = Engine.from_hf(random_model())
    ids = tokens(1, 16)
    changed = ids.copy()
    changed[0, 10] = (changed[0, 10] + 1) % 97
    a, b = logits(eng, ids)[0], logits(eng, changed)[0]
    np.testing.assert_allclose(a[:10], b[:10], rtol=0, atol=1e-6)
    assert np.abs(a[10:] - b[10:]).max() > 1e-3
    # a prefix run gives the same logits as the first positions of the full run
    np.testing.assert_allclose(logits(eng, ids[:, :7])[0], a[:7], rtol=0, atol=1e-5)


@pytest.mark.parametrize("query_block", [128, 3])
def test_sliding_window_limits_what_a_token_sees(random_model: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
                                                 query_block: int) -> None:
    # one mistral block with a window of 4: position p attends to p-3..p only (also with query blocks of 3 rows,
    # where each block skips the keys before its window)
    monkeypatch.setattr(forward, "QUERY_BLOCK", query_block)
    eng = Engine.from_hf(random_model(architectures=["MistralForCausalLM"], num_hidden_layers=1, sliding_window=4))
    assert eng.spec.sliding_layers == (True,)
    ids = tokens(1, 12)
    changed = ids.copy()
    changed[0, 2] = (changed[0, 2] + 1) % 97
    diff = np.abs(logits(eng, ids)[0] - logits(eng, changed)[0]).max(axis=1)
    assert (diff[2:6] > 1e-4).all()
    assert (diff[6:] < 1e-6).all() and (diff[:2] < 1e-6).all()


def test_capture_sees_every_linear_input(random_model: Callable[..., Path]) -> None:
    eng = Engine.from_hf(random_model())
    ids = tokens(2, 9)
    seen: dict[str, list[tuple[int, ...]]] = {}
    sums: dict[str, float] = {}

    def capture(name: str, x: np.ndarray) -> None:
        assert x.dtype == np.float32 and x.ndim == 2
        seen.setdefault(name, []).append(x.shape)
        sums[name] = sums.get(name, 0.0) + float(np.square(x, dtype=np.float64).sum())

    out = list(eng.run(ids, capture=capture))
    assert len(out) == 2
    spec = eng.spec
    linears = [t for t in spec.tensors if t.layer is not None and len(t.shape) == 2]
    expected = {t.hf_name: t.shape[1] for t in linears} | {"lm_head.weight": spec.hidden}
    assert set(seen) == set(expected)
    for name, shapes in seen.items():
        assert all(s[1] == expected[name] for s in shapes), name
        assert sum(s[0] for s in shapes) == ids.size, name
    # q, k and v read the same normed input
    assert sums["model.layers.1.self_attn.q_proj.weight"] == sums["model.layers.1.self_attn.k_proj.weight"]
    # logits=False still captures everything, the head's input included, and yields nothing
    seen_again: dict[str, float] = {}

    def capture_again(name: str, x: np.ndarray) -> None:
        seen_again[name] = seen_again.get(name, 0.0) + float(np.square(x, dtype=np.float64).sum())

    assert list(eng.run(ids, capture=capture_again, logits=False)) == []
    assert set(seen_again) == set(sums)
    for name in sums:
        assert seen_again[name] == pytest.approx(sums[name], rel=1e-6)


def test_gqa_equals_repeated_kv_heads(tmp_path: Path) -> None:
    """A GQA model equals the same model with each k/v head copied to the query heads that share it."""
    gqa = write_random_checkpoint(tmp_path / "gqa", LLAMA_CONFIG, seed=3)
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(gqa / "model.safetensors"))
    group, hd = 2, 16
    for name in list(weights):
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            heads = weights[name].reshape(2, hd, -1)
            weights[name] = np.repeat(heads, group, axis=0).reshape(4 * hd, -1)
    mha = tmp_path / "mha"
    mha.mkdir()
    import json

    (mha / "config.json").write_text(json.dumps({**LLAMA_CONFIG, "num_key_value_heads": 4}))
    save_file(weights, str(mha / "model.safetensors"))
    ids = tokens(2, 11)
    np.testing.assert_allclose(logits(Engine.from_hf(gqa), ids), logits(Engine.from_hf(mha), ids), rtol=0, atol=1e-5)


def test_bad_tokens_are_input_errors(random_model: Callable[..., Path]) -> None:
    eng = Engine.from_hf(random_model())
    with pytest.raises(InputError, match="2-D"):
        eng.run(np.arange(5))
    with pytest.raises(InputError, match=r"\[0, 97\)"):
        eng.run(np.array([[1, 97]]))
    with pytest.raises(InputError, match="attention_mask"):
        eng.run(np.array([[1, 2]]), attention_mask=np.ones((1, 3)))


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path) -> None:
    folder = write_random_checkpoint(tmp_path / "m", LLAMA_CONFIG)
    import json

    (folder / "config.json").write_text(json.dumps({**LLAMA_CONFIG, "intermediate_size": 128}))
    with pytest.raises(InputError, match="shape"):
        Engine.from_hf(folder)
    (folder / "config.json").write_text(json.dumps({**LLAMA_CONFIG, "attention_bias": True}))
    with pytest.raises(InputError, match="q_proj.bias"):
        Engine.from_hf(folder)


def test_bert_padding_does_not_change_real_tokens(tmp_path: Path) -> None:
    config = {"architectures": ["BertModel"], "num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64,
              "num_attention_heads": 2, "vocab_size": 50, "max_position_embeddings": 16, "type_vocab_size": 2,
              "layer_norm_eps": 1e-12}
    eng = Engine.from_hf(write_random_checkpoint(tmp_path / "bert", config))
    ids = tokens(1, 6, vocab=50)
    padded = np.concatenate([ids, np.zeros((1, 4), dtype=np.int32)], axis=1)
    mask = np.array([[1] * 6 + [0] * 4])
    short = list(eng.run(ids))[0]
    long = list(eng.run(padded, attention_mask=mask))[0]
    np.testing.assert_allclose(long[:6], short, rtol=0, atol=1e-5)
    # mean pooling over real tokens only (no pooling module: mean, not normalised)
    np.testing.assert_allclose(eng.embed(padded, attention_mask=mask)[0], short.mean(axis=0), rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="positions"):
        eng.run(tokens(1, 17, vocab=50))


def test_headless_qwen2_runs_with_its_own_tensor_names(tmp_path: Path) -> None:
    """Qwen2Model (an embedding model's bare transformer) stores names without "model." and has no LM head."""
    import json

    from safetensors.numpy import load_file, save_file

    config = {**LLAMA_CONFIG, "architectures": ["Qwen2Model"]}
    folder = write_random_checkpoint(tmp_path / "q", {**config, "architectures": ["Qwen2ForCausalLM"]})
    weights = {k.removeprefix("model."): v for k, v in load_file(str(folder / "model.safetensors")).items()}
    save_file(weights, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    eng = Engine.from_hf(folder)
    assert not eng.spec.has_lm_head and eng.spec.output_tensor() is None
    names: set[str] = set()
    states = list(eng.run(tokens(2, 5), capture=lambda name, x: names.add(name)))
    assert [s.shape for s in states] == [(5, 64), (5, 64)]
    assert "layers.0.self_attn.q_proj.weight" in names and not any(n.startswith("model.") for n in names)
    # the final norm is applied: every state has the RMS the norm's scale gives it
    scale = weights["norm.weight"]
    np.testing.assert_allclose(np.sqrt(np.mean(np.square(states[0] / scale), axis=1)), 1.0, rtol=1e-3)


@pytest.mark.parametrize("plain, wrapped, rename", [
    ({**LLAMA_CONFIG, "architectures": ["Gemma3ForCausalLM"], "head_dim": 16, "query_pre_attn_scalar": 16,
      "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]},
     "Gemma3ForConditionalGeneration", lambda n: n.replace("model.", "model.language_model.", 1)),
    ({"architectures": ["BertModel"], "num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64,
      "num_attention_heads": 2, "vocab_size": 97, "max_position_embeddings": 16, "type_vocab_size": 2,
      "layer_norm_eps": 1e-12},
     "BertForMaskedLM", lambda n: "bert." + n.replace("LayerNorm.weight", "LayerNorm.gamma")),
])
def test_wrapped_checkpoints_resolve_to_the_same_model(tmp_path: Path, plain: dict, wrapped: str,
                                                      rename: Callable[[str], str]) -> None:
    """A multimodal gemma3 (language_model prefix) or a masked-LM bert (bert. prefix, old gamma names) runs the
    same weights as its plain class, and capture reports the checkpoint's own names."""
    import json

    from safetensors.numpy import load_file, save_file

    a = write_random_checkpoint(tmp_path / "plain", plain, seed=4)
    b = tmp_path / "wrapped"
    b.mkdir()
    save_file({rename(k): v for k, v in load_file(str(a / "model.safetensors")).items()},
              str(b / "model.safetensors"))
    (b / "config.json").write_text(json.dumps({**plain, "architectures": [wrapped]}))
    ids = tokens(1, 8)
    names: set[str] = set()
    got = list(Engine.from_hf(b).run(ids, capture=lambda n, x: names.add(n)))[0]
    want = list(Engine.from_hf(a).run(ids))[0]
    np.testing.assert_array_equal(got, want)
    assert names and all(n in {rename(k) for k in load_file(str(a / "model.safetensors"))} for n in names)
