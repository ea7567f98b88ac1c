"""Dynamic per-token int8 activations (quant/int/activations.py) against the compressed-tensors package's own
forward_quantize, the function its loader runs on every W8A8 Linear input: the same float32 bits."""
from __future__ import annotations

import numpy as np
import pytest

from quantcli.errors import UnsupportedError
from quantcli.quant.int.activations import TokenActivations, token_activations

W8A8_INPUT = {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True, "symmetric": True}


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((3, 40, 96)) * rng.uniform(0.01, 30, (3, 40, 1))).astype(np.float32)
    x[0, 5] = 0                                   # an all-zero token
    x[1, 7, :] = np.float32(0.5) * np.arange(96, dtype=np.float32)   # values on half-steps of the grid
    x[2, 9, 3] = -1e4                             # one outlier sets the row's scale
    return x


def test_per_token_rounding_equals_compressed_tensors() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.quantization import QuantizationArgs, QuantizationStatus
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize

    module = torch.nn.Linear(96, 4)
    module.quantization_status = QuantizationStatus.FROZEN   # what a loaded folder's modules carry
    x = _inputs()
    want = forward_quantize(module, torch.from_numpy(x.copy()), "input", QuantizationArgs(**W8A8_INPUT)).numpy()
    got = TokenActivations(8).fake_quantize(x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert not np.array_equal(got, x)


def test_each_token_takes_its_own_scale() -> None:
    x = _inputs()
    got = TokenActivations(8).fake_quantize(x)
    scale = np.abs(x).max(axis=-1) / np.float32(127.5)
    codes = got / np.where(scale == 0, 1, scale)[..., None]
    assert np.allclose(codes, np.rint(codes)) and np.abs(codes).max() <= 128
    assert (got[0, 5] == 0).all()
    # the outlier is -127.5 steps, rounded half to even to code -128; the rest of its row flattens to few levels
    assert got[2, 9, 3] == np.float32(-128) * scale[2, 9] and len(np.unique(got[2, 9])) < 10


def test_config_blocks() -> None:
    assert token_activations(None, "x") is None
    assert token_activations(W8A8_INPUT, "x") == TokenActivations(8)
    for bad in ({**W8A8_INPUT, "dynamic": False}, {**W8A8_INPUT, "strategy": "tensor"},
                {**W8A8_INPUT, "symmetric": False}, {**W8A8_INPUT, "type": "float"}):
        with pytest.raises(UnsupportedError, match="input_activations"):
            token_activations(bad, "folder: model.layers.0.mlp.up_proj")
