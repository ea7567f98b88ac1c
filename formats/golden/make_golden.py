"""Regenerate the golden vectors of formats/: expected bytes computed by llama.cpp's own quantizer.

Each block type gets `<type>.npz` (lower case) holding
    rows              float32 (n_rows, n_per_row)  the input, awkward on purpose (see golden_rows)
    imatrix           float32 (n_per_row,)         an importance matrix with some zero weights
    expected          uint8 (n_rows, row_bytes)    ggml_quantize_chunk(type, rows, imatrix=NULL)
    expected_imatrix  uint8 (n_rows, row_bytes)    ggml_quantize_chunk(type, rows, imatrix)
    producer          str                          which llama.cpp made the bytes

Usage (needs llama-cpp-python; run from the repository root):
    python formats/golden/make_golden.py            # every type in GOLDEN_TYPES
    python formats/golden/make_golden.py Q4_K Q6_K  # some of them

The inputs are generated from a seed derived from the type name, so rerunning gives identical files as
long as llama.cpp's output does not change. Add a type by adding a line to GOLDEN_TYPES.
"""
from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
#: llama.cpp as vendored by the llama-cpp-python release the oracle comes from.
PRODUCER = "llama.cpp 0c1e570 (llama-cpp-python 0.3.36), ggml_quantize_chunk"

#: type -> (n_rows, n_per_row) of its golden input: two blocks or super-blocks per row keep files small
#: while still crossing a block boundary.
GOLDEN_TYPES: dict[GGMLQuantizationType, tuple[int, int]] = {
    GGMLQuantizationType.Q2_K: (12, 512),
    GGMLQuantizationType.Q3_K: (12, 512),
    GGMLQuantizationType.Q4_K: (12, 512),
    GGMLQuantizationType.Q5_K: (12, 512),
    GGMLQuantizationType.Q6_K: (12, 512),
    GGMLQuantizationType.Q4_0: (18, 512),
    GGMLQuantizationType.Q4_1: (18, 512),
    GGMLQuantizationType.Q5_0: (18, 512),
    GGMLQuantizationType.Q5_1: (18, 512),
    GGMLQuantizationType.Q8_0: (18, 512),
    GGMLQuantizationType.IQ4_NL: (18, 512),
    GGMLQuantizationType.IQ4_XS: (18, 512),
    GGMLQuantizationType.TQ1_0: (18, 512),
    GGMLQuantizationType.TQ2_0: (18, 512),
}
#: Types whose rows 12.. are replaced by block_edge_rows (their encoders work in blocks of 32 or use the same
#: rounding rules, so these cases hit them; the K-quant files keep their original rows).
BLOCK_EDGE_TYPES = frozenset({
    GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q5_0, GGMLQuantizationType.Q5_1,
    GGMLQuantizationType.Q8_0, GGMLQuantizationType.IQ4_NL, GGMLQuantizationType.IQ4_XS,
    GGMLQuantizationType.TQ1_0, GGMLQuantizationType.TQ2_0,
})


def golden_rows(qtype: GGMLQuantizationType, n_rows: int, n_per_row: int) -> np.ndarray:
    """Deterministic test input: Gaussian rows plus the cases encoders get wrong first.

    Row 0 all zero, row 1 constant, row 2 with a few huge outliers, row 3 tiny (1e-7 scale), row 4
    subnormal, row 5 only positive, row 6 only negative, row 7 half-integers (rounding ties), row 8 with
    zeroed 16-value groups; the remaining rows are plain Gaussian at different scales.
    """
    rng = np.random.default_rng(zlib.crc32(qtype.name.encode()))
    x = rng.standard_normal((n_rows, n_per_row)).astype(np.float32)
    x[0] = 0.0
    x[1] = np.float32(0.3125)
    x[2, rng.integers(0, n_per_row, 4)] = np.float32(300.0)
    x[3] *= np.float32(1e-7)
    x[4] *= np.float32(1e-39)
    x[5] = np.abs(x[5])
    x[6] = -np.abs(x[6])
    x[7] = np.round(x[7] * 4) / 2
    x[8].reshape(-1, 16)[::3] = 0.0
    for r in range(9, n_rows):
        x[r] *= np.float32(10.0 ** rng.uniform(-3, 1))
    return x


def fma_sensitive_values(nmax: int) -> tuple[float, list[float]]:
    """(max, values) of a Q4_0 (nmax 8) or Q5_0 (nmax 16) block in which each value's quant depends on whether
    `x * id + (nmax + 0.5)` is rounded after the product (ggml's build) or only once (a fused multiply-add).

    d = max / -nmax and id = 1/d as the encoder computes them; each value sits one float32 step away from
    an integer boundary of the truncation.
    """
    f32 = np.float32
    offset = f32(nmax + 0.5)
    for candidate in (-5.5, -7.0, -6.75, -7.7, -6.9, -7.3):
        vmax = f32(candidate)
        inv = f32(1) / (vmax / f32(-nmax))
        found: list[float] = []
        for boundary in range(1, nmax):
            x = f32(f32(boundary) - offset) / inv
            for _ in range(64):
                plain = np.trunc(f32(f32(x * inv) + offset))
                fused = np.trunc(f32(np.float64(x) * np.float64(inv) + np.float64(offset)))
                if plain != fused and abs(x) < abs(vmax):
                    found.append(float(x))
                    break
                x = np.nextafter(x, f32(-np.inf))
        if len(found) >= 3:
            return float(vmax), found
    raise RuntimeError("no FMA-sensitive values found; widen the search")


