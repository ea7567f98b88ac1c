"""BlockStep.walk: one pass over a block that pauses at each group of linears. Its captures and outputs must equal
the per-group forwards it replaces bit for bit, its outputs must feed the next block without a second pass, and a
weight replaced after the walk must drop them."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from quantcli.engine import Engine
from quantcli.engine.forward import GROUPS, BlockStep
from quantcli.quant.algorithms.base import Chosen
from quantcli.quant.algorithms.gptq import GPTQ, dequantize, prepare_hessian, quantize_weight
from quantcli.quant.algorithms.hessian import Hessians
from quantcli.io.int_scheme import scheme_named
from quantcli.io.int_scheme import IntScheme
from tests.fixtures.paths import model_path

from .conftest import token_ids

SEED = 17   # of token_ids: every test draws its own ids


def _collect(into: dict[str, list[np.ndarray]]) -> Callable[[str, np.ndarray], None]:
    return lambda n, x: into.setdefault(n, []).append(x.copy())


def test_walk_without_changes_equals_forward(random_model: Callable[..., Path]) -> None:
    # 3 sequences of 1024 tokens: two chunks per block, so the walk interleaves chunks
    eng = Engine.from_hf(random_model(max_position_embeddings=1024))
    ids = token_ids(3, 1024, seed=SEED)
    for step in eng.blocks(ids):
        by_forward: dict[str, list[np.ndarray]] = {}
        expected = step.forward(capture=_collect(by_forward))
        by_walk: dict[str, list[np.ndarray]] = {}
        groups: list[list[str]] = []
        out = step.walk(capture=_collect(by_walk), on_group=groups.append)
        np.testing.assert_array_equal(out, expected)
        assert list(by_walk) == list(by_forward)
        for name in by_forward:
            assert len(by_walk[name]) == len(by_forward[name]) == 2
            for a, b in zip(by_walk[name], by_forward[name]):
                np.testing.assert_array_equal(a, b)
        assert [[step.role(n) for n in g] for g in groups] == [["attn_q", "attn_k", "attn_v"], ["attn_out"],
                                                               ["ffn_gate", "ffn_up"], ["ffn_down"]]


def test_walk_outputs_feed_the_next_block_until_a_used_weight_changes(random_model: Callable[..., Path]) -> None:
    eng = Engine.from_hf(random_model(num_hidden_layers=3))
    ids = token_ids(2, 12, seed=SEED)
    walk = eng.blocks(ids)
    # kept: the walk's own array is the next block's input
    first = next(walk)
    out = first.walk()
    first.set_weight(first.linears[0], first.weight(first.linears[0]).copy())   # same bits: still valid
    second = next(walk)
    assert np.shares_memory(second.inputs, out)
    # dropped: a used weight replaced after the walk; the next block starts from a fresh forward with it
    out = second.walk()
    down = second.linears[-1]
    second.set_weight(down, second.weight(down) * np.float32(0.5))
    expected = second.forward()
    assert not np.array_equal(out, expected)
    third = next(walk)
    assert not np.shares_memory(third.inputs, out)
    np.testing.assert_array_equal(third.inputs, expected)


def test_replacing_an_earlier_weight_during_the_walk_drops_its_outputs(random_model: Callable[..., Path]) -> None:
    step = next(Engine.from_hf(random_model()).blocks(token_ids(2, 12, seed=SEED)))
    q = step.linears[0]

    def late(names: list[str]) -> None:
        if step.role(names[0]) == "attn_out":      # q was already applied by every chunk
            step.set_weight(q, step.weight(q) * np.float32(0.5))
    step.walk(on_group=late)
    np.testing.assert_array_equal(step.output(), step.forward())
    assert len(GROUPS) == 4


# -- GPTQ through the walk against GPTQ through one forward per group --------------------------------------------

def _gptq_per_group(method: GPTQ, step: BlockStep, targets: Mapping[str, IntScheme]) -> list[Chosen]:
    """GPTQ as it ran before the walk: one full forward of the block per sub-layer group to capture that group's
    inputs, with the earlier groups already quantized in place."""
    chosen: list[Chosen] = []
    names = step.names
    for roles in GROUPS:
        group = [names[r] for r in roles if r in names and names[r] in targets]
        if not group:
            continue
        hessians = Hessians(group)
        with threadpool_limits(limits=max(1, method.threads), user_api="blas"):
            step.forward(capture=hessians.capture)
            for name in group:
                prep = prepare_hessian(hessians.hessian(name), method.damp, method.act_order)
                codes, g_idx = quantize_weight(step.weight(name), prep, targets[name], "F32",
                                               block_size=method.block_size, threads=method.threads, name=name)
                step.set_weight(name, dequantize(codes, targets[name], "F32", g_idx))
                chosen.append(Chosen(name, codes=codes, g_idx=g_idx))
    return chosen


def _drive(folder: Path, ids: np.ndarray, process: Callable[[BlockStep, Mapping[str, IntScheme]], list[Chosen]],
           scheme: IntScheme) -> tuple[dict[str, Chosen], list[np.ndarray]]:
    """What stages/calibrated.py does: process each block, put the chosen codes back, go on to the next block."""
    chosen: dict[str, Chosen] = {}
    inputs: list[np.ndarray] = []
    for step in Engine.from_hf(folder, threads=1).blocks(ids):
        inputs.append(step.inputs.copy())
        targets = {n: scheme for n in step.linears}
        for c in process(step, targets):
            assert c.codes is not None
            step.set_weight(c.name, dequantize(c.codes, scheme, "F32", c.g_idx))
            chosen[c.name] = c
    return chosen, inputs


def _assert_same_gptq(folder: Path, ids: np.ndarray, scheme: IntScheme, act_order: bool) -> None:
    staged, staged_inputs = _drive(folder, ids, GPTQ(act_order=act_order, scale_dtype="F32").process, scheme)
    method = GPTQ(act_order=act_order, scale_dtype="F32")
    reference, reference_inputs = _drive(folder, ids, lambda s, t: _gptq_per_group(method, s, t), scheme)
    assert list(staged) == list(reference) and staged
    for name, c in staged.items():
        r = reference[name]
        assert c.codes is not None and r.codes is not None
        np.testing.assert_array_equal(c.codes.codes, r.codes.codes, err_msg=name)
        np.testing.assert_array_equal(c.codes.scale, r.codes.scale, err_msg=name)
        if r.g_idx is None:
            assert c.g_idx is None
        else:
            np.testing.assert_array_equal(c.g_idx, r.g_idx)
    assert len(staged_inputs) == len(reference_inputs)
    for a, b in zip(staged_inputs, reference_inputs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_through_the_walk_equals_one_forward_per_group_random(random_model: Callable[..., Path],
                                                                    act_order: bool) -> None:
    folder = random_model(seed=4, max_position_embeddings=1024)
    ids = token_ids(3, 1024, seed=SEED)          # two chunks per block
    _assert_same_gptq(folder, ids, scheme_named("W4A16").with_options(group_size=32), act_order)


@pytest.mark.slow  # needs the built test models
@pytest.mark.parametrize("model", ["tiny-llama", "tiny-phi3", "tiny-gemma2"])
def test_gptq_through_the_walk_equals_one_forward_per_group(model: str) -> None:
    folder = model_path(model)
    vocab = Engine.from_hf(folder).vocab_size
    ids = np.random.default_rng(3).integers(0, vocab, size=(9, 256))   # chunks of 8 and 1 sequences
    _assert_same_gptq(folder, ids, scheme_named("W4A16").with_options(group_size=32), act_order=False)


def test_sub_layers_reproduce_the_walks_next_inputs_and_take_candidate_weights(
        random_model: Callable[..., Path]) -> None:
    step = next(Engine.from_hf(random_model(seed=2)).blocks(token_ids(2, 16, seed=SEED)))
    seen: dict[str, list[np.ndarray]] = {}
    step.walk(capture=_collect(seen))
    role = {step.role(n): n for n in step.linears}
    h = seen[role["attn_q"]][0]
    np.testing.assert_array_equal(step.attention(h.reshape(2, 16, -1)), seen[role["attn_out"]][0])
    np.testing.assert_array_equal(step.mlp(seen[role["ffn_gate"]][0]), seen[role["ffn_down"]][0])
    # a candidate weight changes the result of that call only
    v = role["attn_v"]
    before = step.weight(v).copy()
    changed = step.attention(h.reshape(2, 16, -1), weights={v: before * np.float32(2)})
    assert not np.array_equal(changed, seen[role["attn_out"]][0])
    np.testing.assert_array_equal(step.weight(v), before)
    np.testing.assert_array_equal(step.attention(h.reshape(2, 16, -1)), seen[role["attn_out"]][0])
