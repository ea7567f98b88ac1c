"""Finite inputs that overflow a type's fp16 fields, and importance matrices whose values or names are wrong.

The overflow check reads the fp16 scale fields each type declares (fp16_offsets); these tests tie those offsets
to the decoders: an input too large for the scales must be flagged exactly where decoding gives Inf/NaN.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from quantcli.errors import InputError
from quantcli.quant.backend import get_backend
from quantcli.quant.base import quant_class, registered_types
from quantcli.quant.imatrix import MAX_WEIGHT, load_imatrix

TYPES = registered_types()


def rows_for(qtype, scale: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(int(qtype))
    rows = rng.standard_normal((4, 512)).astype(np.float32)
    rows[1] *= np.float32(scale)          # only row 1 is out of range
    return rows


@pytest.mark.parametrize("scale", [1e6, 1e9, 1e30])
@pytest.mark.parametrize("backend", ["c", "reference"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_overflowed_blocks_are_exactly_those_that_decode_wrong(qtype, backend: str, scale: float) -> None:  # type: ignore[no-untyped-def]
    # A block is broken when it decodes to Inf/NaN, or to all zeros although its values are large; which of the
    # two an overflow gives depends on the type's search (Q4_0 stores an Inf scale, Q6_K a zero one).
    cls = quant_class(qtype)
    be = get_backend(backend if backend == "reference" or get_backend("auto").uses_c(qtype) else "reference")
    rows = rows_for(qtype, scale)
    encoded = be.quantize(qtype, rows, None, 1)
    flagged = cls.overflowed_blocks(encoded, rows).reshape(4, -1)
    with np.errstate(invalid="ignore", over="ignore"):
        decoded = cls.decode_blocks(encoded.reshape(-1, cls.type_size)).reshape(4, -1, cls.block_size)
    source = np.abs(rows.reshape(4, -1, cls.block_size)).max(axis=2)
    broken = ~np.isfinite(decoded).all(axis=2) | ((np.abs(decoded).max(axis=2) == 0) & (source > 0))
    assert cls.fp16_offsets, f"{qtype.name} declares no fp16 fields"
    assert (flagged == broken).all()
    assert not flagged[[0, 2, 3]].any()
    if scale >= 1e9:
        assert flagged[1].all()


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_ordinary_values_are_never_flagged(qtype) -> None:  # type: ignore[no-untyped-def]
    rows = rows_for(qtype, 100.0)
    rows[2] *= np.float32(1e-12)          # tiny values may get a zero scale: that is rounding, not overflow
    encoded = quant_class(qtype).quantize(rows)
    assert not quant_class(qtype).overflowed_blocks(encoded, rows).any()


def legacy_imatrix(path: Path, entries: dict[str, np.ndarray], ncall: int = 1) -> Path:
    """llama-imatrix's legacy .dat layout: count, then per entry name length, name, ncall, nval, sums."""
    blob = struct.pack("<i", len(entries))
    for name, values in entries.items():
        raw = name.encode()
        blob += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, values.size)
        blob += values.astype("<f4").tobytes()
    path.write_bytes(blob)
    return path


@pytest.mark.parametrize("values, message", [
    (np.zeros(64), "is all zeros"),
    (np.full(64, -1.0), "holds negative values"),
    (np.full(64, 3e38), r"above 1e\+20"),
    (np.array([1.0] * 63 + [np.inf]), "NaN/Inf"),
])
def test_imatrix_values_that_would_zero_the_tensor_are_refused(tmp_path: Path, values: np.ndarray, message: str) -> None:
    path = legacy_imatrix(tmp_path / "im.dat", {"blk.0.attn_q.weight": np.ones(64), "blk.0.ffn_up.weight": values})
    with pytest.raises(InputError, match=message) as info:
        load_imatrix(path)
    assert "blk.0.ffn_up.weight" in str(info.value) and str(path) in str(info.value)


def test_imatrix_with_dead_columns_is_accepted(tmp_path: Path) -> None:
    values = np.linspace(0.0, 2.0, 64)
    values[::7] = 0.0
    im = load_imatrix(legacy_imatrix(tmp_path / "im.dat", {"blk.0.ffn_up.weight": values}))
    assert np.array_equal(im.weights["blk.0.ffn_up.weight"], values.astype(np.float32))
    assert MAX_WEIGHT > float(values.max())


def test_imatrix_coverage_is_reported(tmp_path: Path) -> None:
    im = load_imatrix(legacy_imatrix(tmp_path / "im.dat", {"blk.0.ffn_up.weight": np.ones(64),
                                                          "blk.9.ffn_up.weight": np.ones(64)}))
    targets = ["blk.0.ffn_up.weight", "blk.0.ffn_down.weight"]
    assert im.coverage(targets) == (["blk.0.ffn_up.weight"], ["blk.9.ffn_up.weight"])
    note = im.check_coverage(targets)
    assert note is not None and "used for 1 of 2 quantized tensors" in note and "'blk.9.ffn_up.weight'" in note
    assert im.check_coverage(["blk.0.ffn_up.weight", "blk.9.ffn_up.weight"]) is None
    with pytest.raises(InputError, match="has no entry for any of the 1 tensors"):
        im.check_coverage(["output.weight"])


def test_the_token_embedding_is_not_counted_as_missing(tmp_path: Path) -> None:
    # llama-imatrix never records the embedding (a row lookup), so its absence is not worth a warning
    im = load_imatrix(legacy_imatrix(tmp_path / "im.dat", {"blk.0.ffn_up.weight": np.ones(64)}))
    assert im.check_coverage(["token_embd.weight", "blk.0.ffn_up.weight"]) is None
