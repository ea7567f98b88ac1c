"""The real loaders are the oracle for our integer safetensors folders.

transformers + compressed-tensors (the versions pyproject pins) load each folder on this CPU and:
- rebuild dense weights (dequantize=True) equal, bit for bit, to our own dequantization in the scale's dtype;
- give logits equal to a float32 transformers model whose Linear weights are replaced by that dequantization,
  both when loaded dense and when loaded compressed (the package decompresses on the first forward; for W8A8 it
  also quantizes every Linear input per token to int8, which the reference below reproduces with hooks);
- generate the same greedy continuation as that float32 model.
bitsandbytes NF4 folders likewise, on bitsandbytes' float32 path; on a CPU with AVX512-BF16, its default bf16 kernel
is also held to bf16 precision (conftest.bnb_float32_path).
"""
from __future__ import annotations

import numpy as np
import pytest

from quantcli.io.compressed_tensors import CompressedTensorsReader
from quantcli.io.checkpoint import Checkpoint
from quantcli.io.quantized_folder import open_folder_reader
from quantcli.pipeline.convert_int import IntConvertRequest, convert_int
from tests.fixtures.paths import model_path

from .conftest import assert_bnb_kernel_close, bnb_bf16_kernel, bnb_float32_path

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

pytestmark = pytest.mark.slow

PROMPT = "The quick brown fox jumps over the lazy dog. Quantization stores each weight in fewer bits"
# (model, scheme, group size, method, symmetric); tiny-llama's FFN rows are 672 wide, so it takes groups of 32.
CASES = {
    "tiny-w4a16-g32": ("tiny-llama", "W4A16", 32, "minmax", None),
    "tiny-w4a16-channel-mse": ("tiny-llama", "W4A16", 0, "mse", None),
    "tiny-w8a16-g32": ("tiny-llama", "W8A16", 32, "minmax", None),
    "tiny-w8a8": ("tiny-llama", "W8A8", -1, "minmax", None),
    "tiny-bf16-w4a16-g32-mse": ("tiny-llama-bf16", "W4A16", 32, "mse", None),
    "smollm2-w4a16-g64": ("SmolLM2-135M-Instruct", "W4A16", 64, "minmax", None),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object]:
    model, scheme, group, method, sym = CASES[request.param]
    out = tmp_path_factory.mktemp("int") / request.param
    convert_int(IntConvertRequest(model=str(model_path(model)), scheme=scheme, group_size=group, method=method,
                                  symmetric=sym, output=out, threads=2, verify="none"))
    return model, out


def _ours(out: object, dense_dtype: str | None = None) -> dict[str, np.ndarray]:
    """Our dequantization of every quantized weight, rounded to the stored scale dtype (or to dense_dtype)."""
    reader = open_folder_reader(Checkpoint.open(out))
    assert isinstance(reader, CompressedTensorsReader)
    return {f"{m}.weight": reader.dense(m, dense_dtype) for m in reader.modules}


def _reference(model: str, dense: dict[str, np.ndarray]) -> object:
    ref = transformers.AutoModelForCausalLM.from_pretrained(model_path(model), dtype=torch.float32)
    state = ref.state_dict()
    for name, w in dense.items():
        state[name].copy_(torch.from_numpy(w))
    return ref.eval()


def _per_token_int8(module: object, args: tuple) -> tuple:
    # compressed-tensors' dynamic token strategy: scale = absmax / 127.5 per row of the input, codes rounded half
    # to even and clamped to [-128, 127], then multiplied back (quantization_config input_activations).
    x = args[0]
    amax = torch.clamp(x.abs().amax(dim=-1, keepdim=True), min=0)
    scale = amax / 127.5
    scale = torch.where(scale == 0, torch.finfo(x.dtype).eps, scale)
    return (torch.clamp(torch.round(x / scale), -128, 127) * scale,) + tuple(args[1:])


def _tokens(model: str) -> object:
    tok = transformers.AutoTokenizer.from_pretrained(model_path(model))
    return tok(PROMPT, return_tensors="pt").input_ids[:, :48]


def test_loader_rebuilds_our_dense_weights_bit_for_bit(folder: tuple[str, object]) -> None:
    _, out = folder
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        out, quantization_config=transformers.CompressedTensorsConfig(dequantize=True))
    state = loaded.state_dict()
    ours = _ours(out)
    assert ours, "the folder has quantized modules"
    for name, w in ours.items():
        theirs = state[name].float().numpy()
        assert np.array_equal(theirs, w), name


def test_logits_equal_a_float32_model_with_our_weights(folder: tuple[str, object]) -> None:
    model, out = folder
    # Loaded in float32, the package casts the stored scales to float32 and multiplies there: the dense weight is
    # (code - zero) * scale without rounding to the scale's stored dtype.
    ref = _reference(model, _ours(out, "F32"))
    ids = _tokens(model)
    # Compressed (the package decompresses on the first forward), computing in float32 like the reference.
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    acts = Checkpoint.open(out).config["quantization_config"]["config_groups"]["group_0"]["input_activations"]
    if acts is not None:
        for name, module in ref.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                module.register_forward_pre_hook(_per_token_int8)
    with torch.no_grad():
        want = ref(ids).logits
        got = loaded(ids).logits
    assert torch.equal(got, want)


