"""quantcli from the HF folder against llama.cpp's quantizer on the same weights: same type and bytes per tensor.

For each model, our F32 GGUF is the peer's input (llama_model_quantize, the code llama-quantize runs, 2 threads);
quantcli converts the HF checkpoint straight to the mix in one pass. Every tensor must have the same type and the
same bytes. The same holds with an importance matrix (an imatrix file with known values, given to both). llama.cpp
then loads our files and, for SmolLM2, gives a finite perplexity on English text equal to the peer file's.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter

from quantcli.errors import InputError
from quantcli.pipeline.convert import ConvertRequest, convert, recipe_from_type
from quantcli.quant.mixes import MIXES
from tests.fixtures.paths import model_path
from tests.fixtures.threads import LLAMA_THREADS
from tests.gguf_files import scalar_metadata, stored_tensors, tensor_shapes

pytestmark = [pytest.mark.slow, pytest.mark.backend]
llama_cpp = pytest.importorskip("llama_cpp")
from tests.llama_quantize_oracle import QuantizeRun, llama_quantize  # noqa: E402

MIX_NAMES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S",
             "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0")
IMATRIX_MIXES = ("Q4_0", "Q5_1", "Q2_K", "Q2_K_S", "Q3_K_M", "Q4_K_M", "Q5_K_S", "Q6_K", "IQ4_NL", "IQ4_XS")
TINY = ("tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3", "tiny-gemma2", "tiny-gemma3", "tiny-phi3", "tiny-bert")
MODELS = ("SmolLM2-135M-Instruct",) + TINY


# `make test` runs the suite in two pytest-xdist workers (--dist loadgroup, docs/ci.md). Each model's F32 input
# (f32_input) is converted once per worker, so the cases of one model stay together, and the models spread over
# the workers. SmolLM2's cases are a third of this file's time: its imatrix and override cases form a second
# group (`part`), which costs one more F32 conversion (seconds) and lets the other worker take them.
def oracle_group(model: str, part: str = "") -> pytest.MarkDecorator:
    return pytest.mark.xdist_group(f"oracle-{model}{part}")


def by_model(models: tuple[str, ...], part: str = "") -> list[object]:
    """The `model` parameter values, each in its model's xdist group."""
    return [pytest.param(model, marks=oracle_group(model, part if model == PPL_MODEL else "")) for model in models]


def ours(model: str, mix: str, out: Path, imatrix: Path | None = None, **flags: object) -> Path:
    convert(ConvertRequest(model=str(model_path(model)), recipe=recipe_from_type(mix, **flags), output=out,
                           threads=2, imatrix=imatrix, verify="none"))
    return out


@pytest.fixture(scope="session")
def f32_input(tmp_path_factory: pytest.TempPathFactory):
    made: dict[str, Path] = {}

    def get(model: str) -> Path:
        if model not in made:
            made[model] = ours(model, "F32", tmp_path_factory.mktemp("f32") / f"{model}-F32.gguf")
        return made[model]

    return get


def assert_same_tensors(mine: Path, peer: Path) -> None:
    a, b = stored_tensors(mine), stored_tensors(peer)
    assert set(a) == set(b)
    wrong_type = {n: (a[n].qtype.name, b[n].qtype.name) for n in b if a[n].qtype != b[n].qtype}
    assert not wrong_type, f"types differ (ours, llama.cpp): {wrong_type}"
    wrong_bytes = [n for n in b if a[n].data != b[n].data]
    assert not wrong_bytes, f"{len(wrong_bytes)} of {len(b)} tensors have different bytes: {wrong_bytes[:5]}"


