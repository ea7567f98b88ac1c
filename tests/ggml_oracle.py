"""llama.cpp's own quantizer, called through ctypes: the byte-exact oracle for every block type.

`ggml_quantize_chunk` in libggml-base (shipped by llama-cpp-python) is what llama-quantize runs for each
tensor, with or without an importance matrix. Tests compare quantcli's encoders with it:

    >>> from gguf import GGMLQuantizationType
    >>> rows = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    >>> ggml_quantize(GGMLQuantizationType.Q8_0, rows, None).shape
    (2, 34)

Import this module only after `pytest.importorskip("llama_cpp")`; it raises ImportError when the library
cannot be found.
"""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

LIBRARY_NAME = "libggml-base.so"


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """libggml-base from the installed llama_cpp package, with the signatures we call declared."""
    import llama_cpp

    pkg = Path(llama_cpp.__file__).parent
    candidates = sorted(pkg.glob(f"**/{LIBRARY_NAME}*"))
    if not candidates:
        raise ImportError(f"{LIBRARY_NAME} not found under {pkg}; reinstall llama-cpp-python")
    lib = ctypes.CDLL(str(candidates[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_init.restype = None
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    return lib


def ggml_quantize(qtype: GGMLQuantizationType, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """Quantize (nrows, n_per_row) float32 rows with llama.cpp -> (nrows, row_bytes) uint8.

    imatrix: one importance weight per column (llama.cpp's quant_weights), or None. Shapes are checked
    here because ggml aborts the process on a bad one.
    """
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if rows.ndim != 2 or rows.shape[1] % block_size != 0:
        raise ValueError(f"{qtype.name} needs 2-D rows of a multiple of {block_size} values, got {rows.shape}")
    nrows, n_per_row = rows.shape
    qw = None
    if imatrix is not None:
        qw = np.ascontiguousarray(imatrix, dtype=np.float32)
        if qw.shape != (n_per_row,):
            raise ValueError(f"imatrix has shape {qw.shape}, expected ({n_per_row},)")
    lib = library()
    if qw is None and lib.ggml_quantize_requires_imatrix(int(qtype)):
        raise ValueError(f"ggml needs an imatrix for {qtype.name}")
    lib.ggml_quantize_init(int(qtype))
    out = np.zeros((nrows, n_per_row // block_size * type_size), dtype=np.uint8)
    if nrows == 0:
        return out
    written = lib.ggml_quantize_chunk(int(qtype), rows.ctypes.data, out.ctypes.data, 0, nrows, n_per_row,
                                      None if qw is None else qw.ctypes.data)
    if written != out.nbytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes for {qtype.name}, expected {out.nbytes}")
    return out