def block_edge_rows(qtype: GGMLQuantizationType, n_per_row: int) -> np.ndarray:
    """Six rows of block-level edge cases (n_per_row a multiple of 256), replacing golden rows 12..17:

    12  blocks of mixed +0.0 / -0.0, and blocks whose largest magnitude occurs with both signs (3, -3, ...)
    13  tiny normals (~1e-38): the inverse scale overflows to Inf
    14  huge values: fp16 scales overflow (1e6) and max - min overflows float32 (+-3e38)
    15  FMA-sensitive blocks for Q4_0 and Q5_0 (fma_sensitive_values), then rounding ties of Q8_0 (k + 0.5)
    16  non-finite: a NaN, an Inf, a -Inf in different blocks, and one all-NaN block
    17  a negative constant
    """
    rng = np.random.default_rng(zlib.crc32(qtype.name.encode()) + 2)
    x = rng.standard_normal((6, n_per_row)).astype(np.float32)
    blocks = x.reshape(6, -1, 32)
    nb = blocks.shape[1]
    blocks[0, 0::2] = np.where(rng.random((len(range(0, nb, 2)), 32)) < 0.5, np.float32(-0.0), np.float32(0.0))
    blocks[0, 1::2] = rng.uniform(-2, 2, (len(range(1, nb, 2)), 32)).astype(np.float32)
    blocks[0, 1::2, 3] = np.float32(3.0)
    blocks[0, 1::2, 17] = np.float32(-3.0)
    blocks[0, 3::4, 3] = np.float32(-3.0)
    blocks[0, 3::4, 17] = np.float32(3.0)
    x[1] *= np.float32(1e-38)
    x[2, ::5] = np.float32(1e6)
    x[2, 1::64] = np.float32(3e38)
    x[2, 33::64] = np.float32(-3e38)
    for b, nmax in enumerate((8, 16)):
        vmax, values = fma_sensitive_values(nmax)
        block = rng.uniform(-1, 1, 32).astype(np.float32)
        block[0] = vmax
        block[1:1 + len(values)] = values
        blocks[3, b] = block
    ties = np.arange(-15.5, 16, 1.0, dtype=np.float32)               # 32 values k + 0.5
    ties[0] = np.float32(127.0)                                       # d = 1 for Q8_0, so x * id = x
    blocks[3, 2] = ties
    blocks[4, 0, 5] = np.float32(np.nan)
    blocks[4, 1, 9] = np.float32(np.inf)
    blocks[4, 2, 30] = np.float32(-np.inf)
    blocks[4, 3] = np.float32(np.nan)
    x[5] = np.float32(-0.8125)
    return x


def golden_imatrix(qtype: GGMLQuantizationType, n_per_row: int) -> np.ndarray:
    """Positive importance weights with every seventh one zero."""
    rng = np.random.default_rng(zlib.crc32(qtype.name.encode()) + 1)
    qw = rng.exponential(1.0, n_per_row).astype(np.float32)
    qw[::7] = 0.0
    return qw


def golden_path(qtype: GGMLQuantizationType) -> Path:
    return HERE / f"{qtype.name.lower()}.npz"


def make(qtype: GGMLQuantizationType) -> Path:
    """Compute and write one type's golden file; returns its path."""
    sys.path.insert(0, str(REPO))
    from tests.ggml_oracle import ggml_quantize

    n_rows, n_per_row = GOLDEN_TYPES[qtype]
    rows = golden_rows(qtype, n_rows, n_per_row)
    if qtype in BLOCK_EDGE_TYPES:
        rows[12:] = block_edge_rows(qtype, n_per_row)
    qw = golden_imatrix(qtype, n_per_row)
    path = golden_path(qtype)
    np.savez_compressed(path, rows=rows, imatrix=qw, expected=ggml_quantize(qtype, rows, None),
                        expected_imatrix=ggml_quantize(qtype, rows, qw), producer=np.array(PRODUCER))
    return path


def main(argv: list[str]) -> int:
    try:
        qtypes = [GGMLQuantizationType[name.upper()] for name in argv] or list(GOLDEN_TYPES)
    except KeyError as exc:
        print(f"unknown type {exc}; known: {', '.join(t.name for t in GOLDEN_TYPES)}", file=sys.stderr)
        return 2
    for qtype in qtypes:
        if qtype not in GOLDEN_TYPES:
            print(f"{qtype.name} has no golden input shape; add it to GOLDEN_TYPES", file=sys.stderr)
            return 2
        print(make(qtype).relative_to(REPO))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
