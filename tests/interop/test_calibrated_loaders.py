"""Folders written through the calibrated-method path load in transformers + compressed-tensors, and the loader
rebuilds exactly what the method chose: dense weights equal our dequantization bit for bit, a folded norm is
read as written, logits equal a float32 model holding those weights. Test-only methods (RTN codes with float32
scales on a BF16 model; dense shrunk weights with a folded norm; act-order recorded as actorder "weight") stand in
for GPTQ and AWQ, and the real GPTQ and AWQ run with small settings (their quality is tested beside them)."""
from __future__ import annotations

import numpy as np
import pytest

from quantcli.io.checkpoint import Checkpoint
from quantcli.pipeline.convert_int import IntConvertRequest, convert_int
from quantcli.quant.algorithms.registry import CALIBRATED, MethodEntry, Option
from tests.fixtures.paths import model_path
from tests.interop.test_int_loaders import _ours, _reference, _tokens

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

pytestmark = pytest.mark.slow

ENTRIES = {
    "t-rtn": MethodEntry("t-rtn", "tests.fixtures.block_methods:RtnCodes",
                         (Option("act_order", bool, False, ""), Option("static_groups", bool, False, "")), ""),
    "t-dense": MethodEntry("t-dense", "tests.fixtures.block_methods:DenseShrink", (), ""),
}
# (model, method, options)
CASES = {
    "tiny-dense-norm-fold": ("tiny-llama", "t-dense", ()),
    "tiny-bf16-codes": ("tiny-llama-bf16", "t-rtn", ()),
    "tiny-codes-act-order": ("tiny-llama", "t-rtn", (("act_order", True),)),
    # the real methods (quant/algorithms/gptq.py, awq.py), small settings: the loader is what is tested here
    "tiny-gptq-act-order": ("tiny-llama", "gptq", (("act_order", True),)),
    "tiny-bf16-awq": ("tiny-llama-bf16", "awq", (("n_grid", 4),)),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object]:
    model, method, options = CASES[request.param]
    out = tmp_path_factory.mktemp("cal") / request.param
    with pytest.MonkeyPatch.context() as mp:
        for name, entry in ENTRIES.items():
            mp.setitem(CALIBRATED, name, entry)
        convert_int(IntConvertRequest(model=str(model_path(model)), scheme="W4A16", group_size=32, method=method,
                                      method_options=options, ctx=64, chunks=4, output=out, threads=2, verify="none"))
    return model, out


def test_loader_rebuilds_the_chosen_weights_and_norms(folder: tuple[str, object]) -> None:
    model, out = folder
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        out, quantization_config=transformers.CompressedTensorsConfig(dequantize=True))
    state = loaded.state_dict()
    ours = _ours(out)
    assert len(ours) == 14
    for name, w in ours.items():
        assert np.array_equal(state[name].float().numpy(), w), name
    folder_ckpt = Checkpoint.open(out)
    for name in ("model.layers.0.input_layernorm.weight", "model.layers.1.input_layernorm.weight"):
        assert np.array_equal(state[name].float().numpy(), folder_ckpt.read_f32(name)), name


def test_logits_equal_a_float32_model_with_the_chosen_weights(folder: tuple[str, object]) -> None:
    model, out = folder
    ckpt = Checkpoint.open(out)
    dense = {**_ours(out, "F32"), **{n: ckpt.read_f32(n) for n in ckpt.tensors if n.endswith("layernorm.weight")}}
    ref = _reference(model, dense)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = _tokens(model)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, ref(ids).logits)


def test_act_order_is_recorded_as_the_weight_order(folder: tuple[str, object]) -> None:
    _, out = folder
    weights = Checkpoint.open(out).config["quantization_config"]["config_groups"]["group_0"]["weights"]
    assert weights["actorder"] == ("weight" if str(out).endswith("act-order") else None)
