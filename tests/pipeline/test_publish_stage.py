"""The publish stage of the runner: `convert --publish` and a recipe's `publish.on_convert` upload every output of
the run (GGUF files at the repo's root, each folder under its own subfolder) in one commit, after every other
stage passed; a bad repo id, offline mode or no token stops the run before any work; a hub failure is a one-line
exit 2 that leaves the outputs as they were. The hub is a recording double of HfApi (tests/fixtures/hub_api.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from quantcli.cli.app import app
from quantcli.errors import InputError, RecipeError
from quantcli.pipeline.cache import file_sha256
from quantcli.recipe import parse_recipe
from quantcli.stages.model_card import RunCardFolder, RunCardInfo, render_run_card
from tests.fixtures.hub_api import RecordingApi, http_error

MIXED = """\
name: mixed
outputs:
  - type: Q4_0
  - format: compressed-tensors
    scheme: W4A16
    group_size: 32
verify:
  max_ppl_ratio: 1000
  ctx: 32
  chunks: 2
publish:
  repo: me/{model}-{recipe}
  on_convert: true
  private: true
"""

# thresholds tiny-llama (random weights) at Q4_0 cannot meet
STRICT = """\
name: strict
quantize: {type: Q4_0}
verify:
  max_kld: 0.000001
  ctx: 32
  chunks: 2
publish:
  repo: me/tiny-strict
  on_convert: true
