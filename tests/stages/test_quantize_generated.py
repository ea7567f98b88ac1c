"""Tensors computed from the config (no source tensor), such as llama 3's rope_freqs, go through the writer."""
from __future__ import annotations

import hashlib

from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from quantcli.io.checkpoint import Checkpoint
from quantcli.models.base import TensorSpec
from quantcli.io.gguf_metadata import kv_str
from quantcli.models.transforms import Constant, Llama3RopeFactors
from quantcli.plan.gguf import Plan, TensorPlan
from quantcli.quant.backend import get_backend
from quantcli.stages.quantize import Encoder, write_ggufs

# the bytes come from the C kernels or the NumPy reference: `make test` runs this module on both, and on the
# kernels' baseline variant (QUANTCLI_ISA=default)
pytestmark = pytest.mark.backend


def generated_plan(qtype: T) -> Plan:
    factors = Llama3RopeFactors(64, 500000.0, 8.0, 1.0, 4.0, 8192)
    specs = [TensorSpec("rope_freqs.weight", (), (32,), factors),
             TensorSpec("rope_factors_long.weight", (), (4,), Constant((1.0, 1.5, 2.0, 2.5)))]
    return Plan(Path("."), "llama", qtype.name, (kv_str("general.architecture", "llama"),),
                tuple(TensorPlan(s, qtype, ()) for s in specs))


def test_generated_tensor_is_encoded_from_its_transform_alone() -> None:
    plan = generated_plan(T.F16)
    out = Encoder(get_backend(), 1).encode(plan.tensors[1], [])
    np.testing.assert_array_equal(out.ravel(), np.float16([1.0, 1.5, 2.0, 2.5]))  # the writer takes bytes, any shape


def test_generated_tensors_are_written_without_reading_the_checkpoint(tmp_path: Path) -> None:
    plan = generated_plan(T.F32)
    empty = Checkpoint(tmp_path, {}, {})  # nothing to read: every planned tensor is generated
    path = tmp_path / "gen.gguf"
    (digest,) = write_ggufs([(plan, path)], empty)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()   # hashed as written, the whole file
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    np.testing.assert_array_equal(tensors["rope_freqs.weight"].data, plan.tensors[0].spec.transform.apply([]))
    np.testing.assert_array_equal(tensors["rope_factors_long.weight"].data, np.float32([1.0, 1.5, 2.0, 2.5]))
