"""The real loader is the oracle for GPTQ and AWQ folders: transformers 5.24 with optimum 2.3 + gptqmodel 7.7
(installed by `make dev`, --no-deps because gptqmodel's metadata asks for a newer torch than the pinned CPU one;
its torch kernels, TorchAtenLinear and TorchAtenAwqLinear, run here).

For each folder the loaded model:
- rebuilds, with gptqmodel's own dequantization, dense weights equal bit for bit to our reader's (float16);
- gives logits close to a float32 transformers model whose Linear weights are our dequantization (the loader
  multiplies in a different order, so equality is to float32 rounding), and the same greedy continuation.
A folder with an act-order g_idx (desc_act) is built from permuted groups and checked the same way.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from quantcli.io import awq, gptq
from quantcli.io.checkpoint import Checkpoint
from quantcli.io.safetensors_writer import TensorEntry, write_tensors
from quantcli.pipeline.convert_int import IntConvertRequest, convert_int
from quantcli.quant.int.rtn import encode
from quantcli.io.int_scheme import IntScheme
from tests.fixtures.paths import model_path

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("optimum.gptq")
pytest.importorskip("gptqmodel")

pytestmark = pytest.mark.slow

PROMPT = "The quick brown fox jumps over the lazy dog. Quantization stores each weight in fewer bits"
# (model, format, bits, group size, method, symmetric); tiny-llama's FFN rows are 672 wide: groups of 32.
CASES = {
    "gptq-tiny-w4-g32-sym": ("tiny-llama", "gptq", 4, 32, "minmax", None),
    "gptq-tiny-w4-g32-asym-mse": ("tiny-llama", "gptq", 4, 32, "mse", False),
    "gptq-tiny-w8-channel": ("tiny-llama", "gptq", 8, 0, "minmax", None),
    "gptq-tiny-w2-g32-asym": ("tiny-llama", "gptq", 2, 32, "minmax", False),
    "gptq-tiny-bf16-w4-g32": ("tiny-llama-bf16", "gptq", 4, 32, "minmax", None),
    "gptq-smollm2-w4-g64": ("SmolLM2-135M-Instruct", "gptq", 4, 64, "minmax", None),
    "awq-tiny-g32": ("tiny-llama", "awq", 4, 32, "minmax", None),
    "awq-tiny-g32-mse": ("tiny-llama", "awq", 4, 32, "mse", None),
    "awq-smollm2-g64": ("SmolLM2-135M-Instruct", "awq", 4, 64, "minmax", None),
    # Qwen2 has q/k/v biases: stored in float16 (the loader's buffer dtype), added after the quantized matmul.
    "gptq-qwen2-bias-w4-g32": ("tiny-qwen2", "gptq", 4, 32, "minmax", None),
    "awq-qwen2-bias-g32": ("tiny-qwen2", "awq", 4, 32, "minmax", None),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object]:
    model, fmt, bits, group, method, sym = CASES[request.param]
    out = tmp_path_factory.mktemp("packed") / request.param
    convert_int(IntConvertRequest(model=str(model_path(model)), format=fmt, bits=bits, group_size=group,
                                  method=method, symmetric=sym, output=out, threads=2, verify="none"))
    return model, out


def ours(out: object) -> dict[str, np.ndarray]:
    """Our reader's dense weight of every quantized module, (out, in) float32 holding float16 values, and the
    module's bias as the folder stores it (float16)."""
    ckpt = Checkpoint.open(out)
    qc = ckpt.config["quantization_config"]
    if qc["quant_method"] == "gptq":
        dense = {f"{m}.weight": gptq.dequantize_module(ckpt.read_raw, m, qc["bits"])
                 for m in gptq.quantized_modules(list(ckpt.tensors))}
    else:
        dense = {f"{m}.weight": awq.dequantize_module(ckpt.read_raw, m, qc["group_size"])
                 for m in awq.quantized_modules(list(ckpt.tensors))}
    for name in list(dense):
        bias = name[: -len(".weight")] + ".bias"
        if bias in ckpt.tensors:
            assert ckpt.tensors[bias].dtype == "F16", bias
            dense[bias] = ckpt.read_f32(bias)
    # the folder's other float tensors too: AWQ folds its scales into the norms, which then differ from the source's
    stored = {n[: -len(".qweight")] for n in ckpt.tensors if n.endswith(".qweight")}
    for name, info in ckpt.tensors.items():
        if name.rsplit(".", 1)[0] not in stored and info.dtype in ("F32", "F16", "BF16") and name not in dense:
            dense[name] = ckpt.read_f32(name)
    return dense


def theirs(module: object) -> np.ndarray:
    """gptqmodel's own dequantization of a loaded module, as (out, in) float32."""
    if hasattr(module, "dequantize_weight"):
        dense = module.dequantize_weight()
    else:
        dense = module.awq_weight_dequantize(device="cpu", dtype=torch.float16)
    return dense.float().numpy().T


def load(out: object) -> object:
    return transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, device_map="cpu").eval()


def reference(model: str, dense: dict[str, np.ndarray]) -> object:
    ref = transformers.AutoModelForCausalLM.from_pretrained(model_path(model), dtype=torch.float32)
    state = ref.state_dict()
    for name, w in dense.items():
        state[name].copy_(torch.from_numpy(w))
    return ref.eval()