def write_imatrix(source: Path, path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """An imatrix file in llama-imatrix's GGUF format with known values (count 1, so weights = sums)."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(path, arch="imatrix")
    w.add_array("imatrix.datasets", ["quantcli-test"])
    w.add_uint32("imatrix.chunk_count", 7)
    w.add_uint32("imatrix.chunk_size", 512)
    weights = {}
    for name, shape in tensor_shapes(source).items():
        if len(shape) >= 2 and name.startswith("blk."):
            values = rng.uniform(0.05, 3.0, size=shape[0]).astype(np.float32)
            values[::17] = 0.0  # zero importance happens in real matrices (dead columns)
            weights[name] = values
            w.add_tensor(f"{name}.in_sum2", values)
            w.add_tensor(f"{name}.counts", np.ones(1, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return weights


# The mixes whose SmolLM2 files llama.cpp also scores (test_perplexity_equals_the_peer_file): the byte test's pair
# of files is kept for the session so the perplexity test does not quantize them a second time.
PPL_MODEL = "SmolLM2-135M-Instruct"
PPL_MIXES = ("Q8_0", "Q4_K_M", "Q2_K", "IQ4_XS")


@pytest.fixture(scope="session")
def plain_pair(f32_input, tmp_path_factory: pytest.TempPathFactory):
    kept: dict[tuple[str, str], tuple[Path, Path]] = {}

    def get(model: str, mix: str, folder: Path) -> tuple[Path, Path]:
        """(ours, llama.cpp's) files of `mix` without an imatrix; kept across tests for the perplexity mixes."""
        key = (model, mix)
        if key in kept:
            return kept[key]
        if model == PPL_MODEL and mix in PPL_MIXES:
            folder = tmp_path_factory.mktemp(f"pair-{mix}")
        peer = folder / "peer.gguf"
        assert llama_quantize(f32_input(model), peer, QuantizeRun(MIXES[mix].ftype)) == 0
        pair = (ours(model, mix, folder / "ours.gguf"), peer)
        if model == PPL_MODEL and mix in PPL_MIXES:
            kept[key] = pair
        return pair

    return get


@pytest.mark.parametrize("mix", MIX_NAMES)
@pytest.mark.parametrize("model", by_model(MODELS))
def test_same_bytes_as_llama_quantize(plain_pair, tmp_path: Path, model: str, mix: str) -> None:
    assert_same_tensors(*plain_pair(model, mix, tmp_path))


@oracle_group("tiny-llama")
def test_mixes_that_need_an_imatrix_are_refused_without_one(f32_input, tmp_path: Path) -> None:
    assert llama_quantize(f32_input("tiny-llama"), tmp_path / "peer.gguf", QuantizeRun(MIXES["Q2_K_S"].ftype)) != 0
    with pytest.raises(InputError, match="imatrix"):
        ours("tiny-llama", "Q2_K_S", tmp_path / "ours.gguf")
    assert not (tmp_path / "ours.gguf").exists()


@pytest.mark.parametrize("mix", IMATRIX_MIXES)
@pytest.mark.parametrize("model", by_model(("SmolLM2-135M-Instruct", "tiny-llama", "tiny-qwen3", "tiny-gemma2"),
                                           part="-second"))
def test_same_bytes_with_an_imatrix(f32_input, tmp_path: Path, model: str, mix: str) -> None:
    source = f32_input(model)
    weights = write_imatrix(source, tmp_path / "imatrix.gguf")
    peer = tmp_path / "peer.gguf"
    assert llama_quantize(source, peer, QuantizeRun(MIXES[mix].ftype, imatrix=weights)) == 0
    mine = ours(model, mix, tmp_path / "ours.gguf", imatrix=tmp_path / "imatrix.gguf")
    assert_same_tensors(mine, peer)
    meta = scalar_metadata(mine)
    assert meta["quantize.imatrix.entries_count"] == len(weights)
    assert meta["quantize.imatrix.chunks_count"] == 7
    assert meta["quantize.imatrix.dataset"] == "quantcli-test"


@pytest.mark.parametrize("model", by_model(("SmolLM2-135M-Instruct", "tiny-qwen2"), part="-second"))
def test_same_bytes_with_overrides(f32_input, tmp_path: Path, model: str) -> None:
    T = GGMLQuantizationType
    # token_embd's rows (576 and 128 values) take no 256-block type: llama.cpp does not fall back for a forced
    # type and fails (SmolLM2) or aborts (tiny-qwen2), while quantcli refuses it up front
    # (tests/cli/test_bad_input.py), so the forced types here are ones every row can hold.
    run = QuantizeRun(MIXES["Q5_K_M"].ftype, output_tensor_type=T.Q8_0, token_embedding_type=T.Q5_1,
                      tensor_types=(("attn_v", T.Q8_0), ("ffn_down", T.Q4_0)))
    peer = tmp_path / "peer.gguf"
    assert llama_quantize(f32_input(model), peer, run) == 0
    mine = ours(model, "Q5_K_M", tmp_path / "ours.gguf", output_tensor_type="Q8_0", token_embedding_type="Q5_1",
                tensor_types=(("attn_v", "Q8_0"), ("ffn_down", "Q4_0")))
    assert_same_tensors(mine, peer)


@oracle_group("tiny-llama")
def test_pure_mode_matches(f32_input, tmp_path: Path) -> None:
    peer = tmp_path / "peer.gguf"
    assert llama_quantize(f32_input("tiny-llama"), peer, QuantizeRun(MIXES["Q4_K_M"].ftype, pure=True)) == 0
    assert_same_tensors(ours("tiny-llama", "Q4_K_M", tmp_path / "ours.gguf", pure=True), peer)


# -- llama.cpp loads the files and measures the same quality ------------------------------------------------------

ENGLISH = Path("/usr/share/common-licenses/GPL-3")  # from Debian's base-files: always on a Debian machine


def perplexity(path: Path, tokens: list[int]) -> float:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(tokens) + 8, logits_all=True, verbose=False,
                          **LLAMA_THREADS)
    llm.eval(tokens)
    logits = np.asarray(llm.scores[: len(tokens)], dtype=np.float64)
    logp = logits - logits.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    nll = -np.mean([logp[i, tokens[i + 1]] for i in range(len(tokens) - 1)])
    return math.exp(nll)


@oracle_group(PPL_MODEL)
@pytest.mark.parametrize("mix", PPL_MIXES)
def test_perplexity_equals_the_peer_file(plain_pair, tmp_path: Path, mix: str) -> None:
    mine, peer = plain_pair(PPL_MODEL, mix, tmp_path)
    text = ENGLISH.read_text()[:1500]
    tokens = llama_cpp.Llama(model_path=str(mine), vocab_only=True, verbose=False).tokenize(text.encode(), add_bos=False)[:192]
    ppl_ours, ppl_peer = perplexity(mine, tokens), perplexity(peer, tokens)
    assert math.isfinite(ppl_ours) and ppl_ours < 1000
    assert abs(ppl_ours - ppl_peer) <= 0.01 * ppl_peer
