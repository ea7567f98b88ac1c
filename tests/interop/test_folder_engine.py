"""The engine on quantized folders against the real loaders (transformers + compressed-tensors, transformers +
bitsandbytes), on tiny-llama (float32, so every loader path rebuilds the same float32 weights):

- the dense weights the loader rebuilds, written into a plain HF folder, give the engine exactly the logits it
  computes from the quantized folder itself (so the engine's dequantization is the loader's, bit for bit);
- the engine's logits on the folder agree with the loader's own forward pass within float32 rounding
  (conftest.F32_REL_TOL), with the same top-1 token at every position.

W8A8 is compared on weights only: its loader also quantizes activations to int8 per token, which the engine
does not simulate (docs/int-formats.md).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from quantcli.engine import Engine
from quantcli.pipeline.convert_int import IntConvertRequest, convert_int
from tests.fixtures.paths import model_path

from .conftest import F32_REL_TOL, TEXT, assert_close_to_reference

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

CASES = {   # name -> convert fields
    "w4a16-g32": {"scheme": "W4A16", "group_size": 32},
    "w8a16-g32": {"scheme": "W8A16", "group_size": 32},
    "w4a16-channel": {"scheme": "W4A16", "group_size": 0},
    "w8a8": {"scheme": "W8A8"},
    "nf4-dq": {"format": "bnb-nf4", "ignore": ("re:.*down_proj",)},
}
WEIGHT_ONLY = sorted(set(CASES) - {"w8a8"})   # loaders that run float activations, as the engine does


@pytest.fixture(scope="module")
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    fields = CASES[request.param]
    if request.param.startswith("nf4"):
        pytest.importorskip("bitsandbytes")
    else:
        pytest.importorskip("compressed_tensors")
    out = tmp_path_factory.mktemp("folder-engine") / request.param
    convert_int(IntConvertRequest(model=str(model_path("tiny-llama")), output=out, threads=2, verify="none",
                                  **fields))  # type: ignore[arg-type]
    return request.param, out


def _ids() -> np.ndarray:
    tok = transformers.AutoTokenizer.from_pretrained(model_path("tiny-llama"))
    return np.asarray(tok(TEXT, return_tensors="np").input_ids[:, :96], dtype=np.int32)


def _loaded(name: str, folder: Path) -> object:
    if name.startswith("nf4"):
        return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, quantization_config=transformers.CompressedTensorsConfig(dequantize=True)).eval()


def _loader_dense(name: str, model: object) -> dict[str, np.ndarray]:
    """Every Linear weight of the loaded model as the loader rebuilt it, float32."""
    out = {}
    for module_name, module in model.named_modules():  # type: ignore[attr-defined]
        if not isinstance(module, torch.nn.Linear) or module_name == "lm_head":
            continue
        if name.startswith("nf4") and module.weight.__class__.__name__ == "Params4bit":
            import bitsandbytes.functional as F

            w = F.dequantize_4bit(module.weight.data, module.weight.quant_state)
        else:
            w = module.weight.data
        out[f"{module_name}.weight"] = w.float().numpy().copy()
    return out


@pytest.mark.parametrize("case", sorted(CASES), indirect=True)
def test_engine_on_the_folder_equals_the_engine_on_the_loaders_dense_weights(case: tuple[str, Path], tmp_path: Path) -> None:
    name, folder = case
    loaded = _loaded(name, folder)
    dense = _loader_dense(name, loaded)
    source = model_path("tiny-llama")
    twin = tmp_path / "dense"
    twin.mkdir()
    shutil.copy(source / "config.json", twin / "config.json")
    tensors = load_file(str(source / "model.safetensors"))
    assert set(dense) <= set(tensors)
    tensors.update(dense)
    save_file(tensors, str(twin / "model.safetensors"))
    ids = _ids()
    got = next(Engine.from_hf(folder).run(ids))
    want = next(Engine.from_hf(twin).run(ids))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", WEIGHT_ONLY, indirect=True)
def test_engine_logits_agree_with_the_loaders_forward(case: tuple[str, Path]) -> None:
    name, folder = case
    loaded = _loaded(name, folder)
    ids = _ids()
    with torch.no_grad():
        ref = loaded(torch.from_numpy(ids.astype(np.int64))).logits[0].float().numpy()  # type: ignore[operator]
    got = next(Engine.from_hf(folder).run(ids))
    assert_close_to_reference(got, ref, F32_REL_TOL, f"{name}: engine vs loader")
    assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()
