"""Our importance matrices against independent implementations.

- Statistics: transformers runs the same checkpoint on the same chunks, and forward pre-hooks on every nn.Linear
  sum the squared inputs per column (in float64). Per tensor, the relative L2 error of our sums must be <= 1e-3,
  and the token counts must be equal.
- Tokens: llama.cpp itself (llama-cpp-python, vocab only, on the GGUF quantcli writes) tokenizes the text the
  way llama-imatrix does (add_special=true: BOS as the vocabulary says); our chunks must be the same tokens.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from quantcli.io.checkpoint import Checkpoint
from quantcli.plan.gguf import SourceModel
from quantcli.stages.calibrate import CalibrateOptions, calibrate, routes_for, special_ids
from quantcli.stages.chunks import chunk_tokens, with_bos
from quantcli.stages.calibration_data import CalibrationText, builtin_text
from quantcli.stages.eval_text import text_tokens
from tests.fixtures.paths import model_path

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-3
TINY = ("tiny-llama", "tiny-qwen3", "tiny-gemma2", "tiny-phi3", "tiny-mistral", "tiny-bert")

pytestmark = pytest.mark.slow   # every test here needs the built models


def text() -> CalibrationText:
    return builtin_text("calibration")


def our_chunks(model: Path, data: CalibrationText, ctx: int, chunks: int) -> np.ndarray:
    special = special_ids(SourceModel.open(Checkpoint.open(model)).tokenizer(None))
    return with_bos(chunk_tokens(text_tokens(model, data.text, special), ctx, chunks), special.bos)


def torch_statistics(model: Path, chunks: np.ndarray) -> dict[str, tuple[np.ndarray, int]]:
    """HF weight name -> (sum of squared inputs per column, rows seen), from hooks on transformers' Linears."""
    config = transformers.AutoConfig.from_pretrained(model)
    cls = transformers.AutoModel if config.model_type == "bert" else transformers.AutoModelForCausalLM
    net = cls.from_pretrained(model, dtype=torch.float32, attn_implementation="eager").eval()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def pre(module: torch.nn.Module, inputs: tuple) -> None:
            x = inputs[0].detach().double().reshape(-1, inputs[0].shape[-1])
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return pre

    for name, module in net.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(hook(name + ".weight"))
    with torch.no_grad():
        net(input_ids=torch.from_numpy(chunks.astype(np.int64)))
    return {n: (s.numpy(), counts[n]) for n, s in sums.items()}


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(ours.astype(np.float64) - ref) / np.linalg.norm(ref))


def assert_agreement(model: Path, ctx: int, n_chunks: int, process_output: bool) -> dict[str, float]:
    data = text()
    result = calibrate(model, data, CalibrateOptions(ctx=ctx, chunks=n_chunks, process_output=process_output))
    chunks = our_chunks(model, data, ctx, n_chunks)
    reference = torch_statistics(model, chunks)
    routes = routes_for(SourceModel.open(Checkpoint.open(model)).specs, process_output=process_output)
    errors = {}
    for hf_name, route in routes.items():
        # a BertModel's modules lack the "bert." prefix some checkpoints store their weights under
        key = hf_name if hf_name in reference else hf_name.removeprefix("bert.")
        ref_sums, ref_count = reference[key]
        entry = result.stats.entries[route.tensor]
        assert entry.counts.tolist() == [ref_count] == [n_chunks * ctx]
        errors[route.tensor] = relative_error(entry.sums[route.matrix], ref_sums)
    worst = max(errors, key=errors.get)  # type: ignore[arg-type]
    assert errors[worst] <= TOLERANCE, f"{worst}: relative error {errors[worst]:.2e}"
    assert set(errors) == set(result.stats.entries)
    return errors


@pytest.mark.parametrize("model", TINY)
def test_statistics_agree_with_transformers_hooks(model: str) -> None:
    assert_agreement(model_path(model), ctx=64, n_chunks=3, process_output=model != "tiny-bert")


def test_statistics_agree_on_smollm2() -> None:
    errors = assert_agreement(model_path("SmolLM2-135M-Instruct"), ctx=128, n_chunks=2, process_output=True)
    assert len(errors) == 30 * 7            # every matrix of the 30 blocks; the tied head has no output.weight


@pytest.mark.parametrize("model", ("SmolLM2-135M-Instruct", "tiny-gemma2", "tiny-llama"))
def test_chunks_are_llama_cpp_s_tokens(model: str, tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from quantcli.pipeline.convert import ConvertRequest, convert, recipe_from_type

    gguf = tmp_path / "f32.gguf"
    convert(ConvertRequest(model=str(model_path(model)), recipe=recipe_from_type("F32"), output=gguf, verify="none"))
    vocab = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    sample = gzip.decompress(Path(__file__).resolve().parents[2].joinpath("quantcli/data/calibration.txt.gz")
                             .read_bytes()).decode()[:30000]
    sample = sample[:15000] + " <|im_start|>user <s> [CLS] " + sample[15000:]   # special-token text stays text
    # llama-imatrix: common_tokenize(ctx, text, add_special=true, parse_special=false), then BOS over each chunk
    theirs = np.asarray(vocab.tokenize(sample.encode(), add_bos=True, special=False), dtype=np.int32)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(vocab.model)))
    ctx = 256
    expected = with_bos(chunk_tokens(theirs, ctx), vocab.token_bos() if add_bos else None)
    data = CalibrationText(sample, "sample", "")
    ours = our_chunks(model_path(model), data, ctx, len(expected))
    assert ours.shape == expected.shape
    assert (ours == expected).all(), f"{int((ours != expected).sum())} of {ours.size} tokens differ"
