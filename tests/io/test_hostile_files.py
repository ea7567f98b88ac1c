"""Files that are not what their name says: FIFOs, deep JSON, non-UTF-8 text, bad shard indexes, empty tensors.

Each must be an InputError naming the file, never a hang, a RecursionError or an internal error.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from quantcli.errors import InputError
from quantcli.io.checkpoint import Checkpoint
from quantcli.io.files import load_json, read_text, require_regular
from quantcli.io.gguf_layout import read_layout
from quantcli.io.safetensors import SafetensorsFile
from quantcli.quant.imatrix import load_imatrix


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("opener", [SafetensorsFile.open, read_layout, load_imatrix, load_json, read_text],
                         ids=["safetensors", "gguf", "imatrix", "json", "text"])
def test_a_fifo_is_refused_without_opening_it(tmp_path: Path, opener) -> None:  # type: ignore[no-untyped-def]
    # Opening a FIFO for reading blocks until a writer appears: reaching open() would hang this test.
    path = fifo(tmp_path / "model.safetensors")
    with pytest.raises(InputError, match="is a FIFO, not a regular file"):
        opener(path)


def test_a_folder_is_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a folder"):
        require_regular(tmp_path)


def test_deeply_nested_json_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(InputError, match="nests JSON too deeply"):
        load_json(path)


def test_non_utf8_text_names_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    path.write_bytes(b"[PAD]\n\xc3\x28\n")
    with pytest.raises(InputError, match=r"vocab.txt is not UTF-8 text \(invalid byte at offset 6\)"):
        read_text(path)


def raw_safetensors(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def test_deeply_nested_safetensors_header(tmp_path: Path) -> None:
    path = raw_safetensors(tmp_path / "m.safetensors", b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
    with pytest.raises(InputError, match="header nests JSON too deeply"):
        SafetensorsFile.open(path)


def model_folder(tmp_path: Path, tensors: dict[str, np.ndarray], index: dict | None = None) -> Path:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    save_file(tensors, str(tmp_path / "model.safetensors"))
    if index is not None:
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    return tmp_path


@pytest.mark.parametrize("value", [7, None, ["model.safetensors"], {"f": 1}, ""])
def test_index_weight_map_values_must_be_file_names(tmp_path: Path, value: object) -> None:
    folder = model_folder(tmp_path, {"a.weight": np.ones((2, 2), np.float32)},
                          {"weight_map": {"a.weight": value}})
    with pytest.raises(InputError, match=r"weight_map\['a.weight'\] is .* not a shard file name"):
        Checkpoint.open(folder)


def test_a_tensor_with_a_zero_dimension_is_refused(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, {"a.weight": np.ones((2, 2), np.float32), "b.weight": np.ones((0, 4), np.float32)})
    with pytest.raises(InputError, match=r"tensor 'b.weight' has shape \[0, 4\], with a zero-length dimension"):
        Checkpoint.open(folder)
