"""Model-level verify: llama-perplexity's scoring rule, its statistics, the stage around a (fake) engine, the
recipe thresholds and the command.

The scoring tests compare against plain per-token loops written here from the rule as llama-perplexity states it
(perplexity.cpp: chunks of n_ctx, BOS on each chunk's first token, positions n_ctx/2 .. n_ctx-2 predict the next
token; percentiles by linear interpolation at fraction * (n - 1)), not against the module's own output.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Iterator

import gguf
import numpy as np
import pytest
from typer.testing import CliRunner

from quantcli.cli.app import app
from quantcli.errors import InputError, RecipeError, VerifyError
from quantcli.recipe.schema import parse_recipe
from quantcli.stages import verify_model as stage
from quantcli.stages.chunks import chunk_tokens
from quantcli.stages.perplexity import PerplexityScorer, scored_per_chunk



# ---- reference: one token at a time, straight from the rule -----------------------------------------------------

def _ref_logp(row: np.ndarray) -> list[float]:
    m = max(float(v) for v in row)
    total = sum(math.exp(float(v) - m) for v in row)
    return [float(v) - m - math.log(total) for v in row]


def _ref_percentile(values: list[float], fraction: float) -> float:
    s = sorted(values)
    p = fraction * (len(s) - 1)
    i = int(p)
    return (1 - (p - i)) * s[i] + (p - i) * s[min(i + 1, len(s) - 1)]


def _reference(chunks: np.ndarray, logits: list[np.ndarray], base: list[np.ndarray]) -> dict[str, float]:
    ctx = chunks.shape[1]
    nll, nll_b, kld, dp, same = [], [], [], [], 0
    for chunk, lg, bl in zip(chunks, logits, base):
        for pos in range(ctx // 2, ctx - 1):
            target = int(chunk[pos + 1])
            lp, lq = _ref_logp(lg[pos]), _ref_logp(bl[pos])
            nll.append(-lp[target])
            nll_b.append(-lq[target])
            kld.append(sum(math.exp(q) * (q - p) for p, q in zip(lp, lq)))
            dp.append(math.exp(lp[target]) - math.exp(lq[target]))
            same += int(np.argmax(lg[pos]) == np.argmax(bl[pos]))
    n = len(nll)
    return {"n": n, "ppl": math.exp(sum(nll) / n), "ppl_source": math.exp(sum(nll_b) / n),
            "ln_ratio": sum(nll) / n - sum(nll_b) / n, "kld_mean": sum(kld) / n,
            "kld_median": _ref_percentile(kld, 0.5), "kld_p90": _ref_percentile(kld, 0.9),
            "kld_p95": _ref_percentile(kld, 0.95), "kld_p99": _ref_percentile(kld, 0.99), "kld_max": max(kld),
            "same_top1": same / n, "rms_dp": math.sqrt(sum(d * d for d in dp) / n)}


def _random_case(n_chunks: int = 3, ctx: int = 16, vocab: int = 23, seed: int = 7) -> tuple[np.ndarray, list, list]:
    rng = np.random.default_rng(seed)   # its own seed: the same case whichever tests ran before
    chunks = rng.integers(0, vocab, size=(n_chunks, ctx)).astype(np.int32)
    base = [rng.normal(0, 3, size=(ctx, vocab)).astype(np.float32) for _ in range(n_chunks)]
    logits = [(b + rng.normal(0, 0.7, size=b.shape)).astype(np.float32) for b in base]
    return chunks, logits, base


# ---- scoring rule -----------------------------------------------------------------------------------------------

def test_figures_match_a_per_token_reference() -> None:
    chunks, logits, base = _random_case()
    scorer = PerplexityScorer(16)
    for c, lg, bl in zip(chunks, logits, base):
        scorer.add(c, lg, bl)
    got, want = scorer.result(), _reference(chunks, logits, base)
    assert got.n_scored == want["n"] == 3 * scored_per_chunk(16) == 3 * 7
    for key, value in (("ppl", want["ppl"]), ("ppl_source", want["ppl_source"]), ("ln_ppl_ratio", want["ln_ratio"]),
                       ("kld_mean", want["kld_mean"]), ("kld_median", want["kld_median"]),
                       ("kld_p90", want["kld_p90"]), ("kld_p95", want["kld_p95"]), ("kld_p99", want["kld_p99"]),
                       ("kld_max", want["kld_max"]), ("same_top1", want["same_top1"]), ("rms_dp", want["rms_dp"])):
        assert getattr(got, key) == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert 0 < got.same_top1 < 1 and got.kld_mean > 0


def test_the_scored_half_alone_gives_the_same_figures() -> None:
    # Engine.run(logits_from=ctx // 2) hands over only the rows the scorer reads: the figures are identical
    chunks, logits, base = _random_case()
    whole, half = PerplexityScorer(16), PerplexityScorer(16)
    for c, lg, bl in zip(chunks, logits, base):
        whole.add(c, lg, bl)
        half.add(c, lg[8:], bl[8:])
    assert half.result() == whole.result()
    with pytest.raises(ValueError, match="logits"):
        PerplexityScorer(16).add(chunks[0], logits[0][5:])


def test_uniform_logits_give_the_vocabulary_size() -> None:
    scorer = PerplexityScorer(8)
    scorer.add(np.arange(8), np.zeros((8, 50), np.float32))
    assert scorer.result().ppl == pytest.approx(50.0, rel=1e-12)


def test_only_the_second_half_predicting_the_next_token_is_scored() -> None:
    chunks, logits, base = _random_case(n_chunks=1, ctx=12)
    first = PerplexityScorer(12)
    first.add(chunks[0], logits[0], base[0])
    # Changing the first half's logits and targets, or the last position's logits (it predicts nothing), is unseen.
    lg, bl, ch = logits[0].copy(), base[0].copy(), chunks[0].copy()
    rng = np.random.default_rng(8)
    lg[:6] = rng.normal(size=lg[:6].shape)
    bl[:6] = rng.normal(size=bl[:6].shape)
    lg[11] += 5.0
    ch[:6] = (ch[:6] + 1) % 23
    second = PerplexityScorer(12)
    second.add(ch, lg, bl)
    assert first.result() == second.result()
    # Changing the target of position 6 (the token at 7) is seen.
    ch[7] = (ch[7] + 1) % 23
    third = PerplexityScorer(12)
    third.add(ch, lg, bl)
    assert third.result().ppl != first.result().ppl


def test_identical_models_agree_perfectly() -> None:
    chunks, _, base = _random_case()
    scorer = PerplexityScorer(16)
    for c, bl in zip(chunks, base):
        scorer.add(c, bl, bl.copy())
    res = scorer.result()
    assert res.ppl == pytest.approx(res.ppl_source, rel=1e-12)
    assert abs(res.kld_mean) < 1e-12 and abs(res.kld_max) < 1e-12
    assert res.same_top1 == 1.0 and res.rms_dp < 1e-12


def test_two_token_kld_has_its_closed_form() -> None:
    # base p = (0.8, 0.2), model q = (0.5, 0.5): KL(p||q) = 0.8 ln 1.6 + 0.2 ln 0.4.
    base = np.log(np.array([[0.8, 0.2]] * 4, np.float32))
    model = np.zeros((4, 2), np.float32)
    scorer = PerplexityScorer(4)
    scorer.add(np.array([0, 0, 0, 1]), model, base)
    res = scorer.result()
    assert res.kld_mean == pytest.approx(0.8 * math.log(1.6) + 0.2 * math.log(0.4), rel=1e-6)
    assert res.same_top1 == 0.0 or res.same_top1 == 1.0   # a tie in the model: argmax takes the first
    assert res.rms_dp == pytest.approx(0.3, rel=1e-6)      # target 1: 0.5 - 0.2


def test_mixing_chunks_with_and_without_base_is_refused() -> None:
    chunks, logits, base = _random_case(n_chunks=2)
    scorer = PerplexityScorer(16)
    scorer.add(chunks[0], logits[0], base[0])
    with pytest.raises(ValueError, match="base logits"):
        scorer.add(chunks[1], logits[1])


# ---- the stage, with a fake engine ------------------------------------------------------------------------------

WORDS = [f"w{i}" for i in range(30)]


class FakeEngine:
    """A causal bigram 'model': logits at t = table[token t] + 0.5 * table2[token t-1]; records its inputs."""

    is_encoder = False
    n_ctx_train = 64

    def __init__(self, vocab: int, noise: float, seed: int) -> None:
        gen = np.random.default_rng(seed)
        base = np.random.default_rng(0)
        self.table = base.normal(0, 2, (vocab, vocab)) + gen.normal(0, noise, (vocab, vocab))
        self.table2 = base.normal(0, 1, (vocab, vocab))
        self.vocab_size = vocab
        self.inputs: list[np.ndarray] = []

    def run(self, tokens: np.ndarray, *, capture: Any = None, logits: bool = True,
            logits_from: int = 0) -> Iterator[np.ndarray]:
        self.inputs.append(tokens.copy())
        for seq in tokens:
            prev = np.concatenate([[seq[0]], seq[:-1]])
            yield (self.table[seq] + 0.5 * self.table2[prev]).astype(np.float32)[logits_from:]

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        self.inputs.append(tokens.copy())
        return self.table[tokens].mean(axis=1).astype(np.float32)


def _write_source(folder: Path) -> Path:
    """A checkpoint folder with only what the stage reads itself: a word-level tokenizer.json."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    folder.mkdir()
    vocab = {w: i for i, w in enumerate(WORDS)}
    vocab["[UNK]"] = len(vocab)
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    return folder


