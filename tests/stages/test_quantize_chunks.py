"""Outputs made from 16-bit or F32 sources are widened and encoded a chunk of rows at a time; the bytes must not
depend on it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from quantcli.errors import InputError
from quantcli.io.safetensors import to_float32
from quantcli.models.base import IDENTITY, TensorSpec
from quantcli.models.transforms import PermuteRope
from quantcli.plan.gguf import TensorPlan
from quantcli.quant.backend import get_backend
from quantcli.quant.imatrix import ImportanceMatrix
from quantcli.stages import quantize as stage
from quantcli.stages.quantize import Encoder

# the bytes come from the C kernels or the NumPy reference: `make test` runs this module on both, and on the
# kernels' baseline variant (QUANTCLI_ISA=default)
pytestmark = pytest.mark.backend


def whole_tensor_bytes(t: TensorPlan, stored: np.ndarray, dtype: str) -> bytes:
    """Widen the whole tensor with NumPy, then encode it in one call: the path chunking must reproduce."""
    values = t.spec.transform.apply([to_float32(stored, dtype)]).astype(np.float32)
    if t.qtype == T.F16:
        return values.astype(np.float16).tobytes()
    if t.qtype == T.BF16:
        return stage.float32_to_bf16(values).tobytes()
    return get_backend().quantize(t.qtype, values.reshape(-1, t.ggml_shape[0]), None, 1).tobytes()


def stored_values(dtype: str) -> np.ndarray:
    values = (np.random.default_rng(7).standard_normal((96, 256)) * 0.05).astype(np.float32)
    if dtype == "BF16":  # bit patterns, as safetensors stores them
        return (values.view(np.uint32) >> 16).astype(np.uint16)
    return values.astype(np.float16 if dtype == "F16" else np.float32)


@pytest.mark.parametrize(("qtype", "dtype"), [(T.Q8_0, "F16"), (T.Q4_K, "F16"), (T.IQ4_XS, "F16"), (T.Q8_0, "F32"),
                                              (T.Q4_K, "BF16"), (T.F16, "BF16"), (T.F16, "F32"), (T.BF16, "F16")])
@pytest.mark.parametrize("permute", [False, True])
def test_chunked_bytes_equal_the_whole_tensor(monkeypatch: pytest.MonkeyPatch, qtype: T, dtype: str,
                                              permute: bool) -> None:
    stored = stored_values(dtype)
    spec = TensorSpec("blk.0.attn_q.weight", ("q",), (96, 256), PermuteRope(4) if permute else IDENTITY)
    t = TensorPlan(spec, qtype, (dtype,))
    monkeypatch.setattr(stage, "CHUNK_VALUES", 256 * 7)    # 7 rows a chunk: 14 chunks, the last one short
    got = Encoder(get_backend(), 2).encode(t, [stored])
    assert got.tobytes() == whole_tensor_bytes(t, stored, dtype)


def test_nan_in_a_later_chunk_is_counted_over_the_whole_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = np.ones((64, 256), dtype=np.float16)
    stored[40, 3] = np.nan
    stored[63, 0] = np.inf
    spec = TensorSpec("blk.0.ffn_down.weight", ("model.layers.0.mlp.down_proj.weight",), (64, 256))
    t = TensorPlan(spec, T.Q4_0, ("F16",))
    monkeypatch.setattr(stage, "CHUNK_VALUES", 256 * 8)
    with pytest.raises(InputError, match="'model.layers.0.mlp.down_proj.weight' holds 2 NaN/Inf values"):
        Encoder(get_backend(), 1).encode(t, [stored])


def test_float_outputs_never_consult_the_importance_matrix() -> None:
    # An entry that does not fit the rows is an error for a block type, and irrelevant for F16/BF16 (llama.cpp
    # only hands the matrix to its quantizers).
    imatrix = ImportanceMatrix(Path("m.gguf"), {"blk.0.attn_q.weight": np.ones(7, dtype=np.float32)}, (), 1)
    stored = stored_values("F32")
    spec = TensorSpec("blk.0.attn_q.weight", ("q",), stored.shape)
    encoder = Encoder(get_backend(), 1, imatrix)
    for qtype in (T.F16, T.BF16):
        assert encoder.encode(TensorPlan(spec, qtype, ("F32",)), [stored]).nbytes == stored.size * 2
    with pytest.raises(InputError, match="imatrix entry for blk.0.attn_q.weight has 7 values"):
        encoder.encode(TensorPlan(spec, T.Q4_K, ("F32",)), [stored])
