"""Golden vectors for formats/gptq.md and formats/awq.md, made by the peer's own code (gptqmodel 7.7.0, the
package transformers loads these folders with), not by quantcli:

  GPTQMODEL_DISABLE_PACK_EXT=1 python formats/golden/make_packed_golden.py   # writes gptq.json, awq.json here

GPTQ: TorchLinear.pack_block packs a dense weight that lies exactly on the grid scales * (u - z) (so the peer's
own rounding recovers u), convert_gptq_v2_to_v1_format_module turns the zero points into checkpoint format v1,
and dequantize_weight (before that conversion) gives the dense values. AWQ: pack_awq and dequantize_gemm.
Each case stores the unsigned codes u (out, in), zero points z (out, groups), float16 scales (out, groups) and
g_idx (the inputs) and the tensors a folder holds plus the dense (out, in) weight (the expected outputs).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from gptqmodel.nn_modules.qlinear.torch import TorchLinear
from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm, pack_awq
from gptqmodel.quantization.config import QuantizeConfig
from gptqmodel.utils.model import convert_gptq_v2_to_v1_format_module

HERE = Path(__file__).parent


def inputs(seed: int, bits: int, out_f: int, in_f: int, group: int, sym: bool, perm: bool) -> dict:
    gen = torch.Generator().manual_seed(seed)
    groups = in_f // group
    u = torch.randint(0, 1 << bits, (out_f, in_f), generator=gen)
    z = torch.full((out_f, groups), 1 << (bits - 1)) if sym else torch.randint(0, 1 << bits, (out_f, groups), generator=gen)
    if not sym:
        z[0, 0] = 0                      # a zero point of 0: v1's stored zero - 1 borrows from the next field
        z[1, 0] = (1 << bits) - 1
    s = (torch.rand((out_f, groups), generator=gen) * 0.05 + 0.001).half()
    g_idx = torch.arange(in_f) // group
    if perm:
        g_idx = g_idx[torch.randperm(in_f, generator=gen)]
    return {"u": u, "z": z, "s": s, "g_idx": g_idx}


def gptq_case(seed: int, bits: int, out_f: int, in_f: int, group: int, sym: bool, perm: bool = False) -> dict:
    x = inputs(seed, bits, out_f, in_f, group, sym, perm)
    u, z, s, g = x["u"], x["z"], x["s"], x["g_idx"]
    m = TorchLinear(bits=bits, group_size=group, sym=sym, desc_act=perm, in_features=in_f, out_features=out_f,
                    bias=False, pack_dtype=torch.int32)
    lin = torch.nn.Linear(in_f, out_f, bias=False)
    lin.weight.data = s.float()[:, g] * (u - z[:, g]).float()
    m.pack_block(lin, s.float(), z, g.int())
    m.post_init()
    dense = m.dequantize_weight().float().T            # (out, in)
    convert_gptq_v2_to_v1_format_module(m, QuantizeConfig(bits=bits, group_size=group, sym=sym))
    return {"bits": bits, "group_size": group, "sym": sym, "out": out_f, "in": in_f,
            "u": u.tolist(), "z": z.tolist(), "scales": s.float().tolist(), "g_idx": g.tolist(),
            "qweight": m.qweight.tolist(), "qzeros": m.qzeros.tolist(), "dense": dense.tolist()}


def awq_case(seed: int, out_f: int, in_f: int, group: int) -> dict:
    x = inputs(seed, 4, out_f, in_f, group, False, False)
    u, z, s = x["u"], x["z"], x["s"]
    qweight, qzeros = pack_awq(u.T.contiguous().int(), z.T.contiguous().int(), 4)
    dense = dequantize_gemm(qweight, qzeros, s.T.contiguous(), 4, group).float().T
    return {"bits": 4, "group_size": group, "out": out_f, "in": in_f, "u": u.tolist(), "z": z.tolist(),
            "scales": s.float().tolist(), "qweight": qweight.tolist(), "qzeros": qzeros.tolist(),
            "dense": dense.tolist()}


def main() -> None:
    gptq = {"peer": "gptqmodel 7.7.0", "cases": [
        gptq_case(1, 4, 32, 64, 32, sym=False),
        gptq_case(2, 4, 32, 64, 32, sym=True),
        gptq_case(3, 8, 32, 64, 64, sym=False),
        gptq_case(4, 2, 32, 64, 32, sym=False),
        gptq_case(5, 4, 32, 64, 16, sym=False, perm=True),
    ]}
    awq = {"peer": "gptqmodel 7.7.0", "cases": [awq_case(6, 16, 4, 2), awq_case(7, 32, 64, 32)]}
    (HERE / "gptq.json").write_text(json.dumps(gptq, separators=(",", ":")) + "\n")
    (HERE / "awq.json").write_text(json.dumps(awq, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