def test_greedy_generation_matches_the_dequantized_model(folder: tuple[str, object]) -> None:
    model, out = folder
    ref = _reference(model, _ours(out))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        out, quantization_config=transformers.CompressedTensorsConfig(dequantize=True), dtype=torch.float32).eval()
    ids = _tokens(model)
    kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        assert loaded.generate(ids, **kwargs).tolist() == ref.generate(ids, **kwargs).tolist()


def test_asymmetric_folder_decompresses_with_the_package(tmp_path: object) -> None:
    # transformers 5.24 + compressed-tensors 0.20 cannot load any asymmetric pack-quantized checkpoint (the
    # module it builds expects unpacked zero points, the compressor writes them packed; llm-compressor issue
    # #1618). The package's own decompressor is the oracle for the bytes here.
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme

    out = tmp_path / "asym"
    convert_int(IntConvertRequest(model=str(model_path("tiny-llama")), scheme="W4A16_ASYM", group_size=32,
                                  output=out, threads=2, verify="none"))
    ckpt = Checkpoint.open(out)
    group = ckpt.config["quantization_config"]["config_groups"]["group_0"]
    scheme = QuantizationScheme.model_validate(group)
    ours = _ours(out)
    from safetensors.torch import load_file

    tensors = load_file(str(out / "model.safetensors"))
    for name, w in ours.items():
        module = name[: -len(".weight")]
        local = {k[len(module) + 1:]: v for k, v in tensors.items() if k.startswith(module + ".weight_")}
        dense = PackedQuantizationCompressor.decompress(local, scheme)["weight"]
        assert np.array_equal(dense.float().numpy(), w), name


# ---- bitsandbytes NF4 ---------------------------------------------------------------------------------------
# transformers + bitsandbytes on the CPU. tiny-llama's down_proj rows (672) are not a multiple of 64, which
# bitsandbytes' CPU kernel decodes wrongly, so the writer refuses them and these folders ignore them.
NF4_CASES = {
    "tiny-nf4-dq": ("tiny-llama", True),
    "tiny-nf4-plain": ("tiny-llama", False),
    "tiny-bf16-nf4-dq": ("tiny-llama-bf16", True),
    "smollm2-nf4-dq": ("SmolLM2-135M-Instruct", True),
}


@pytest.fixture(scope="module", params=sorted(NF4_CASES))
def nf4_folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object]:
    pytest.importorskip("bitsandbytes")
    model, double = NF4_CASES[request.param]
    out = tmp_path_factory.mktemp("nf4") / request.param
    ignore = ("re:.*down_proj",) if model.startswith("tiny") else ()
    convert_int(IntConvertRequest(model=str(model_path(model)), format="bnb-nf4", double_quant=double,
                                  ignore=ignore, output=out, threads=2, verify="none"))
    return model, out


def _nf4_ours(out: object) -> dict[str, np.ndarray]:
    """Our dequantization of each NF4 weight, rounded to the model dtype recorded in its quant_state."""
    from quantcli.io import bnb
    from quantcli.io.int_codes import round_to

    ckpt = Checkpoint.open(out)
    dense = {}
    for name in ckpt.tensors:
        if name.endswith("." + bnb.STATE_KEY):
            module = name[: -len(bnb.STATE_KEY) - 1]
            codes, shape, dtype = bnb.read_module(ckpt.read_raw, ckpt.tensors, module)
            key = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype]
            dense[f"{module}.weight"] = round_to(codes.dequantize(shape), key)[1]
    return dense


def test_bitsandbytes_loads_nf4_and_rebuilds_our_weights(nf4_folder: tuple[str, object]) -> None:
    import bitsandbytes as bnb_lib
    import bitsandbytes.functional as F

    model, out = nf4_folder
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert (bnb_float32_path(loaded) > 0) == bnb_bf16_kernel()
    ours = _nf4_ours(out)
    assert ours
    for name, w in ours.items():
        module = loaded.get_submodule(name[: -len(".weight")])
        assert isinstance(module, bnb_lib.nn.Linear4bit), name
        dense = F.dequantize_4bit(module.weight.data, module.weight.quant_state).float().numpy()
        assert np.array_equal(dense, w), name
    if module.weight.quant_state.dtype != torch.float32:
        return   # a bf16 model: the weights match; bitsandbytes runs its matmul in the model dtype, not float32
    ref = _reference(model, ours)
    ids = _tokens(model)
    kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        want = ref(ids).logits
        assert torch.equal(loaded(ids).logits, want)
        assert loaded.generate(ids, **kwargs).tolist() == ref.generate(ids, **kwargs).tolist()
        if bnb_bf16_kernel():   # this CPU has AVX512-BF16: bitsandbytes' default forward is its bf16 kernel
            default = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
            assert_bnb_kernel_close(default(ids).logits[0].numpy(), want[0].numpy(), f"{model} NF4, bf16 kernel")
