"""The safetensors reader against well-formed files and files whose headers lie."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from quantcli.errors import InputError, UnsupportedError
from quantcli.io.safetensors import SafetensorsFile, to_float32


def raw_file(path: Path, header: dict, data: bytes, header_len: int | None = None) -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if header_len is None else header_len) + blob + data)
    return path


def test_reads_what_the_safetensors_library_wrote(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((3, 5)).astype(np.float32), "b": rng.standard_normal(7).astype(np.float16)}
    save_file(tensors, tmp_path / "m.safetensors")
    st = SafetensorsFile.open(tmp_path / "m.safetensors")
    assert st.tensors["a"].shape == (3, 5) and st.tensors["b"].dtype == "F16"
    np.testing.assert_array_equal(st.read("a"), tensors["a"])
    np.testing.assert_array_equal(st.read("b"), tensors["b"])


def test_bf16_widens_exactly() -> None:
    values = np.array([1.0, -2.5, 3.140625, 0.0], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(to_float32(bits, "BF16"), values)


@pytest.mark.parametrize(
    ("header", "data", "header_len", "message"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, "data bytes"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "offsets span"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16, None, "starts at 8"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "invalid shape"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, None, "invalid data_offsets"),
        ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, None, "exactly dtype"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, 10**12, "cap"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, 5000, "but the file has"),
        ({"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, b"\0" * 8, None, "offsets span"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
          "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, None, "overlap"),
    ],
)
def test_lying_headers_are_input_errors(tmp_path: Path, header: dict, data: bytes, header_len: int | None,
                                        message: str) -> None:
    path = raw_file(tmp_path / "bad.safetensors", header, data, header_len)
    with pytest.raises(InputError, match=message) as info:
        SafetensorsFile.open(path)
    assert "re-download" in str(info.value).lower() or "download" in str(info.value)


def test_unknown_dtype_is_unsupported(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "q.safetensors", {"a": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4)
    with pytest.raises(UnsupportedError, match="F8_E4M3"):
        SafetensorsFile.open(path)


def test_short_and_non_json_files(tmp_path: Path) -> None:
    (tmp_path / "short.safetensors").write_bytes(b"\1\2\3")
    with pytest.raises(InputError, match="too short"):
        SafetensorsFile.open(tmp_path / "short.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(InputError, match="not valid JSON"):
        SafetensorsFile.open(tmp_path / "junk.safetensors")
