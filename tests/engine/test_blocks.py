"""Engine.blocks: the layer-by-layer walk GPTQ and AWQ drive (inputs, weights, replacements, re-runs)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from quantcli.engine import Engine

from .conftest import token_ids

SEED = 11   # of token_ids: every test draws its own ids


def test_walk_without_changes_captures_what_run_captures(random_model: Callable[..., Path]) -> None:
    eng = Engine.from_hf(random_model())
    ids = token_ids(3, 12, seed=SEED)
    seen_run: dict[str, list[np.ndarray]] = {}
    eng.run(ids, capture=lambda n, x: seen_run.setdefault(n, []).append(x.copy()), logits=False)
    seen_walk: dict[str, list[np.ndarray]] = {}
    for step in eng.blocks(ids):
        assert step.inputs.shape == (3, 12, 64)
        step.forward(capture=lambda n, x: seen_walk.setdefault(n, []).append(x.copy()))
        assert [step.role(n) for n in step.linears] == ["attn_q", "attn_k", "attn_v", "attn_out",
                                                        "ffn_gate", "ffn_up", "ffn_down"]
    assert set(seen_walk) == {n for n in seen_run if n.startswith("model.layers.")}
    for name, xs in seen_walk.items():
        np.testing.assert_array_equal(np.concatenate(xs), np.concatenate(seen_run[name]))


def test_replaced_weights_feed_the_next_block(random_model: Callable[..., Path], tmp_path: Path) -> None:
    folder = random_model()
    ids = token_ids(2, 10, seed=SEED)
    name = "model.layers.0.mlp.down_proj.weight"
    tensors = load_file(str(folder / "model.safetensors"))
    halved = tensors[name] * np.float32(0.5)
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "config.json").write_bytes((folder / "config.json").read_bytes())
    save_file({**tensors, name: halved}, str(edited / "model.safetensors"))

    walk = Engine.from_hf(folder).blocks(ids)
    first = next(walk)
    before = first.forward()
    first.set_weight(name, halved)
    after = first.forward()
    assert not np.array_equal(before, after)
    second = next(walk)
    np.testing.assert_array_equal(second.inputs, after)

    reference = Engine.from_hf(edited).blocks(ids)
    next(reference)
    np.testing.assert_array_equal(second.inputs, next(reference).inputs)


def test_forward_on_a_subset_of_sequences(random_model: Callable[..., Path]) -> None:
    step = next(Engine.from_hf(random_model()).blocks(token_ids(4, 8, seed=SEED)))
    whole = step.forward()
    np.testing.assert_allclose(step.forward(sequences=slice(1, 3)), whole[1:3], rtol=0, atol=1e-5)
