"""The engine's BlockStep satisfies quant/algorithms' BlockStep Protocol member by member.

Calibrated methods are typed against the Protocol (quant/ may not import the engine); this test is what keeps the
two from drifting apart: every Protocol member exists on the engine's class as the same kind of member (method,
property, attribute) with the same parameter names, kinds and defaults.
"""
from __future__ import annotations

import inspect

import pytest

from quantcli.engine.forward import BlockStep as EngineStep
from quantcli.quant.algorithms.step import BlockStep as StepProtocol

MEMBERS = sorted(n for n in vars(StepProtocol) if not n.startswith("_"))
ATTRIBUTES = sorted(StepProtocol.__annotations__)


def _params(fn: object) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]  # type: ignore[arg-type]


def test_the_protocol_lists_what_the_methods_use() -> None:
    # a guard against an empty Protocol, which every class would satisfy
    assert {"walk", "weight", "set_weight", "attention", "mlp", "forward", "linears"} <= set(MEMBERS)
    assert set(ATTRIBUTES) == {"index", "inputs"}


@pytest.mark.parametrize("name", MEMBERS)
def test_engine_step_has_the_member_with_the_same_signature(name: str) -> None:
    want = vars(StepProtocol)[name]
    assert hasattr(EngineStep, name), f"engine BlockStep lacks {name}"
    got = inspect.getattr_static(EngineStep, name)
    if isinstance(want, property):
        assert isinstance(got, property), f"{name} is a property in the Protocol"
    else:
        assert inspect.isfunction(got), f"{name} is a method in the Protocol"
        assert _params(got) == _params(want), name


@pytest.mark.parametrize("name", ATTRIBUTES)
def test_engine_step_sets_the_attribute(name: str) -> None:
    # instance attributes are set in __init__; its parameter names say which ones a step is built with
    assert name in inspect.signature(EngineStep.__init__).parameters
