"""The calibrate stage: chunking and BOS as llama-imatrix does them, the statistics it keeps, the data sources,
the bad inputs it refuses, and its place in convert (cache, manifest, same bytes as --imatrix)."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from quantcli.errors import InputError, RecipeError
from quantcli.pipeline.calibrate import CalibrationRequest, run_calibration
from quantcli.pipeline.convert import ConvertRequest, convert, recipe_from_type
from quantcli.quant.imatrix import load_imatrix
from quantcli.recipe import parse_recipe, resolve_recipe
from quantcli.stages.calibrate import CalibrateOptions, Route, calibrate, check_imatrix_fits, collect, routes_for
from quantcli.stages.calibration_data import builtin_text, load_calibration_text
from tests.fixtures.paths import model_path
from tests.stages.hub_fixtures import HubRepo, write_hub_cache

TEXT = gzip.decompress(Path(__file__).resolve().parents[2].joinpath("quantcli/data/eval.txt.gz").read_bytes()).decode()[:20000]


# -- the statistics ---------------------------------------------------------------------------------------------

@dataclass
class FakeEngine:
    """A two-matrix numpy 'model': capture sees a fixed function of the tokens, so the sums are known."""

    calls: int = 0

    def inputs(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.stack([np.sin(tokens * (c + 1.0)) for c in range(4)], axis=-1).astype(np.float32)
        return x.reshape(-1, 4), np.cos(x.reshape(-1, 4) @ np.ones((4, 6), np.float32))

    def run(self, tokens: np.ndarray, *, capture, logits: bool):  # type: ignore[no-untyped-def]
        self.calls += 1
        a, b = self.inputs(tokens)
        capture("m.a.weight", a)
        capture("m.b.weight", b[: len(b) // 2])     # the engine may hand over the rows in pieces
        capture("m.b.weight", b[len(b) // 2:])
        capture("lm_head.weight", a)                 # not routed: ignored
        return iter(())


def test_collect_sums_squares_per_column_and_counts_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    import quantcli.stages.calibrate as stage

    chunks = np.arange(3 * 8, dtype=np.int32).reshape(3, 8)
    routes = {"m.a.weight": Route("blk.0.a.weight", 0, 1, 4), "m.b.weight": Route("blk.0.b.weight", 0, 1, 6)}
    fake = FakeEngine()
    monkeypatch.setattr(stage, "TOKENS_PER_PASS", 16)           # two sequences per pass: two passes
    stats = collect(fake.run, chunks, routes)
    a, b = fake.inputs(chunks)
    assert fake.calls == 2
    np.testing.assert_allclose(stats["blk.0.a.weight"].sums[0], (a.astype(np.float64) ** 2).sum(0), rtol=1e-6)
    np.testing.assert_allclose(stats["blk.0.b.weight"].sums[0], (b.astype(np.float64) ** 2).sum(0), rtol=1e-6)
    assert stats["blk.0.a.weight"].counts.tolist() == [24] and stats["blk.0.b.weight"].counts.tolist() == [24]
    assert set(stats) == {"blk.0.a.weight", "blk.0.b.weight"}


@dataclass(frozen=True)
class Spec:
    name: str
    sources: tuple[str, ...]
    shape: tuple[int, ...]


def test_routes_cover_block_matrices_experts_and_output_only_when_asked() -> None:
    specs = [Spec("token_embd.weight", ("emb",), (10, 4)), Spec("blk.0.attn_norm.weight", ("n",), (4,)),
             Spec("blk.0.attn_qkv.weight", ("q", "k", "v"), (12, 4)),
             Spec("blk.0.ffn_up_exps.weight", ("e0", "e1"), (2, 8, 4)), Spec("output.weight", ("head",), (10, 4))]
    routes = routes_for(specs, process_output=False)
    assert routes == {"q": Route("blk.0.attn_qkv.weight", 0, 1, 4),      # stacked rows share one input: count once
                      "e0": Route("blk.0.ffn_up_exps.weight", 0, 2, 4), "e1": Route("blk.0.ffn_up_exps.weight", 1, 2, 4)}
    assert routes_for(specs, process_output=True)["head"] == Route("output.weight", 0, 1, 4)


@pytest.mark.slow  # needs the built test models
def test_calibrate_on_a_tiny_model_matches_file_and_summary(tmp_path: Path) -> None:
    data = load_calibration_text(None)
    result = calibrate(model_path("tiny-llama"), data, CalibrateOptions(ctx=32, chunks=3, process_output=True))
    assert result.stats.chunk_count == 3 and result.stats.chunk_size == 32
    assert result.stats.datasets == ("builtin:calibration",)
    names = set(result.stats.entries)
    assert "output.weight" in names and "token_embd.weight" not in names
    assert all(e.counts.tolist() == [96] for e in result.stats.entries.values())
    assert result.summary["blk.0.attn_q.weight"]["tokens"] == 96
    # q, k and v read the same normed input, so their statistics are the same numbers
    q, k = result.stats.entries["blk.0.attn_q.weight"], result.stats.entries["blk.0.attn_k.weight"]
    np.testing.assert_array_equal(q.sums, k.sums)


# -- data sources -----------------------------------------------------------------------------------------------

def test_text_folder_and_jsonl_sources(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second file", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first file", encoding="utf-8")
    (tmp_path / "notes.bin").write_bytes(b"\xff\xfe ignored")
    folder = load_calibration_text(str(tmp_path))
    assert folder.text == "first file\n\nsecond file" and folder.name == str(tmp_path)
    single = load_calibration_text(str(tmp_path / "a.txt"))
    assert single.text == "first file"
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "one", "id": 1}\n\n{"text": "two"}\n', encoding="utf-8")
    assert load_calibration_text(str(rows)).text == "one\ntwo"
    custom = tmp_path / "custom.jsonl"
    custom.write_text('{"content": "x"}\n', encoding="utf-8")
    assert load_calibration_text(str(custom), field="content").text == "x"
    with pytest.raises(InputError, match="custom.jsonl:1 has no string field 'text'"):
        load_calibration_text(str(custom))


def test_parquet_source(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["alpha", "beta"], "n": [1, 2]}), tmp_path / "part.parquet")
    assert load_calibration_text(str(tmp_path / "part.parquet")).text == "alpha\nbeta"
    with pytest.raises(InputError, match="no column 'body'"):
        load_calibration_text(str(tmp_path / "part.parquet"), field="body")


def test_bad_data_is_refused_with_the_cause(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8 text .*offset 3"):
        load_calibration_text(str(tmp_path / "latin1.txt"))
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(InputError, match="holds no text"):
        load_calibration_text(str(tmp_path / "empty.txt"))
    with pytest.raises(InputError, match="does not exist"):
        load_calibration_text(str(tmp_path / "missing.txt"))
    with pytest.raises(InputError, match="no built-in text 'nope'"):
        load_calibration_text("builtin:nope")


@pytest.mark.slow  # needs the built test models
def test_builtin_texts_are_distinct_and_long_enough() -> None:
    from tokenizers import Tokenizer

    cal, ev = builtin_text("calibration"), builtin_text("eval")
    assert cal.sha256 != ev.sha256 and cal.text[:2000] not in ev.text
    tok = Tokenizer.from_file(str(model_path("SmolLM2-135M-Instruct") / "tokenizer.json"))
    assert len(tok.encode(cal.text, add_special_tokens=False).ids) >= 100 * 512   # the recipes' 100 chunks of 512


def run_cli(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quantcli.cli.app", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=600)


@pytest.mark.slow  # needs the built test models
def test_hub_dataset_from_the_cache_offline(tmp_path: Path) -> None:
    repo = HubRepo("org/texts")
    repo.add_commit({"data/train-1.txt": TEXT[:10000].encode(), "data/train-2.txt": TEXT[10000:].encode(),
                     "README.md": b"# texts"})
    hub = tmp_path / "hf" / "hub"
    storage = write_hub_cache(hub, repo)
    storage.rename(hub / "datasets--org--texts")     # the hub cache keeps datasets beside models, by this prefix
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "QUANTCLI_CACHE_DIR": str(tmp_path / "qc")}
    r = run_cli(["calibrate", str(model_path("tiny-llama")), "--data", "org/texts", "--ctx", "32", "--chunks", "2",
                 "-o", str(tmp_path / "hub.gguf"), "--json"], env)
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["data"] == "hf://datasets/org/texts"
    local = tmp_path / "local"
    local.mkdir()
    (local / "train-1.txt").write_text(TEXT[:10000], encoding="utf-8")
    (local / "train-2.txt").write_text(TEXT[10000:], encoding="utf-8")
    assert record["data_sha256"] == load_calibration_text(str(local)).sha256      # the same files, the same text
    assert load_imatrix(tmp_path / "hub.gguf").datasets == ("hf://datasets/org/texts",)
    r = run_cli(["calibrate", str(model_path("tiny-llama")), "--data", "org/absent", "-o", str(tmp_path / "x.gguf")], env)
    assert r.returncode == 2 and "not in the hub cache" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow  # needs the built test models
def test_cli_bad_inputs_exit_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "short.txt").write_text("too short to fill two chunks", encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00 not utf-8")
    model = str(model_path("tiny-llama"))
    cases = [(["--data", str(tmp_path / "short.txt")], "at least"),
             (["--data", str(tmp_path / "bad.txt")], "not UTF-8"),
             (["--ctx", "4096"], "longer than the model's context of 256 tokens"),
             (["--format", "xml"], "not an imatrix format")]
    for extra, message in cases:
        r = run_cli(["calibrate", model, "-o", str(tmp_path / "m.gguf"), *extra], {"QUANTCLI_CACHE_DIR": str(tmp_path / "qc")})
        assert r.returncode == 2, (extra, r.stderr)
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "m.gguf").exists()


# -- in the pipeline ---------------------------------------------------------------------------------------------

@pytest.mark.slow  # needs the built test models
def test_an_imatrix_of_another_model_is_refused(tmp_path: Path) -> None:
    run_calibration(CalibrationRequest(model=str(model_path("tiny-qwen3")), output=tmp_path / "qwen.gguf",
                                       data=None, ctx=32, chunks=2))
    with pytest.raises(InputError, match="made for another model"):
        convert(ConvertRequest(model=str(model_path("tiny-phi3")), recipe=recipe_from_type("Q4_K_M"),
                               output=tmp_path / "out.gguf", imatrix=tmp_path / "qwen.gguf", verify="none"))
    weights = {"blk.0.attn_q.weight": np.ones(7, np.float32)}
    specs = [Spec("blk.0.attn_q.weight", ("q",), (64, 64))]
    with pytest.raises(InputError, match="has 7 values, this model's blk.0.attn_q.weight needs 64"):
        check_imatrix_fits(Path("m.gguf"), weights, specs)
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.slow  # needs the built test models
def test_convert_calibrate_equals_convert_imatrix_and_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "calib.txt").write_text(TEXT, encoding="utf-8")
    recipe = parse_recipe("quantize: {type: Q3_K_M}\ncalibrate: {ctx: 64, chunks: 4}\n", default_name="cal")
    request = ConvertRequest(model=str(model_path("tiny-llama")), recipe=recipe, output=Path("out"), verify="none",
                             calibrate_data="calib.txt", cache_dir=tmp_path / "qc", manifest=True)
    first = convert(request)
    assert first.calibration is not None and not first.calibration.cached
    imatrix = first.calibration.path
    assert imatrix == Path("out/tiny-llama.imatrix.gguf") and imatrix.is_file()
    manifest = json.loads(first.manifest.read_text())
    cal = manifest["calibration"]
    assert cal["data"] == "calib.txt" and cal["ctx"] == 64 and cal["chunks"] == 4 and cal["cache"] == "written"
    assert cal["data_sha256"] == load_calibration_text("calib.txt").sha256
    assert cal["tensors"]["blk.1.ffn_down.weight"]["tokens"] == 256
    assert manifest["imatrix"]["path"] == str(imatrix)
    again = convert(request)
    assert again.calibration.cached and again.outputs[0].cached
    plain = convert(ConvertRequest(model=str(model_path("tiny-llama")), recipe=recipe_from_type("Q3_K_M"),
                                   output=Path("plain/tiny-llama-Q3_K_M.gguf"), verify="none", imatrix=imatrix))
    assert plain.outputs[0].path.read_bytes() == first.outputs[0].path.read_bytes()
    with pytest.raises(InputError, match="--calibrate and --imatrix cannot be combined"):
        convert(ConvertRequest(model=str(model_path("tiny-llama")), recipe=recipe, output=Path("x"), verify="none",
                               calibrate_data="calib.txt", imatrix=imatrix))


def test_recipe_calibrate_section_is_strict() -> None:
    recipe = parse_recipe("quantize: {type: Q4_K_M}\ncalibrate: {data: c.txt, ctx: 256, chunks: 10, process_output: true}\n")
    assert recipe.calibrate is not None and recipe.calibrate.ctx == 256 and recipe.calibrate.process_output
    assert recipe.canonical()["calibrate"]["data"] == "c.txt"
    with pytest.raises(RecipeError, match="unknown key 'chunk'"):
        parse_recipe("quantize: {type: Q4_K_M}\ncalibrate: {chunk: 10}\n")
    with pytest.raises(RecipeError, match="calibrate.ctx must be a positive whole number"):
        parse_recipe("quantize: {type: Q4_K_M}\ncalibrate: {ctx: 0}\n")
    for name in ("q4_k_m-imatrix", "q3_k_m-imatrix", "q2_k-imatrix"):
        builtin = resolve_recipe(name)
        assert builtin.calibrate is not None and builtin.calibrate.chunks == 100 and builtin.calibrate.data is None


@pytest.mark.slow
def test_a_dry_run_plans_as_if_calibrated_and_computes_nothing(tmp_path: Path) -> None:
    from quantcli.io.checkpoint import Checkpoint
    from quantcli.pipeline.convert import quant_options
    from quantcli.plan.gguf import SourceModel, make_plan

    model = model_path("SmolLM2-135M-Instruct")          # 30 blocks: IQ4_XS's first-eighth rule applies
    recipe = parse_recipe("quantize: {type: IQ4_XS}\ncalibrate: {chunks: 2}\n", default_name="cal")
    dry = convert(ConvertRequest(model=str(model), recipe=recipe, output=tmp_path, dry_run=True))
    assert dry.calibration is None and list(tmp_path.iterdir()) == []
    source = SourceModel.open(Checkpoint.open(model))
    spec = recipe.outputs[0]
    with_one = make_plan(source, quant_options(spec, tmp_path / "any.gguf"))
    without = make_plan(source, quant_options(spec, None))
    types = [[t.qtype for t in p.tensors] for p in (dry.outputs[0].plan, with_one, without)]
    assert types[0] == types[1] != types[2]       # IQ4_XS keeps the first ffn_downs at Q5_K only without one
