"""A calibrated method's choices on disk, between the block walk that makes them and the pack stage that writes them.

The walk decides one block at a time and the pack stage writes tensor by tensor in checkpoint order, so the choices
are kept as one .npy file per array in a hidden folder (inside the output's partial folder, so an interrupted run
leaves nothing behind), and memory holds one block's choices at most. The folder is removed once the pack stage
has read it.

    spool = ChoiceSpool(tmp / ".choices")
    spool.put_codes("model.layers.0.mlp.down_proj.weight", codes)
    spool.get("model.layers.0.mlp.down_proj.weight").codes.scale.dtype      # as put
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.int_codes import IntCodes

SPOOL_DIR = ".quantcli-choices"   # inside the output's partial folder; removed before the folder is renamed


@dataclass(frozen=True)
class Spooled:
    """One tensor's choice as the pack stage reads it back: codes (with g_idx, or None) or stored dense values."""

    codes: IntCodes | None = None
    g_idx: np.ndarray | None = None
    dense: np.ndarray | None = None


class ChoiceSpool:
    """Choices by HF tensor name; each array is a file named by the tensor's position, never by its name."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=False)
        self._files: dict[str, dict[str, Path]] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def __len__(self) -> int:
        return len(self._files)

    def names(self) -> list[str]:
        return list(self._files)

    def _put(self, name: str, arrays: dict[str, np.ndarray | None]) -> None:
        if name in self._files:
            raise ValueError(f"{name}: chosen twice")
        stem = f"{len(self._files):06d}"
        files = {}
        for kind, a in arrays.items():
            if a is None:
                continue
            path = self.folder / f"{stem}.{kind}.npy"
            np.save(path, np.ascontiguousarray(a), allow_pickle=False)
            files[kind] = path
        self._files[name] = files

    def put_codes(self, name: str, codes: IntCodes, g_idx: np.ndarray | None = None) -> None:
        self._put(name, {"codes": codes.codes, "scale": codes.scale, "zero": codes.zero_point, "g_idx": g_idx})

    def put_dense(self, name: str, stored: np.ndarray) -> None:
        """Dense values in the tensor's stored dtype (BF16 as uint16 bits), written as they are."""
        self._put(name, {"dense": stored})

    def get(self, name: str) -> Spooled:
        files = self._files[name]
        load = {k: np.load(p, allow_pickle=False) for k, p in files.items()}
        if "dense" in load:
            return Spooled(dense=load["dense"])
        return Spooled(codes=IntCodes(load["codes"], load["scale"], load.get("zero")), g_idx=load.get("g_idx"))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self._files.clear()
