"""convert --method gptq on a GGUF K-quant mix: the same file layout as the plain mix, and llama.cpp runs it.

Needs the built test models (slow).
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from quantcli.errors import InputError
from quantcli.pipeline.convert import ConvertRequest, convert, recipe_from_type
from quantcli.quant.algorithms.gptq_kquant import DEFAULT_GGUF_TYPES, LEGACY_TYPES
from quantcli.recipe.schema import CalibrateSpec
from tests.fixtures.paths import model_path
from tests.fixtures.threads import LLAMA_THREADS

pytestmark = pytest.mark.slow
DEFAULT_LEGACY = {t.name for t in LEGACY_TYPES if t in DEFAULT_GGUF_TYPES}


def tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], int]]:
    return {t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape), int(t.n_bytes)) for t in GGUFReader(path).tensors}


def gptq_request(model: Path, mix: str, out: Path) -> ConvertRequest:
    recipe = replace(recipe_from_type(mix), calibrate=CalibrateSpec(data="builtin:calibration", ctx=64, chunks=4))
    return ConvertRequest(model=str(model), recipe=recipe, output=out, threads=2, verify="structure", method="gptq")


@pytest.mark.parametrize("mix", ["Q4_K_M", "Q3_K_M", "Q3_K_S"])
def test_gptq_file_has_the_plain_mix_layout_and_llama_cpp_runs_it(tmp_path: Path, mix: str) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    model = model_path("tiny-llama")
    plain = tmp_path / "plain.gguf"
    convert(ConvertRequest(model=str(model), recipe=recipe_from_type(mix), output=plain, verify="none"))
    done = convert(gptq_request(model, mix, tmp_path / "gptq.gguf"))
    gptq = done.outputs[0].path
    assert tensors(gptq) == tensors(plain)
    assert gptq.stat().st_size == plain.stat().st_size
    assert done.gptq and done.gptq[0]["tensors"] > 0
    # the K-quant block matrices were re-encoded, the rest is the plain file's bytes
    plain_t = {t.name: np.asarray(t.data) for t in GGUFReader(plain).tensors}
    changed = [t.name for t in GGUFReader(gptq).tensors if not np.array_equal(np.asarray(t.data), plain_t[t.name])]
    assert changed and all(n.startswith("blk.") for n in changed)
    # tiny-llama's ffn_down rows are 672 wide, not a multiple of 256: the mix stores them in a 32-value legacy
    # type (Q3_K_S: Q4_0; Q3_K_M, Q4_K_M: Q5_0). GPTQ re-encodes the default legacy types (the 4-bit ones) too:
    # same type and size, different levels.
    legacy = {n for n, (kind, _, _) in tensors(plain).items() if n.startswith("blk.") and kind in DEFAULT_LEGACY}
    assert legacy <= set(changed)
    if mix == "Q3_K_S":
        assert legacy and set(done.gptq[0]["types"]) & DEFAULT_LEGACY
    llm = llama_cpp.Llama(model_path=str(gptq), n_ctx=64, verbose=False, **LLAMA_THREADS)
    tokens = llm.tokenize(b"The capital of France is")
    generated = []
    for tok in llm.generate(tokens, top_k=1, temp=0.0):
        generated.append(tok)
        if len(generated) == 4:
            break
    assert len(generated) == 4 and all(0 <= t < llm.n_vocab() for t in generated)


def test_gptq_refuses_non_k_types_and_missing_text(tmp_path: Path) -> None:
    model = str(model_path("tiny-llama"))
    with pytest.raises(InputError, match="Q4_0") as info:
        convert(gptq_request(Path(model), "Q4_0", tmp_path / "x.gguf"))
    assert "Q4_K_M" in info.value.hint and "Q3_K_M" in info.value.hint      # names the types it supports
    with pytest.raises(InputError, match="calibration text"):
        convert(ConvertRequest(model=model, recipe=recipe_from_type("Q4_K_M"), output=tmp_path / "y.gguf",
                               method="gptq"))
    assert not list(tmp_path.glob("*.gguf"))


def test_cli_refuses_gptq_for_a_legacy_type_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    done = subprocess.run([sys.executable, "-m", "quantcli.cli.app", "convert", str(model_path("tiny-llama")), "--type",
                           "Q4_0", "--method", "gptq", "--calibrate", "builtin:calibration", "-o", str(out)],
                          capture_output=True, text=True,
                          env={**os.environ, "QUANTCLI_NO_PROGRESS": "1", "QUANTCLI_DEBUG": ""})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "Q4_K_M" in done.stderr and "Q4_0" in done.stderr
    assert not out.exists()


def test_targets_reach_the_legacy_fallbacks_and_follow_the_chosen_types(tmp_path: Path) -> None:
    """SmolLM2-135M's 576-wide rows fall back to legacy types under Q3_K_M: with every supported type the pass
    targets all block matrices, and with fewer only those of the types named (KGPTQOptions.types)."""
    from gguf import GGMLQuantizationType as T

    from quantcli.io.checkpoint import Checkpoint
    from quantcli.pipeline.convert import quant_options
    from quantcli.plan.gguf import SourceModel, make_plan
    from quantcli.quant.algorithms.gptq_kquant import GPTQ_TYPES, KQUANT_TYPES
    from quantcli.stages.gptq_gguf import gptq_targets

    source = SourceModel.open(Checkpoint.open(model_path("SmolLM2-135M-Instruct")))
    plan = make_plan(source, quant_options(recipe_from_type("Q3_K_M").outputs[0], tmp_path / "any.gguf"))
    matrices = {t.name: t.qtype for t in plan.tensors if t.name.startswith("blk.") and len(t.spec.shape) == 2}
    every = {t.name for t in gptq_targets(plan, GPTQ_TYPES).values()}
    assert every == set(matrices) and len(every) == 210
    assert {matrices[n] for n in every} >= {T.Q4_0, T.Q5_0, T.Q4_K}
    k_only = {t.name for t in gptq_targets(plan, KQUANT_TYPES).values()}
    assert k_only == {n for n, q in matrices.items() if q in KQUANT_TYPES} and 0 < len(k_only) < 210
    default = {t.name for t in gptq_targets(plan, DEFAULT_GGUF_TYPES).values()}
    assert k_only < default < every and {matrices[n] for n in default} == {T.Q4_0, T.Q4_K, T.Q5_K}