def tokens(model: str) -> object:
    tok = transformers.AutoTokenizer.from_pretrained(model_path(model))
    return tok(PROMPT, return_tensors="pt").input_ids[:, :48]


def check_against_loader(model: str, out: object) -> None:
    loaded = load(out)
    mine = ours(out)
    assert mine, "the folder has quantized modules"
    stored = Checkpoint.open(out).tensors
    for name, w in mine.items():
        if not name.endswith(".weight") or name[: -len(".weight")] + ".qweight" not in stored:
            continue
        module = loaded.get_submodule(name[: -len(".weight")])
        assert "gptqmodel" in type(module).__module__, f"{name} was not loaded as a quantized module"
        assert np.array_equal(theirs(module), w), name
    ref = reference(model, mine)
    ids = tokens(model)
    # 4 new tokens exercise the KV-cache path; on AVX-512 CPUs gptqmodel's AWQ module dequantizes every weight at
    # every forward, so each token costs a full dequantization of the model
    kwargs = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        got, want = loaded(ids).logits, ref(ids).logits
        scale = float(want.abs().max())
        assert float((got - want).abs().max()) <= 1e-4 * scale
        assert loaded.generate(ids, **kwargs).tolist() == ref.generate(ids, **kwargs).tolist()


def test_loader_agrees_with_our_folder(folder: tuple[str, object]) -> None:
    model, out = folder
    check_against_loader(model, out)


def test_act_order_g_idx_loads(tmp_path: object) -> None:
    """desc_act: inputs assigned to groups in a permuted order (as GPTQ's act order does); the loader must use
    g_idx to find each input's scale and zero."""
    source = model_path("tiny-llama")
    ckpt = Checkpoint.open(source)
    scheme = IntScheme("GPTQ-W4", bits=4, group_size=32, symmetric=False)
    rng = np.random.default_rng(7)
    entries: list[TensorEntry] = []
    arrays: list[tuple[str, np.ndarray]] = []
    for name, info in ckpt.tensors.items():
        linear = name.endswith(".weight") and len(info.shape) == 2 and ".layers." in name
        if not linear:
            entries.append(TensorEntry(name, info.dtype, info.shape))
            arrays.append((name, ckpt.read_raw(name)))
            continue
        module = name[: -len(".weight")]
        w = ckpt.read_f32(name)
        perm = rng.permutation(w.shape[1])            # perm[j]: the input column at position j of the order
        codes_p = encode(w[:, perm], scheme, "F16")   # groups are consecutive in the permuted order
        codes = codes_p.codes.copy()
        codes[:, perm] = codes_p.codes
        g_idx = np.empty(w.shape[1], dtype=np.int32)
        g_idx[perm] = np.arange(w.shape[1]) // 32
        from quantcli.io.int_codes import IntCodes

        entries += gptq.module_entries(module, info.shape, scheme)
        arrays += gptq.module_arrays(module, IntCodes(codes, codes_p.scale, codes_p.zero_point), scheme, g_idx)
    out = tmp_path / "act-order"
    out.mkdir()
    write_tensors(out, entries, arrays, None, metadata={"format": "pt"})
    config = dict(ckpt.config)
    config["quantization_config"] = gptq.quantization_config(scheme, True)
    (out / "config.json").write_text(json.dumps(config))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / f).exists():
            (out / f).write_bytes((source / f).read_bytes())
    assert not np.array_equal(Checkpoint.open(out).read_raw("model.layers.0.mlp.down_proj.g_idx"),
                              np.arange(672) // 32)
    check_against_loader("tiny-llama", out)


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_ignored_module_loads_dense(tmp_path: object, fmt: str) -> None:
    """--ignore: the config names what stays dense (GPTQ lists the modules kept, AWQ the ones skipped), so the
    loader leaves that Linear as it is and quantizes the rest."""
    out = tmp_path / fmt
    skipped = "model.layers.0.mlp.down_proj"
    convert_int(IntConvertRequest(model=str(model_path("tiny-llama")), format=fmt, group_size=32, ignore=(skipped,),
                                  output=out, threads=2, verify="none"))
    loaded = load(out)
    dense = loaded.get_submodule(skipped)
    assert type(dense) is torch.nn.Linear
    source = Checkpoint.open(model_path("tiny-llama")).read_f32(f"{skipped}.weight")
    assert np.array_equal(dense.weight.detach().numpy(), source)
    check_against_loader("tiny-llama", out)


@pytest.mark.parametrize("fmt,method,options", [("gptq", "gptq", (("act_order", True),)), ("awq", "awq", ())],
                         ids=["gptq-act-order", "awq"])
def test_calibrated_methods_write_folders_the_loader_reads(tmp_path: object, fmt: str, method: str,
                                                           options: tuple) -> None:
    """The real GPTQ (with act order: g_idx and desc_act) and AWQ through the driver into their own formats."""
    out = tmp_path / fmt
    convert_int(IntConvertRequest(model=str(model_path("tiny-llama")), format=fmt, group_size=32, method=method,
                                  method_options=options, ctx=64, chunks=4, output=out, threads=2, verify="none"))
    qc = Checkpoint.open(out).config["quantization_config"]
    if fmt == "gptq":
        assert qc["desc_act"] is True
        assert not np.array_equal(Checkpoint.open(out).read_raw("model.layers.0.mlp.down_proj.g_idx"),
                                  np.arange(672) // 32)
    check_against_loader("tiny-llama", out)