"""


@pytest.fixture()
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RecordingApi:
    """The api every publish in this test goes through (stages.publish.hub_api replaced)."""
    api = RecordingApi(tmp_path / "hub-side")
    monkeypatch.setattr("quantcli.stages.publish.hub_api", lambda: api)
    return api


def invoke(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("QUANTCLI_CACHE_DIR", str(tmp_path / "stage-cache"))
    monkeypatch.setenv("QUANTCLI_NO_PROGRESS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("QUANTCLI_DEBUG", raising=False)
    return CliRunner().invoke(app, args, catch_exceptions=False)


def front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def written(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")) if folder.exists() else []


# ---- refused before any work (no model needed) ----

@pytest.mark.parametrize("repo, why", [("../evil", "not a repo id"), ("me/../x", "it must be org/name"),
                                       ("me/a..b", "may not contain -- or .."),
                                       ("me/{model}", "ASCII"), ("just-a-name", "not a repo id"),
                                       ("me/x@main", "not a repo id")])
def test_a_bad_repo_id_exits_2_before_anything_is_read_or_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  hub: RecordingApi, repo: str, why: str) -> None:
    model = tmp_path / "my model"             # {model} expands to a name the hub refuses (a space)
    model.mkdir()
    out = tmp_path / "out"
    r = invoke(["convert", str(model), "--type", "Q8_0", "-o", str(out), "--publish", repo], tmp_path, monkeypatch)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and why in lines[0] and "Traceback" not in r.output
    assert "Pass --publish you/model-GGUF" in lines[0]                 # the fix
    assert written(out) == [] and hub.calls == []
    assert not (tmp_path / "stage-cache").exists()


def test_offline_mode_without_an_api_is_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: set its constant, so the test holds whatever the caller's
    # environment says (make test exports HF_HUB_OFFLINE=1, a bare pytest may not)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    out = tmp_path / "out"
    r = invoke(["convert", str(tmp_path), "--type", "Q8_0", "-o", str(out), "--publish", "me/x-GGUF"], tmp_path,
               monkeypatch)
    assert r.exit_code == 2 and "HF_HUB_OFFLINE is set" in r.output and written(out) == []


def test_publish_flags_and_recipe_section_are_checked() -> None:
    from quantcli.pipeline.options import ConvertFlags, request_from_flags

    with pytest.raises(InputError, match="--publish-private/--publish-public set the visibility"):
        request_from_flags(ConvertFlags(model="m", type="Q8_0", publish_private=True))
    request = request_from_flags(ConvertFlags(model="m", format="bnb-nf4", publish="me/{model}-nf4",
                                              publish_private=True))
    assert request.publish is not None and (request.publish.repo, request.publish.private) == ("me/{model}-nf4", True)
    with pytest.raises(RecipeError, match=r"publish.repo 'me/\{type\}' uses \{type\}"):
        parse_recipe("name: x\nquantize: {type: Q8_0}\npublish:\n  repo: me/{type}\n")
    with pytest.raises(RecipeError, match="publish.on_convert needs publish.repo"):
        parse_recipe("name: x\nquantize: {type: Q8_0}\npublish:\n  on_convert: true\n")
    spec = parse_recipe(MIXED, "mixed.yaml").publish
    assert spec.on_convert and spec.private and spec.repo == "me/{model}-{recipe}"


def test_the_run_card_tells_each_format_how_to_load() -> None:
    def folder(prefix: str, fmt: str, kind: str, scheme: dict | None = None) -> RunCardFolder:
        return RunCardFolder(prefix, fmt, kind, "minmax", 1000, scheme, None, ())

    quality = {"data": "builtin:eval", "n_chunks": 2, "ctx": 32, "ppl_source": 10.0, "ppl": 10.5,
               "kld_mean": 0.0123, "kld_p99": 0.2, "same_top1": 0.9}
    ct = RunCardFolder("m-W4A16/", "compressed-tensors", "W4A16", "mse", 2000,
                       {"num_bits": 4, "group_size": 32, "symmetric": True}, quality, ())
    info = RunCardInfo(repo_id="me/m", quantized_by="me", ggufs=[], base_model="org/m", folders=[
        ct, folder("m-gptq/", "gptq", "W4A16"), folder("m-awq/", "awq", "W4A16"), folder("m-nf4/", "bnb-nf4", "NF4"),
        folder("m-sq/", "dense", "splitquant"), folder("m-sqb/", "splitquant-branches", "splitquant")])
    card = render_run_card(info)
    assert front_matter(card)["base_model"] == "org/m" and front_matter(card)["library_name"] == "transformers"
    assert 'from_pretrained("me/m", subfolder="m-W4A16")' in card and "pip install transformers compressed-tensors" in card
    assert "pip install transformers optimum gptqmodel" in card and "vllm serve ./m-awq" in card
    assert "pip install transformers accelerate bitsandbytes" in card and "vllm serve ./m-nf4 --quantization bitsandbytes" in card
    assert "hf download me/m --include 'm-sq/*' --local-dir ." in card
    assert "The three-branch SplitQuantV2 form runs only in quantcli's engine" in card
    assert "this form runs only in quantcli's engine" in card and "open_folder(folder)" in card
    assert "| m-W4A16/ | 10.0000 | 10.5000 | 0.01230 | 0.20000 | 90.00 % |" in card
    assert "| m-sqb/ | SplitQuantV2, three INT4 branches | splitquant | 1.0 KB | quantcli's engine only |" in card


# ---- through the runner (the built tiny-llama) ----

@pytest.mark.slow
def test_convert_publish_writes_then_uploads_one_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        hub: RecordingApi) -> None:
    from tests.fixtures.paths import model_path

    out = tmp_path / "out"
    r = invoke(["convert", str(model_path("tiny-llama")), "--type", "Q8_0", "-o", str(out), "--publish",
                "me/{model}-GGUF", "--publish-private", "--json"], tmp_path, monkeypatch)
    assert r.exit_code == 0, r.output
    gguf = out / "tiny-llama-Q8_0.gguf"
    assert [c[0] for c in hub.calls] == ["create_repo", "create_commit"]
    assert hub.calls[0][1] == "me/tiny-llama-GGUF" and hub.calls[0][2]["private"] is True
    assert list(hub.uploaded) == ["tiny-llama-Q8_0.gguf", "README.md"]
    assert hub.uploaded["tiny-llama-Q8_0.gguf"]["sha256"] == file_sha256(gguf)
    card = hub.uploaded["README.md"]["content"]
    assert "llama-cli -hf me/tiny-llama-GGUF:Q8_0" in card and "ollama run hf.co/me/tiny-llama-GGUF:Q8_0" in card
    assert "lms get me/tiny-llama-GGUF" in card
    report = json.loads(r.stdout[r.stdout.index("{"):])
    assert report["publish"]["repo"] == "me/tiny-llama-GGUF" and report["publish"]["status"] == "uploaded"
    manifest = json.loads(Path(report["manifest"]).read_text())
    assert manifest["publish"]["commit_url"].endswith("/commit/0123abcd")
    assert manifest["publish"]["files"] == ["tiny-llama-Q8_0.gguf", "README.md"]
    stages = [s["stage"] for s in manifest["stages"]]
    assert stages[-1] == "publish" and manifest["stages"][-1]["status"] == "uploaded"
    assert manifest["stages"][-1]["seconds"] >= 0


@pytest.mark.slow
def test_a_mixed_recipe_publishes_the_gguf_at_the_root_and_the_folder_under_its_own_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub: RecordingApi) -> None:
    from quantcli.pipeline.convert import ConvertRequest
    from quantcli.pipeline.runner import run_convert
    from tests.fixtures.paths import model_path

    out = tmp_path / "out"
    request = ConvertRequest(model=str(model_path("tiny-llama")), recipe=parse_recipe(MIXED, "mixed.yaml"), output=out,
                             threads=2)
    result = run_convert(request)
    assert [s.stage for s in result.stages][-2:] == ["record", "publish"]
    assert result.stages[-1].status == "uploaded" and result.stages[-1].output == "me/tiny-llama-mixed"
    assert hub.calls[0][1] == "me/tiny-llama-mixed" and hub.calls[0][2]["private"] is True
    assert len([c for c in hub.calls if c[0] == "create_commit"]) == 1
    folder = result.folders[0].path
    on_disk = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    expected = ["tiny-llama-Q4_0.gguf"] + [f"{folder.name}/{n}" for n in on_disk] + ["README.md"]
    assert list(hub.uploaded) == expected and len(set(hub.uploaded)) == len(expected)
    assert f"{folder.name}/config.json" in hub.uploaded and f"{folder.name}/model.safetensors" in hub.uploaded
    assert f"{folder.name}/tokenizer.json" in hub.uploaded
    for name in on_disk:
        assert hub.uploaded[f"{folder.name}/{name}"]["sha256"] == file_sha256(folder / name)
    card = hub.uploaded["README.md"]["content"]
    assert {"gguf", "compressed-tensors"} <= set(front_matter(card)["tags"])
    assert f'subfolder="{folder.name}"' in card and "llama-cli -hf me/tiny-llama-mixed:Q4_0" in card
    assert f"| {folder.name}/ | compressed-tensors | W4A16 |" in card
    # the model-level figures of both outputs, as the manifest holds them
    manifest = json.loads(result.manifest.read_text())
    for entry in manifest["outputs"]:
        q = entry["model_verify"]
        label = entry["file"] + ("/" if entry["kind"] == "folder" else "")
        assert f"| {label} | {q['ppl_source']:.4f} | {q['ppl']:.4f} | {q['kld_mean']:.5f} |" in card
    # `quantcli publish out/` plans the same uploads from the folder and its manifest
    from quantcli.stages.publish import plan_publish

    plan = plan_publish(out)
    assert plan.repo_id == "me/tiny-llama-mixed" and [p for p, _ in plan.uploads()] == expected


@pytest.mark.slow
def test_a_verify_threshold_miss_publishes_nothing_and_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               hub: RecordingApi) -> None:
    from tests.fixtures.paths import model_path

    recipe = tmp_path / "strict.yaml"
    recipe.write_text(STRICT)
    out = tmp_path / "out"
    r = invoke(["convert", str(model_path("tiny-llama")), "--recipe", str(recipe), "-o", str(out)], tmp_path,
               monkeypatch)
    assert r.exit_code == 1 and "KL divergence" in r.output, r.output
    assert hub.calls == []
    manifest = json.loads(next(out.glob("*.manifest.json")).read_text())
    assert "publish" not in manifest and "publish" not in [s["stage"] for s in manifest["stages"]]


@pytest.mark.slow
@pytest.mark.parametrize("fail, says", [(http_error(401), "refused to let this token write"),
                                        (http_error(404), "has no repo me/tiny-llama-GGUF"),
                                        (ConnectionError("connection reset"), "could not reach the hub")])
def test_a_hub_failure_exits_2_in_one_line_and_leaves_the_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   fail: Exception, says: str) -> None:
    from tests.fixtures.paths import model_path

    api = RecordingApi(tmp_path / "hub-side", fail=fail)
    monkeypatch.setattr("quantcli.stages.publish.hub_api", lambda: api)
    out = tmp_path / "out"
    r = invoke(["convert", str(model_path("tiny-llama")), "--type", "Q8_0", "-o", str(out), "--publish",
                "me/tiny-llama-GGUF"], tmp_path, monkeypatch)
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and says in errors[0] and "Traceback" not in r.output
    gguf = out / "tiny-llama-Q8_0.gguf"
    manifest = json.loads(next(out.glob("*.manifest.json")).read_text())
    assert manifest["outputs"][0]["sha256"] == file_sha256(gguf)            # the output is intact
    assert manifest["publish"]["status"] == "failed" and says in manifest["publish"]["error"]
    assert not [p for p in out.iterdir() if p.name.startswith(".quantcli-publish-")]


@pytest.mark.parametrize("fail, says", [(http_error(403), "refused to let this token write"),
                                        (http_error(500), "answered HTTP 500"),
                                        (None, "could not reach the hub")])
def test_hub_failures_become_one_line_input_errors_and_others_propagate(tmp_path: Path, fail: Exception | None,
                                                                        says: str) -> None:
    import httpx2

    from quantcli.stages.publish import PublishPlan, run_publish

    plan = PublishPlan("me/x", False, 1 << 30, [], "card\n", "message", tmp_path)
    api = RecordingApi(tmp_path / "hub-side", fail=fail or httpx2.ConnectError("[Errno -3] name resolution failed"))
    with pytest.raises(InputError, match=says) as info:
        run_publish(plan, api=api)
    assert "\n" not in str(info.value) and info.value.hint
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".quantcli-publish-")]
    with pytest.raises(ValueError, match="a bug"):        # not the hub's: not disguised as one
        run_publish(plan, api=RecordingApi(tmp_path / "hub-side", fail=ValueError("a bug")))


@pytest.mark.slow
def test_a_dry_run_says_where_it_would_publish_and_sends_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  hub: RecordingApi) -> None:
    from tests.fixtures.paths import model_path

    out = tmp_path / "out"
    args = ["convert", str(model_path("tiny-llama")), "--type", "Q8_0", "-o", str(out), "--dry-run",
            "--publish", "me/{model}-GGUF", "--publish-private"]
    r = invoke(args, tmp_path, monkeypatch)
    assert r.exit_code == 0, r.output
    assert "would publish every output to https://huggingface.co/me/tiny-llama-GGUF (private)" in r.output
    r = invoke(args + ["--json"], tmp_path, monkeypatch)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["publish"] == {"repo": "me/tiny-llama-GGUF", "private": True,
                                               "url": "https://huggingface.co/me/tiny-llama-GGUF",
                                               "status": "planned"}
    assert hub.calls == [] and written(out) == []
