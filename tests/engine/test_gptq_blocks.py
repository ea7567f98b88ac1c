"""GPTQ as a BlockMethod over the engine's block walk, on a random tiny checkpoint: valid codes for every target,
the step left holding the dequantized weights, and true-sequential capture (later sub-layers see earlier ones
quantized)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from quantcli.engine import Engine
from quantcli.quant.algorithms.base import BlockMethod
from quantcli.quant.algorithms.gptq import GPTQ, dequantize
from quantcli.quant.algorithms.hessian import Hessians
from quantcli.io.int_scheme import scheme_named
from quantcli.quant.int.rtn import encode

from .conftest import token_ids

pytestmark = pytest.mark.backend

SEED = 5   # of token_ids: every test draws its own ids


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("scheme", [scheme_named("W4A16").with_options(group_size=32),
                                    scheme_named("W4A16_ASYM").with_options(group_size=0)])
def test_gptq_returns_valid_codes_for_every_target(random_model: Callable[..., Path], act_order: bool,
                                                    scheme: object) -> None:
    eng = Engine.from_hf(random_model())
    ids = token_ids(4, 16, seed=SEED)
    method: BlockMethod = GPTQ(act_order=act_order, scale_dtype="F32")
    seen: set[str] = set()
    for step in eng.blocks(ids):
        originals = {n: step.weight(n).copy() for n in step.linears}
        inputs: dict[str, list[np.ndarray]] = {}
        step.forward(capture=lambda n, x: inputs.setdefault(n, []).append(x.copy()))
        # everything except v_proj: an ignored layer is neither returned nor changed
        targets = {n: scheme for n in step.linears if step.role(n) != "attn_v"}
        chosen = method.process(step, targets)
        assert sorted(c.name for c in chosen) == sorted(targets)
        for c in chosen:
            assert c.codes is not None and c.dense is None
            w = originals[c.name]
            rows, cols = w.shape
            assert c.codes.codes.shape == (rows, cols) and c.codes.codes.dtype == np.int8
            assert c.codes.codes.min() >= scheme.qmin and c.codes.codes.max() <= scheme.qmax
            assert c.codes.scale.shape == (rows, scheme.groups_per_row(cols))
            assert (c.codes.zero_point is None) == scheme.symmetric
            if c.g_idx is not None:
                assert act_order and scheme.group_size is not None
                assert sorted(np.bincount(c.g_idx).tolist()) == [scheme.group_size] * (cols // scheme.group_size)
            dense = dequantize(c.codes, scheme, "F32", c.g_idx)
            np.testing.assert_array_equal(step.weight(c.name), dense)
            if step.role(c.name) in ("attn_q", "attn_k"):
                # the first group sees the block's own inputs: GPTQ must beat RTN on the output error there
                x = np.concatenate(inputs[c.name])
                rtn = encode(w, scheme, "F32").dequantize("F32", scheme.group_size)
                assert np.linalg.norm((w - dense) @ x.T) < np.linalg.norm((w - rtn) @ x.T)
            seen.add(c.name)
        v = next(n for n in step.linears if step.role(n) == "attn_v")
        np.testing.assert_array_equal(step.weight(v), originals[v])
    assert len(seen) == 2 * 6


def test_later_sub_layers_are_calibrated_on_quantized_earlier_ones(random_model: Callable[..., Path]) -> None:
    """o_proj's Hessian is captured after q/k/v are replaced: quantizing only q/k/v must change what o_proj sees."""
    eng = Engine.from_hf(random_model(seed=3))
    ids = token_ids(2, 16, seed=SEED)
    step = next(eng.blocks(ids))
    names = {step.role(n): n for n in step.linears}
    before = Hessians([names["attn_out"]])
    step.forward(capture=before.capture)
    scheme = scheme_named("W4A16").with_options(group_size=32)
    GPTQ(scale_dtype="F32").process(step, {names[r]: scheme for r in ("attn_q", "attn_k", "attn_v")})
    after = Hessians([names["attn_out"]])
    step.forward(capture=after.capture)
    assert not np.array_equal(before.hessian(names["attn_out"]), after.hessian(names["attn_out"]))
