"""The quantize stage reads sources by mapping them (io/safetensors.map_tensor) and gives row permutations to the
kernels as an index: neither may change a byte, whatever the thread count, the backend, or how far the writer
lags behind the tensors still mapped."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from safetensors.numpy import save_file

from quantcli.io import safetensors as st
from quantcli.io.checkpoint import Checkpoint
from quantcli.io.gguf_metadata import kv_str
from quantcli.models.base import IDENTITY, TensorSpec
from quantcli.models.transforms import PermuteRope
from quantcli.plan.gguf import Plan, TensorPlan
from quantcli.quant.backend import get_backend
from quantcli.stages.quantize import Encoder, prepare, write_ggufs

# the bytes come from the C kernels or the NumPy reference: `make test` runs this module on both
pytestmark = pytest.mark.backend

N_LAYERS = 12
QTYPES = (T.Q4_K, T.Q8_0, T.F16, T.Q6_K)


def small_model(folder: Path) -> tuple[Checkpoint, Plan]:
    """Many small tensors: per layer a permuted Q (rope), a plain matrix and a norm, in a rotating set of types."""
    rng = np.random.default_rng(11)
    arrays: dict[str, np.ndarray] = {}
    plans: list[TensorPlan] = []
    for i in range(N_LAYERS):
        q, w, n = f"l{i}.q", f"l{i}.w", f"l{i}.norm"
        arrays[q] = (rng.standard_normal((64, 256)) * 0.05).astype(np.float16)
        arrays[w] = (rng.standard_normal((32 + 8 * i, 512)) * 0.05).astype(np.float16)
        arrays[n] = rng.standard_normal(256).astype(np.float32)
        plans.append(TensorPlan(TensorSpec(f"blk.{i}.attn_q.weight", (q,), (64, 256), PermuteRope(4)),
                                QTYPES[i % len(QTYPES)], ("F16",)))
        plans.append(TensorPlan(TensorSpec(f"blk.{i}.ffn_down.weight", (w,), arrays[w].shape, IDENTITY),
                                QTYPES[(i + 1) % len(QTYPES)], ("F16",)))
        plans.append(TensorPlan(TensorSpec(f"blk.{i}.attn_norm.weight", (n,), (256,), IDENTITY), T.F32, ("F32",)))
    save_file(arrays, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    ckpt = Checkpoint.open(folder)
    return ckpt, Plan(folder, "llama", "test", (kv_str("general.architecture", "llama"),), tuple(plans))


def expected_bytes(t: TensorPlan, ckpt: Checkpoint) -> bytes:
    """Each tensor on its own: read with pread, transformed in float32, encoded by the NumPy reference."""
    values = t.spec.transform.apply([st.read_tensor(ckpt.tensors[s]).astype(np.float32) for s in t.spec.sources])
    if t.qtype == T.F32:
        return values.astype(np.float32).tobytes()
    if t.qtype == T.F16:
        return values.astype(np.float16).tobytes()
    return get_backend("reference").quantize(t.qtype, values.reshape(-1, t.ggml_shape[0])).tobytes()


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("slow_writer", [False, True])
def test_mapped_reads_and_indexed_rows_keep_the_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      threads: int, slow_writer: bool) -> None:
    # map every tensor, however small, so the mapped path is the one under test
    monkeypatch.setattr(st, "MAP_MIN_BYTES", 1)
    ckpt, plan = small_model(tmp_path)
    lag = (lambda t, n: time.sleep(0.003)) if slow_writer else None   # progress runs on the write-behind thread
    out = tmp_path / "out.gguf"
    (digest,) = write_ggufs([(plan, out)], ckpt, threads=threads, progress=lag)
    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()
    written = {t.name: bytes(t.data.tobytes()) for t in gguf.GGUFReader(out).tensors}
    for t in plan.tensors:
        assert written[t.name] == expected_bytes(t, ckpt), t.name


def test_map_tensor_gives_read_tensors_values_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(st, "MAP_MIN_BYTES", 1)
    ckpt, _ = small_model(tmp_path)
    for info in ckpt.tensors.values():
        mapped = st.map_tensor(info)
        np.testing.assert_array_equal(mapped, st.read_tensor(info))
        assert mapped.dtype == st.read_tensor(info).dtype and not mapped.flags.writeable


def test_a_shard_truncated_after_opening_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(st, "MAP_MIN_BYTES", 1)
    ckpt, _ = small_model(tmp_path)
    last = max(ckpt.tensors.values(), key=lambda i: i.offset)
    with open(last.path, "r+b") as f:
        f.truncate(last.offset + last.nbytes // 2)
    with pytest.raises(st.InputError, match="file ended while reading"):
        st.map_tensor(last)


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q8_0, T.F16, T.BF16])
def test_rows_kept_as_an_index_encode_like_the_permuted_copy(dtype: str, qtype: T) -> None:
    rng = np.random.default_rng(5)
    values = (rng.standard_normal((64, 256)) * 0.05).astype(np.float32)
    if dtype == "BF16":
        values[9, 3] = 1e5    # beyond F16's range: the kernels hand the tensor to the checked path, which copies
        raw = (values.view(np.uint32) >> 16).astype(np.uint16)
    else:
        raw = values.astype(np.float16)
    t = TensorPlan(TensorSpec("blk.0.attn_q.weight", ("q",), (64, 256), PermuteRope(4)), qtype, (dtype,))
    enc = Encoder(get_backend(), 2)
    stored = prepare(t, [raw], enc.backend, 2, scan=False, index_rows=True)
    assert stored is not None and stored.row_order is not None
    copied = prepare(t, [raw], enc.backend, 2, scan=False)
    assert copied is not None and copied.row_order is None

    def outcome(s: object) -> bytes | str:
        try:
            return enc.encode(t, [raw], s).tobytes()  # type: ignore[arg-type]
        except st.InputError as exc:     # a value F16 cannot hold: both ways must refuse it alike
            return str(exc)

    assert outcome(stored) == outcome(copied)


def test_the_kernels_refuse_a_row_order_that_names_no_row() -> None:
    c = get_backend("c")
    rows = np.zeros((8, 256), dtype=np.float16)
    with pytest.raises(ValueError, match="not a row"):
        c.quantize_stored(T.Q8_0, rows, "F16", row_order=np.array([0, 1, 2, 3, 4, 5, 6, 8]))
    with pytest.raises(ValueError, match="row_order"):
        c.quantize_stored(T.Q8_0, rows, "F16", row_order=np.arange(7))
    got, _ = c.quantize_stored(T.Q8_0, rows + np.arange(8, dtype=np.float16)[:, None], "F16",
                               row_order=np.arange(8)[::-1])
    want, _ = c.quantize_stored(T.Q8_0, (rows + np.arange(8, dtype=np.float16)[:, None])[::-1], "F16")
    np.testing.assert_array_equal(got, want)
