"""The method registry: which methods are calibrated, the options each takes, lazy import and clean refusals."""
from __future__ import annotations

import pytest

from quantcli.errors import InputError
from quantcli.quant.algorithms import registry
from quantcli.quant.algorithms.registry import (
    CALIBRATED, PER_TENSOR, MethodEntry, Option, is_calibrated, make_method, method_options)

TEST_ENTRY = MethodEntry("test-rtn", "tests.fixtures.block_methods:RtnCodes",
                         (Option("g_idx", bool, False, "return a reordered g_idx"),), "test only")


def test_calibrated_and_per_tensor_methods_are_told_apart() -> None:
    assert set(CALIBRATED) == {"gptq", "awq"}
    assert {"minmax", "mse", "hqq"} == set(PER_TENSOR)
    assert is_calibrated("gptq") and is_calibrated("awq")
    assert not any(is_calibrated(m) for m in PER_TENSOR)
    assert not set(CALIBRATED) & set(PER_TENSOR)


def test_options_are_typed_from_text_and_only_those_given_are_kept() -> None:
    assert method_options("gptq", {}) == {}
    got = method_options("gptq", {"damp": "0.05", "act-order": "true", "block_size": "64"})
    assert got == {"damp": 0.05, "act_order": True, "block_size": 64}
    assert type(got["block_size"]) is int and type(got["damp"]) is float
    assert method_options("awq", {"clip": "off", "n_grid": 10}) == {"clip": False, "n_grid": 10}


@pytest.mark.parametrize("method, given, message", [
    ("awq", {"act_order": True}, "--method awq has no option 'act_order'"),
    ("gptq", {"damp": "lots"}, "damp='lots' is not a number"),
    ("gptq", {"block_size": "1.5"}, "block_size='1.5' is not a whole number"),
    ("gptq", {"block_size": 2.5}, "block_size=2.5 is not a whole number"),
    ("gptq", {"act_order": "maybe"}, "act_order='maybe' is not true or false"),
    ("gptq", {"damp": -0.1}, "--damp -0.1 is outside"),
    ("gptq", {"block_size": 0}, "block_size=0 is not a positive number"),
    ("minmax", {"damp": 0.1}, "--method minmax takes no options"),
])
def test_bad_options_are_refused_naming_the_option(method: str, given: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        method_options(method, given)


def test_a_method_is_built_with_the_options_set_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CALIBRATED, "test-rtn", TEST_ENTRY)
    method = make_method("test-rtn", {"g_idx": "yes"})
    assert type(method).__name__ == "RtnCodes" and method.g_idx is True
    assert make_method("test-rtn").g_idx is False


def test_a_method_whose_module_is_missing_is_a_clean_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CALIBRATED, "ghost", MethodEntry("ghost", "quantcli.quant.algorithms.no_such_module:Ghost",
                                                         (), "absent"))
    with pytest.raises(InputError, match="--method ghost is not part of this quantcli install"):
        make_method("ghost")
    monkeypatch.setitem(CALIBRATED, "ghost", MethodEntry("ghost", "tests.fixtures.block_methods:NoSuchClass", (), ""))
    with pytest.raises(InputError, match="NoSuchClass is missing"):
        make_method("ghost")


def test_a_broken_import_inside_a_method_module_is_not_hidden(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # the module exists but imports something that does not: that is a bug to report, not "not installed"
    (tmp_path / "broken_method.py").write_text("import quantcli_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(CALIBRATED, "broken", MethodEntry("broken", "broken_method:Broken", (), ""))
    with pytest.raises(ModuleNotFoundError, match="quantcli_no_such_dependency"):
        make_method("broken")


def test_per_tensor_methods_cannot_be_built_as_block_methods() -> None:
    with pytest.raises(InputError, match="not a calibrated method"):
        make_method("minmax")
    assert registry.METHOD_NAMES[:2] == ("minmax", "mse")


def test_the_driver_context_reaches_only_methods_that_ask_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcli.quant.algorithms.registry import _context

    dtypes = {"a.weight": "BF16", "b.weight": "BF16"}
    gptq, awq = CALIBRATED["gptq"], CALIBRATED["awq"]
    assert _context(gptq, {"scale_dtype": dtypes, "threads": 2}) == {"scale_dtype": dtypes, "threads": 2}
    assert _context(awq, {"scale_dtype": dtypes, "threads": 2}) == {"scale_dtype": "BF16"}
    assert _context(awq, {"scale_dtype": {**dtypes, "c.weight": "F16"}}) == {"scale_dtype": "F32"}
    assert _context(TEST_ENTRY, {"scale_dtype": dtypes, "threads": 2}) == {}
    monkeypatch.setitem(CALIBRATED, "test-rtn", TEST_ENTRY)
    assert make_method("test-rtn", {}, {"scale_dtype": dtypes}).g_idx is False   # no unexpected keyword
