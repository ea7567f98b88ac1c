"""The integer schemes we write, in one table, and the checks that refuse a scheme a tensor cannot take.

A scheme is what compressed-tensors calls a QuantizationScheme reduced to what changes bytes: bits, group size
(None: one scale per output row), symmetric or not, and whether activations are quantized on the fly (W8A8).
It is a description of the stored format (every folder writer and reader in io/ takes one), so it lives in io/;
the encoders in quant/ import it from here. The preset names are compressed-tensors' own.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import InputError

# Where compressed-tensors puts the codes: sub-byte codes dense in int32 words ("pack-quantized"), or one int8
# per weight ("int-quantized", what W8A8 uses so the loader can run int8 matmuls).
PACK_QUANTIZED = "pack-quantized"
INT_QUANTIZED = "int-quantized"
GROUP_SIZES = (32, 64, 128)        # what --group-size accepts besides per-channel (0)


def signed_range(bits: int) -> tuple[int, int]:
    """The two's-complement code range of `bits`-bit integers: (-2^(bits-1), 2^(bits-1) - 1)."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


@dataclass(frozen=True)
class IntScheme:
    """One integer weight encoding. codes lie in [qmin, qmax] (signed, as compressed-tensors stores them)."""

    name: str
    bits: int
    group_size: int | None          # None: per output channel
    symmetric: bool
    act_bits: int | None = None     # dynamic per-token activation quantization (W8A8); None: 16-bit activations
    storage: str = PACK_QUANTIZED

    @property
    def qmin(self) -> int:
        return signed_range(self.bits)[0]

    @property
    def qmax(self) -> int:
        return signed_range(self.bits)[1]

    def groups_per_row(self, n_per_row: int) -> int:
        return 1 if self.group_size is None else n_per_row // self.group_size

    def check_row(self, tensor: str, n_per_row: int) -> None:
        """Refuse a row length the group size does not divide (before anything is written)."""
        if self.group_size is not None and n_per_row % self.group_size:
            ok = [g for g in GROUP_SIZES if n_per_row % g == 0]
            raise InputError(f"--group-size {self.group_size} does not divide the rows of {tensor!r} ({n_per_row} values).",
                             hint=f"Use --group-size {' or '.join(map(str, ok)) if ok else '0 (per channel)'}, "
                                  f"or --ignore {tensor.rsplit('.', 1)[0]}.")

    def with_options(self, *, group_size: int | None = -1, symmetric: bool | None = None) -> "IntScheme":
        """This scheme with --group-size / --sym / --asym applied (group_size 0: per channel; -1: unchanged)."""
        out = self
        if group_size != -1:
            if group_size not in (0, None) and group_size not in GROUP_SIZES:
                raise InputError(f"--group-size {group_size} is not supported.",
                                 hint=f"Use one of {', '.join(map(str, GROUP_SIZES))}, or 0 for one scale per channel.")
            out = replace(out, group_size=group_size or None)
        if symmetric is not None:
            if not symmetric and out.act_bits is not None:
                raise InputError(f"{self.name} quantizes activations and needs symmetric weights.",
                                 hint="Drop --asym, or use W4A16_ASYM / W8A16 with --asym.")
            out = replace(out, symmetric=symmetric)
        return out


# name -> scheme, as compressed-tensors' presets of the same names define them (quant_scheme.py, version 0.20).
SCHEMES: dict[str, IntScheme] = {
    "W4A16": IntScheme("W4A16", bits=4, group_size=128, symmetric=True),
    "W4A16_ASYM": IntScheme("W4A16_ASYM", bits=4, group_size=128, symmetric=False),
    "W8A16": IntScheme("W8A16", bits=8, group_size=128, symmetric=True),
    "W8A8": IntScheme("W8A8", bits=8, group_size=None, symmetric=True, act_bits=8, storage=INT_QUANTIZED),
}


def scheme_named(name: str) -> IntScheme:
    try:
        return SCHEMES[name.upper()]
    except KeyError:
        raise InputError(f"unknown scheme {name!r}.", hint=f"Valid schemes: {', '.join(SCHEMES)}.") from None
