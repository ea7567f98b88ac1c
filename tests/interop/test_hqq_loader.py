"""HQQ folders (W4A16_ASYM --method hqq) against compressed-tensors itself.

transformers 5 + compressed-tensors 0.20 cannot load asymmetric pack-quantized folders at all (docs/int-formats.md,
"Known limits"); test_transformers_still_refuses_asymmetric_folders notices when that changes. Until then the
package's own decompressor is the oracle: it must rebuild exactly the dense weights we mean, in the scale dtype.
"""
from __future__ import annotations

import numpy as np
import pytest

from quantcli.io.quantized_folder import open_folder_reader
from quantcli.io.checkpoint import Checkpoint
from quantcli.pipeline.convert_int import IntConvertRequest, convert_int
from tests.fixtures.paths import model_path

torch = pytest.importorskip("torch")
pytest.importorskip("compressed_tensors")

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model,group", [("tiny-llama", 32), ("tiny-llama-bf16", 0), ("SmolLM2-135M-Instruct", 64)])
def test_hqq_folder_decompresses_to_our_weights(model: str, group: int, tmp_path: object) -> None:
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from safetensors.torch import load_file

    out = tmp_path / "hqq"
    convert_int(IntConvertRequest(model=str(model_path(model)), scheme="W4A16_ASYM", group_size=group, method="hqq",
                                  output=out, threads=2, verify="none"))
    ckpt = Checkpoint.open(out)
    scheme = QuantizationScheme.model_validate(ckpt.config["quantization_config"]["config_groups"]["group_0"])
    reader = open_folder_reader(ckpt)
    assert reader is not None
    tensors = load_file(str(out / "model.safetensors"))
    modules = list(reader.modules)
    assert modules
    for module in modules[:12]:
        ours = reader.dense(module)
        local = {k[len(module) + 1:]: v for k, v in tensors.items() if k.startswith(module + ".weight_")}
        dense = PackedQuantizationCompressor.decompress(local, scheme)["weight"]
        assert np.array_equal(dense.float().numpy(), ours), module


def test_transformers_still_refuses_asymmetric_folders(tmp_path: object) -> None:
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "hqq"
    convert_int(IntConvertRequest(model=str(model_path("tiny-llama")), scheme="W4A16_ASYM", group_size=32,
                                  method="hqq", output=out, threads=2, verify="none"))
    try:
        transformers.AutoModelForCausalLM.from_pretrained(out)
    except RuntimeError as exc:      # the module expects unpacked zero points: a shape mismatch on load
        assert "mismatch" in str(exc)
        return
    pytest.fail("transformers now loads asymmetric pack-quantized folders: update docs/int-formats.md and test "
                "the HQQ folder's logits like tests/interop/test_int_loaders.py does")