def _write_gguf(path: Path, *, model: str = "gpt2", add_bos: bool | None = None, bos: int = 29,
                sep: int | None = None) -> Path:
    """A metadata-only GGUF carrying the special-token facts."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("tokenizer.ggml.model", model)
    w.add_uint32("tokenizer.ggml.bos_token_id", bos)
    if add_bos is not None:
        w.add_bool("tokenizer.ggml.add_bos_token", add_bos)
    if sep is not None:
        w.add_uint32("tokenizer.ggml.seperator_token_id", sep)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    source = _write_source(tmp_path / "src")
    data = tmp_path / "eval.txt"
    words = np.random.default_rng(3).integers(0, 29, 400)
    data.write_text(" ".join(WORDS[i] for i in words) + "\n", encoding="utf-8")
    engines: dict[str, FakeEngine] = {"src": FakeEngine(31, 0.0, 1), "out": FakeEngine(31, 0.3, 2)}
    monkeypatch.setattr(stage, "open_engines", lambda path, src, threads: (engines["src"], engines["out"]))
    return {"source": source, "data": data, "engines": engines, "ids": words, "tmp": tmp_path}


def test_stage_scores_the_text_in_chunks_with_bos(workspace: dict[str, Any]) -> None:
    gguf_path = _write_gguf(workspace["tmp"] / "m.gguf", add_bos=True, bos=30)
    report = stage.verify_model(gguf_path, workspace["source"], workspace["data"], ctx=32, chunks=5)
    res = report.result
    src, out = workspace["engines"]["src"], workspace["engines"]["out"]
    # The text with BOS prepended, cut into chunks of 32; each chunk given to both models with BOS first.
    ids = np.concatenate([[30], workspace["ids"]])
    chunks = ids[: 5 * 32].reshape(5, 32)
    given = np.concatenate(src.inputs)
    assert given.shape == (5, 32) and (given[:, 0] == 30).all() and (given[:, 1:] == chunks[:, 1:]).all()
    assert np.array_equal(np.concatenate(out.inputs), given)
    want = _reference(chunks, list(out.run(given)), list(src.run(given)))
    assert res.n_chunks == 5 and res.n_scored == want["n"]
    assert res.ppl == pytest.approx(want["ppl"], rel=1e-9)
    assert res.kld_mean == pytest.approx(want["kld_mean"], rel=1e-9)
    assert res.same_top1 == pytest.approx(want["same_top1"])
    j = report.to_json()
    for key in ("ppl_source", "ppl", "kld_mean", "kld_median", "kld_p99", "kld_max", "same_top1"):
        assert isinstance(j[key], float)


def test_batches_stream_to_the_same_figures(workspace: dict[str, Any]) -> None:
    gguf_path = _write_gguf(workspace["tmp"] / "m.gguf")
    src, out = workspace["engines"]["src"], workspace["engines"]["out"]
    chunks = chunk_tokens(workspace["ids"].astype(np.int32), 16)
    one = stage.score_perplexity(src, out, chunks, None, batch=1)
    many = stage.score_perplexity(src, out, chunks, None, batch=7)
    assert len(src.inputs) == len(chunks) + math.ceil(len(chunks) / 7)
    assert one.ppl == pytest.approx(many.ppl, rel=1e-12) and one.kld_p99 == pytest.approx(many.kld_p99, rel=1e-12)
    assert gguf_path.is_file()


def test_several_outputs_share_one_source_pass(workspace: dict[str, Any]) -> None:
    src, out = workspace["engines"]["src"], workspace["engines"]["out"]
    other = FakeEngine(31, 1.0, 5)
    chunks = chunk_tokens(workspace["ids"].astype(np.int32), 16)
    both = stage.score_outputs(src, [out, other], chunks, 3, batch=4)
    assert len(src.inputs) == math.ceil(len(chunks) / 4)
    assert both[0] == stage.score_perplexity(src, out, chunks, 3, batch=4)
    assert both[1] == stage.score_perplexity(src, other, chunks, 3, batch=4)
    assert both[1].kld_mean > both[0].kld_mean


def test_gpt2_vocab_without_flag_adds_no_bos(workspace: dict[str, Any]) -> None:
    gguf_path = _write_gguf(workspace["tmp"] / "m.gguf", model="gpt2", bos=30)
    stage.verify_model(gguf_path, workspace["source"], workspace["data"], ctx=16, chunks=2)
    given = workspace["engines"]["src"].inputs[0]
    assert given.tolist() == workspace["ids"][:32].reshape(2, 16).tolist()


def test_builtin_eval_text_is_a_data_source(workspace: dict[str, Any]) -> None:
    gguf_path = _write_gguf(workspace["tmp"] / "m.gguf")
    report = stage.verify_model(gguf_path, workspace["source"], "builtin:eval", ctx=32, chunks=2)
    assert report.data == "builtin:eval" and report.result.n_chunks == 2


def test_too_short_a_text_is_bad_input(workspace: dict[str, Any]) -> None:
    gguf_path = _write_gguf(workspace["tmp"] / "m.gguf")
    workspace["engines"]["src"].n_ctx_train = 4096
    with pytest.raises(InputError, match="tokenizes to 400 tokens; at least 1024 are needed for 2 chunks of --ctx 512"):
        stage.verify_model(gguf_path, workspace["source"], workspace["data"], ctx=512)


def test_ctx_beyond_training_is_bad_input(workspace: dict[str, Any]) -> None:
    gguf_path = _write_gguf(workspace["tmp"] / "m.gguf")
    with pytest.raises(InputError, match="training context"):
        stage.verify_model(gguf_path, workspace["source"], workspace["data"], ctx=128)


def test_encoder_reports_cosine_of_framed_chunks(workspace: dict[str, Any]) -> None:
    gguf_path = _write_gguf(workspace["tmp"] / "m.gguf", model="bert", bos=29, sep=30)
    for eng in workspace["engines"].values():
        eng.is_encoder = True
    report = stage.verify_model(gguf_path, workspace["source"], workspace["data"], ctx=16, chunks=4)
    given = workspace["engines"]["src"].inputs[0]
    assert given.shape == (4, 16) and (given[:, 0] == 29).all() and (given[:, -1] == 30).all()
    assert given[:, 1:-1].ravel().tolist() == workspace["ids"][:4 * 14].tolist()
    a = workspace["engines"]["src"].embed(given).astype(np.float64)
    b = workspace["engines"]["out"].embed(given).astype(np.float64)
    cos = [float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)) for x, y in zip(a, b)]
    assert report.result.cos_mean == pytest.approx(sum(cos) / 4) and report.result.cos_min == pytest.approx(min(cos))
    assert 0.5 < report.result.cos_min < 1.0


def test_thresholds_fail_with_the_figure(workspace: dict[str, Any]) -> None:
    gguf_path = _write_gguf(workspace["tmp"] / "m.gguf")
    report = stage.verify_model(gguf_path, workspace["source"], workspace["data"], ctx=32)
    res = report.result
    stage.check_thresholds(report, max_kld=res.kld_mean * 1.01, max_ppl_ratio=res.ppl_ratio * 1.01)
    with pytest.raises(VerifyError, match=f"KL divergence {res.kld_mean:.6f} is above max_kld") as exc:
        stage.check_thresholds(report, max_kld=res.kld_mean * 0.99)
    assert exc.value.exit_code == 1
    with pytest.raises(VerifyError, match=f"PPL ratio {res.ppl_ratio:.6f}"):
        stage.check_thresholds(report, max_ppl_ratio=min(1.0, res.ppl_ratio) * 0.99)


# ---- recipe thresholds ------------------------------------------------------------------------------------------

def test_recipe_verify_thresholds_load() -> None:
    recipe = parse_recipe("quantize: {type: Q4_K_M}\nverify:\n  max_kld: 0.1\n  max_ppl_ratio: 1.05\n")
    assert (recipe.verify.max_kld, recipe.verify.max_ppl_ratio) == (0.1, 1.05)
    assert parse_recipe("quantize: {type: Q4_K_M}\n").verify.max_kld is None


@pytest.mark.parametrize("value", ["0", "-0.5", ".inf", ".nan"])
def test_recipe_thresholds_must_be_finite_and_positive(value: str) -> None:
    with pytest.raises(RecipeError, match=r"<string>:4: verify.max_ppl_ratio must be (a finite number|0 or more)"):
        parse_recipe(f"quantize: {{type: Q4_K_M}}\nverify:\n  max_kld: 0.1\n  max_ppl_ratio: {value}\n")


# ---- the command ------------------------------------------------------------------------------------------------

def _cli(args: list[str]) -> Any:
    return CliRunner().invoke(app, args, catch_exceptions=False)


def test_command_json_and_threshold_exit(workspace: dict[str, Any]) -> None:
    gguf_path = _write_gguf(workspace["tmp"] / "m.gguf")
    base = ["verify", str(gguf_path), "--source", str(workspace["source"]), "--data", str(workspace["data"]),
            "--ctx", "32", "--chunks", "6"]
    done = _cli(base + ["--json"])
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert data["n_chunks"] == 6 and data["ctx"] == 32 and data["kld_mean"] > 0
    strict = workspace["tmp"] / "strict.yaml"
    strict.write_text(f"quantize: {{type: Q4_K_M}}\nverify:\n  max_kld: {data['kld_mean'] / 2}\n")
    failed = _cli(base + ["--recipe", str(strict)])
    assert failed.exit_code == 1
    assert "KLD mean" in failed.stdout and f"{data['kld_mean']:.6f} is above max_kld" in failed.stderr
    table = _cli(base)
    assert table.exit_code == 0 and "same top-1" in table.stdout and "OK" in table.stdout


def test_command_threads_reach_the_engines(workspace: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    gguf_path = _write_gguf(workspace["tmp"] / "m.gguf")
    asked: list[int] = []
    engines = workspace["engines"]

    def open_engines(path: Path, src: Path, threads: int) -> tuple[Any, Any]:
        asked.append(threads)
        return engines["src"], engines["out"]

    monkeypatch.setattr(stage, "open_engines", open_engines)
    base = ["verify", str(gguf_path), "--source", str(workspace["source"]), "--data", str(workspace["data"]),
            "--ctx", "32", "--chunks", "2", "--json"]
    assert _cli(base + ["--threads", "1"]).exit_code == 0
    assert _cli(base).exit_code == 0
    assert asked == [1, 0]                                   # default 0: BLAS as configured


def test_command_data_without_source_is_usage_error(workspace: dict[str, Any]) -> None:
    gguf_path = _write_gguf(workspace["tmp"] / "m.gguf")
    done = _cli(["verify", str(gguf_path), "--data", str(workspace["data"])])
    assert done.exit_code == 2 and "--data needs --source" in done.stderr


def test_command_missing_data_file_is_usage_error(workspace: dict[str, Any]) -> None:
    gguf_path = _write_gguf(workspace["tmp"] / "m.gguf")
    done = _cli(["verify", str(gguf_path), "--source", str(workspace["source"]), "--data",
                 str(workspace["tmp"] / "nope.txt")])
    assert done.exit_code == 2 and "does not exist" in done.stderr


# ---- real models through the engine (slow) ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_files(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    from quantcli.pipeline.convert import ConvertRequest, convert, recipe_from_type
    from tests.fixtures.paths import model_path

    folder = tmp_path_factory.mktemp("verify-model")

    def get(model: str, qtype: str) -> Path:
        out = folder / f"{model}-{qtype}.gguf"
        if not out.exists():
            convert(ConvertRequest(model=str(model_path(model)), recipe=recipe_from_type(qtype), output=out,
                                   threads=2, verify="none"))
        return out

    return get


@pytest.mark.slow
def test_real_decoder_figures_grow_as_bits_shrink(real_files: Callable[[str, str], Path]) -> None:
    from tests.fixtures.paths import model_path

    source = model_path("tiny-llama")
    res = {t: stage.verify_model(real_files("tiny-llama", t), source, "builtin:eval", ctx=64, chunks=4).result
           for t in ("F32", "Q8_0", "Q2_K")}
    assert abs(res["F32"].kld_mean) < 1e-6 and res["F32"].same_top1 == 1.0
    assert res["F32"].ppl == pytest.approx(res["F32"].ppl_source, rel=1e-4)
    assert 0 < res["Q8_0"].kld_mean < res["Q2_K"].kld_mean
    assert res["Q8_0"].rms_dp < res["Q2_K"].rms_dp
    assert all(r.n_scored == 4 * 31 and r.ppl_source == res["F32"].ppl_source for r in res.values())


@pytest.mark.slow
def test_real_encoder_cosine(real_files: Callable[[str, str], Path]) -> None:
    from tests.fixtures.paths import model_path

    source = model_path("all-MiniLM-L6-v2")
    f32 = stage.verify_model(real_files("all-MiniLM-L6-v2", "F32"), source, "builtin:eval", ctx=128, chunks=4)
    q4 = stage.verify_model(real_files("all-MiniLM-L6-v2", "Q4_0"), source, "builtin:eval", ctx=128, chunks=4)
    assert isinstance(f32.result, stage.EmbeddingResult) and f32.result.n_chunks == 4
    assert f32.result.cos_min > 1 - 1e-6
    assert 0.9 < q4.result.cos_min <= q4.result.cos_mean < f32.result.cos_mean
