"""The SplitQuantV2 three-branch folder (formats/splitquant.md): tensor names, dtypes, the cluster-id packing and
the config block. Only quantcli's engine runs it (engine/split_weights.py); the dense folder, a plain HF
checkpoint, is what other loaders read.

Per split Linear module M (its source weight M.weight is absent from the folder):

    M.split_ids              uint8 (rows, ceil(n / 4))   cluster id 0/1/2 of each weight, 2 bits each, weight j of a
                                                         row in bits 2*(j%4)..2*(j%4)+1 of byte j//4 (low bits first)
    M.branch{k}.qweight      int32 (rows, ceil(n*bits/32)) branch k's codes, compressed-tensors' bit stream
                                                         (io/int_packing.py), k = 0 lower, 1 middle, 2 upper
    M.branch{k}.scales       scale dtype (rows, groups)  one scale per row (per channel) or per group
    M.branch{k}.zeros        int8 (rows, groups)         asymmetric schemes only: integer zero points

The weights are w = sum over k of mask_k * (code_k - zero_k) * scale_k, with mask_k = (id == k), computed in
float32. Every other tensor (embeddings, norms, lm_head, biases) is stored as in the source. The tensors live in
splitquant.safetensors, a name transformers does not look for, so a stock loader refuses the folder instead of
initialising the missing weights at random; config.json carries the source config plus the SPLIT_KEY block.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .int_codes import IntCodes, scale_to_f32
from .int_packing import pack_int32, packed_words, unpack_int32
from .int_scheme import IntScheme
from .safetensors_writer import TensorEntry

SPLIT_KEY = "splitquant"              # the config.json block that marks a three-branch folder
LAYOUT_VERSION = 1
FILE_NAME = "splitquant.safetensors"
BRANCHES = 3
IDS_SUFFIX = "split_ids"
QWEIGHT, SCALES, ZEROS = "qweight", "scales", "zeros"
STORED_SCALE = {"F32": "F32", "F16": "F16", "BF16": "BF16"}


def branch_name(module: str, k: int, part: str) -> str:
    return f"{module}.branch{k}.{part}"


def ids_name(module: str) -> str:
    return f"{module}.{IDS_SUFFIX}"


def pack_ids(ids: np.ndarray) -> np.ndarray:
    """(rows, n) uint8 ids in 0..3 -> (rows, ceil(n / 4)) uint8, low bits first."""
    rows, n = ids.shape
    padded = np.zeros((rows, -(-n // 4) * 4), dtype=np.uint8)
    padded[:, :n] = ids
    p = padded.reshape(rows, -1, 4)
    return (p[:, :, 0] | (p[:, :, 1] << 2) | (p[:, :, 2] << 4) | (p[:, :, 3] << 6)).astype(np.uint8)


def unpack_ids(packed: np.ndarray, n: int) -> np.ndarray:
    rows = packed.shape[0]
    out = np.empty((rows, packed.shape[1], 4), dtype=np.uint8)
    for i in range(4):
        out[:, :, i] = (packed >> (2 * i)) & 3
    return out.reshape(rows, -1)[:, :n]


def module_entries(module: str, shape: tuple[int, int], scheme: IntScheme, scale_dtype: str) -> list[TensorEntry]:
    rows, n = shape
    groups = scheme.groups_per_row(n)
    out = [TensorEntry(ids_name(module), "U8", (rows, -(-n // 4)))]
    for k in range(BRANCHES):
        out.append(TensorEntry(branch_name(module, k, QWEIGHT), "I32", (rows, packed_words(n, scheme.bits))))
        out.append(TensorEntry(branch_name(module, k, SCALES), STORED_SCALE[scale_dtype], (rows, groups)))
        if not scheme.symmetric:
            out.append(TensorEntry(branch_name(module, k, ZEROS), "I8", (rows, groups)))
    return out


def module_arrays(module: str, ids: np.ndarray, branches: tuple[IntCodes, ...], scheme: IntScheme) -> list[tuple[str, np.ndarray]]:
    out = [(ids_name(module), pack_ids(ids))]
    for k, codes in enumerate(branches):
        out.append((branch_name(module, k, QWEIGHT), pack_int32(codes.codes, scheme.bits)))
        out.append((branch_name(module, k, SCALES), codes.scale))
        if not scheme.symmetric:
            assert codes.zero_point is not None
            out.append((branch_name(module, k, ZEROS), codes.zero_point))
    return out


def config_block(scheme: IntScheme, scale_dtype: str, modules: list[str]) -> dict[str, Any]:
    return {"version": LAYOUT_VERSION, "method": "SplitQuantV2", "branches": BRANCHES, "bits": scheme.bits,
            "group_size": scheme.group_size, "symmetric": scheme.symmetric, "scale_dtype": scale_dtype,
            "modules": modules}


def dequantize_module(read: Any, module: str, shape: tuple[int, int], block: dict[str, Any]) -> np.ndarray:
    """float32 weight of one split module; `read(name)` returns a stored tensor as numpy (BF16 as uint16 bits)."""
    rows, n = shape
    bits, group = int(block["bits"]), block["group_size"]
    g = n if group is None else int(group)
    ids = unpack_ids(read(ids_name(module)), n)
    total = np.zeros((rows, n), dtype=np.float32)
    for k in range(BRANCHES):
        q = unpack_int32(read(branch_name(module, k, QWEIGHT)), bits, n).astype(np.float32).reshape(rows, n // g, g)
        if not block["symmetric"]:
            q = q - read(branch_name(module, k, ZEROS)).astype(np.float32)[:, :, None]
        dense = (q * scale_to_f32(read(branch_name(module, k, SCALES)))[:, :, None]).reshape(rows, n)
        total = total + np.where(ids == k, dense, np.float32(0))
    return total
