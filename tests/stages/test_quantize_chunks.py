"""Quantized outputs are widened and quantized a chunk of rows at a time; the bytes must not depend on it."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from quantcli.errors import InputError
from quantcli.models.base import IDENTITY, TensorSpec
from quantcli.models.transforms import PermuteRope
from quantcli.plan import TensorPlan
from quantcli.quant.backend import get_backend
from quantcli.stages import quantize as stage
from quantcli.stages.quantize import Encoder


def whole_tensor_bytes(t: TensorPlan, stored: np.ndarray, dtype: str) -> np.ndarray:
    values = t.spec.transform.apply([stored.astype(np.float32) if dtype == "F16" else stored])
    rows = np.ascontiguousarray(values, dtype=np.float32).reshape(-1, t.ggml_shape[0])
    return get_backend().quantize(t.qtype, rows, None, 1)


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_K, T.IQ4_XS])
@pytest.mark.parametrize("dtype", ["F16", "F32"])
@pytest.mark.parametrize("permute", [False, True])
def test_chunked_bytes_equal_the_whole_tensor(monkeypatch: pytest.MonkeyPatch, qtype: T, dtype: str,
                                              permute: bool) -> None:
    rng = np.random.default_rng(7)
    stored = (rng.standard_normal((96, 256)) * 0.05).astype(np.float16 if dtype == "F16" else np.float32)
    spec = TensorSpec("blk.0.attn_q.weight", ("q",), (96, 256), PermuteRope(4) if permute else IDENTITY)
    t = TensorPlan(spec, qtype, (dtype,))
    monkeypatch.setattr(stage, "CHUNK_VALUES", 256 * 7)    # 7 rows a chunk: 14 chunks, the last one short
    got = Encoder(get_backend(), 2).encode(t, [stored])
    np.testing.assert_array_equal(got, whole_tensor_bytes(t, stored, dtype))


def test_nan_in_a_later_chunk_is_counted_over_the_whole_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = np.ones((64, 256), dtype=np.float16)
    stored[40, 3] = np.nan
    stored[63, 0] = np.inf
    spec = TensorSpec("blk.0.ffn_down.weight", ("model.layers.0.mlp.down_proj.weight",), (64, 256))
    t = TensorPlan(spec, T.Q4_0, ("F16",))
    monkeypatch.setattr(stage, "CHUNK_VALUES", 256 * 8)
    with pytest.raises(InputError, match="'model.layers.0.mlp.down_proj.weight' holds 2 NaN/Inf values"):
        Encoder(get_backend(), 1).encode(t, [stored])
