"""The publish stage against HfApi at its boundary: a recording double of the two network calls (create_repo,
create_commit) receives the real CommitOperationAdd objects, so the test sees exactly what would be uploaded:
shards with llama.cpp's names and split keys, whole files, and the model card."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from gguf import GGUFReader

from quantcli.errors import InputError
from quantcli.io.gguf_layout import read_layout
from quantcli.io.gguf_split import SHARD_PATTERN
from quantcli.pipeline.cache import file_sha256
from quantcli.pipeline.convert import ConvertRequest, convert
from quantcli.recipe import parse_recipe
from quantcli.stages.publish import plan_publish, run_publish
from tests.fixtures.hub_api import RecordingApi
from tests.fixtures.paths import model_path
from tests.stages.hub_fixtures import HubRepo, model_files, write_hub_cache

# needs the built test models (make models)
pytestmark = pytest.mark.slow

RECIPE = """\
name: release2
outputs:
  - type: Q8_0
  - type: Q4_0
publish:
  repo: me/tiny-llama-GGUF
  private: true
  max_shard_size: 24M
"""


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output folder made from a hub snapshot of tiny-llama (so the manifest names the repo and commit)."""
    root = tmp_path_factory.mktemp("publish")
    repo = HubRepo("org/tiny-llama")
    sha = repo.add_commit(model_files(model_path("tiny-llama")))
    storage = write_hub_cache(root / "hub", repo)
    recipe = parse_recipe(RECIPE, "release2.yaml")
    convert(ConvertRequest(model=str(storage / "snapshots" / sha), recipe=recipe, output=root / "out",
                           manifest=True, verify="structure", threads=2))
    return root / "out"


@pytest.fixture()
def folder(outputs: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(outputs, copy)
    # manifests name files relative to themselves, so the copy stays consistent
    return copy


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_publish_creates_the_repo_and_uploads_shards_files_and_card_in_one_commit(folder: Path, tmp_path: Path) -> None:
    plan = plan_publish(folder)            # repo, privacy and shard size come from the recorded recipe
    assert plan.repo_id == "me/tiny-llama-GGUF" and plan.private and plan.max_shard_size == 24_000_000
    api = RecordingApi(tmp_path / "hub-side")
    result = run_publish(plan, api=api)
    assert [c[0] for c in api.calls] == ["create_repo", "create_commit"]
    assert api.calls[0][1] == "me/tiny-llama-GGUF"
    assert api.calls[0][2] == {"private": True, "exist_ok": True, "repo_type": "model"}
    assert api.calls[1][2]["commit_message"].startswith("Upload 2 GGUF files (Q4_0, Q8_0)")
    assert result.commit_url.endswith("/commit/0123abcd")

    names = list(api.uploaded)
    assert names[-1] == "README.md"
    shards = [n for n in names if SHARD_PATTERN.match(n)]
    whole_q8 = folder / "tiny-llama-Q8_0.gguf"
    assert shards == [f"tiny-llama-Q8_0-{i:05d}-of-{len(shards):05d}.gguf" for i in range(1, len(shards) + 1)]
    assert len(shards) == 2                                  # 30 MB of Q8_0 in parts of at most 24 MB
    assert "tiny-llama-Q4_0.gguf" in names and "tiny-llama-Q8_0.gguf" not in names
    assert api.uploaded["tiny-llama-Q4_0.gguf"]["sha256"] == file_sha256(folder / "tiny-llama-Q4_0.gguf")
    # The shards are the original file: same tensors, same bytes, split keys set as llama.cpp reads them.
    original = read_layout(whole_q8)
    seen = []
    with open(whole_q8, "rb") as src:
        for no, name in enumerate(shards):
            layout = api.uploaded[name]["layout"]
            assert layout.values["split.no"] == no and layout.values["split.count"] == len(shards)
            assert layout.values["split.tensors.count"] == len(original.tensors)
            assert layout.size <= 24_000_000 + 3_000_000      # tensor data within the limit, plus the header
            with open(api.uploaded[name]["received"], "rb") as part:
                for t in layout.tensors:
                    part.seek(t.data_offset)
                    ref = next(o for o in original.tensors if o.name == t.name)
                    src.seek(ref.data_offset)
                    assert part.read(t.n_bytes) == src.read(ref.n_bytes)
                    seen.append(t.name)
    assert seen == [t.name for t in original.tensors]
    assert not [p for p in folder.iterdir() if p.name.startswith(".quantcli-publish-")]   # staging removed

    card = api.uploaded["README.md"]["content"]
    meta = front_matter(card)
    assert meta["base_model"] == "org/tiny-llama"
    assert {"gguf", "quantized"} <= set(meta["tags"]) and meta["quantized_by"] == "me"
    q8_row = next(line for line in card.splitlines() if "Q8_0-00001-of-00002.gguf](" in line)
    assert "| Q8_0 |" in q8_row and "| 8.50 |" in q8_row and "+ 1 more part |" in q8_row and "yes (structure)" in q8_row
    q4_row = next(line for line in card.splitlines() if "[tiny-llama-Q4_0.gguf](" in line)
    # output.weight is Q6_K in llama.cpp's Q4_0 mix, so the file is above 4.5 bits: count it with gguf-py's reader
    reader = GGUFReader(folder / "tiny-llama-Q4_0.gguf")
    bpw = 8 * sum(int(t.n_bytes) for t in reader.tensors) / sum(int(t.n_elements) for t in reader.tensors)
    assert "| Q4_0 |" in q4_row and f"| {bpw:.2f} |" in q4_row and bpw > 4.5
    assert "llama-cli -hf me/tiny-llama-GGUF:" in card and "ollama run hf.co/me/tiny-llama-GGUF:" in card
    commit = json.loads(next(folder.glob("*.manifest.json")).read_text())["source"]["commit"]
    assert commit in card
    assert file_sha256(folder / "tiny-llama-Q8_0.gguf") in card


def test_cli_options_override_the_recipe_and_small_files_stay_whole(folder: Path, tmp_path: Path) -> None:
    plan = plan_publish(folder, "someone/else", private=False, max_shard_size="1G", base_model="org/real-base",
                        quantized_by="a-team")
    api = RecordingApi(tmp_path / "hub-side")
    run_publish(plan, api=api)
    assert api.calls[0][1] == "someone/else" and api.calls[0][2]["private"] is False
    assert sorted(api.uploaded) == ["README.md", "tiny-llama-Q4_0.gguf", "tiny-llama-Q8_0.gguf"]
    meta = front_matter(api.uploaded["README.md"]["content"])
    assert meta["base_model"] == "org/real-base" and meta["quantized_by"] == "a-team"


def test_a_file_changed_after_its_run_is_not_published(folder: Path, tmp_path: Path) -> None:
    target = folder / "tiny-llama-Q4_0.gguf"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    api = RecordingApi(tmp_path / "hub-side")
    with pytest.raises(InputError, match="changed since it was made"):
        run_publish(plan_publish(folder, max_shard_size="1G"), api=api)
    assert [c[0] for c in api.calls] == []
    assert not [p for p in folder.iterdir() if p.name.startswith(".quantcli-publish-")]


def test_a_file_that_failed_verification_is_refused(folder: Path) -> None:
    manifest_path = next(folder.glob("*.manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest["outputs"][0]["verify_summary"]["ok"] = False
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="failed verification"):
        plan_publish(folder)


def test_an_empty_folder_and_a_missing_repo_are_input_errors(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(InputError, match="no .gguf files"):
        plan_publish(tmp_path)
    for p in folder.glob("*.manifest.json"):
        p.unlink()
    with pytest.raises(InputError, match="no repo to publish to"):
        plan_publish(folder)
    with pytest.raises(InputError, match="not a repo id"):
        plan_publish(folder, "no-namespace")
    warnings: list[str] = []
    plan = plan_publish(folder, "me/x", warn=warnings.append)
    assert sum("no run manifest" in w for w in warnings) == 2
    assert not plan.private and "| - | - | - |" in plan.card        # no verify figures without manifests


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    full.update(env, QUANTCLI_NO_PROGRESS="1")
    return subprocess.run([sys.executable, "-m", "quantcli.cli.app", *args], env=full, capture_output=True,
                          text=True, timeout=300)


def test_cli_dry_run_shows_the_plan_and_card_without_a_token_or_network(folder: Path, tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    r = run_cli(["publish", str(folder), "--dry-run", "--json"], env)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["dry_run"] and plan["repo_id"] == "me/tiny-llama-GGUF" and plan["private"]
    assert [u["path_in_repo"] for u in plan["uploads"]][-1] == "README.md"
    assert sum(SHARD_PATTERN.match(u["path_in_repo"]) is not None for u in plan["uploads"]) == 2
    assert plan["card"].startswith("---\nbase_model: org/tiny-llama")
    text = run_cli(["publish", str(folder), "--dry-run"], env)
    assert text.returncode == 0 and "would create or update me/tiny-llama-GGUF (private)" in text.stdout
    assert "ollama run hf.co/me/tiny-llama-GGUF" in text.stdout
    # Without --dry-run and without a token: a clear error, nothing staged.
    fail = run_cli(["publish", str(folder)], {"HF_HOME": str(tmp_path / "hf")})
    assert fail.returncode == 2 and "HF_TOKEN" in fail.stderr and "Traceback" not in fail.stderr
    assert not [p for p in folder.iterdir() if p.name.startswith(".quantcli-publish-")]


# ---- quantized safetensors folders ------------------------------------------------------------------------------

def int_folder(tmp_path: Path, **fields: object) -> Path:
    from quantcli.pipeline.convert_int import IntConvertRequest, convert_int

    out = tmp_path / "folder"
    convert_int(IntConvertRequest(model=str(model_path("tiny-llama")), output=out, threads=2, verify="none",
                                  **fields))  # type: ignore[arg-type]
    return out


def test_a_compressed_tensors_folder_goes_up_whole_with_a_card_that_says_how_to_load_it(tmp_path: Path) -> None:
    folder = int_folder(tmp_path, scheme="W4A16", group_size=32, method="mse")
    record = {"path": str(folder), "data": "builtin:eval", "n_chunks": 3, "ctx": 128, "n_scored": 189,
              "ppl_source": 41.25, "ppl": 43.5, "kld_mean": 0.0421, "kld_p99": 0.31, "same_top1": 0.875, "ok": True}
    (folder / "quantcli-verify.json").write_text(json.dumps(record))
    plan = plan_publish(folder, "me/tiny-W4A16", base_model="org/tiny-llama")
    api = RecordingApi(tmp_path / "hub-side")
    run_publish(plan, api=api)
    assert [c[0] for c in api.calls] == ["create_repo", "create_commit"]
    on_disk = sorted(p.name for p in folder.iterdir() if p.name != "quantcli-verify.json")
    assert sorted(api.uploaded) == sorted(on_disk + ["README.md"])
    assert "model.safetensors" in api.uploaded and "config.json" in api.uploaded and "tokenizer.json" in api.uploaded
    assert api.uploaded["model.safetensors"]["sha256"] == file_sha256(folder / "model.safetensors")
    card = api.uploaded["README.md"]["content"]
    meta = front_matter(card)
    assert meta["base_model"] == "org/tiny-llama" and meta["library_name"] == "transformers"
    assert {"quantized", "compressed-tensors", "4-bit"} <= set(meta["tags"])
    assert "| Scheme | W4A16 |" in card and "| Group size | 32 |" in card and "MSE-optimal" in card
    assert "pip install transformers compressed-tensors" in card and "vllm serve me/tiny-W4A16" in card
    assert 'AutoModelForCausalLM.from_pretrained("me/tiny-W4A16")' in card
    assert "| 41.2500 | 43.5000 | 0.04210 | 0.31000 | 87.50 % |" in card
    assert file_sha256(folder / "model.safetensors") in card
    # the bits per weight on the card are the stored bytes of the quantized modules over their weights
    from quantcli.io.checkpoint import Checkpoint
    from quantcli.io.quantized_folder import open_folder_reader

    ckpt = Checkpoint.open(folder)
    reader = open_folder_reader(ckpt)
    assert reader is not None
    stored = sum(ckpt.tensors[n].nbytes for n in reader.stored_names())
    weights = sum(m.shape[0] * m.shape[1] for m in reader.modules.values())
    assert f"| Bits per quantized weight | {8 * stored / weights:.3f} (scales included) |" in card


def test_an_nf4_folder_card_names_bitsandbytes(tmp_path: Path) -> None:
    folder = int_folder(tmp_path, format="bnb-nf4", ignore=("re:.*down_proj",))
    card = plan_publish(folder, "me/tiny-nf4").card
    assert front_matter(card)["library_name"] == "transformers" and "nf4" in front_matter(card)["tags"]
    assert "pip install transformers accelerate bitsandbytes" in card
    assert "vllm serve me/tiny-nf4 --quantization bitsandbytes" in card
    assert "| Double quantization | yes |" in card and "| Block size | 64 |" in card
    assert "## Quality" not in card                          # no verify record, no figures


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_gptq_and_awq_folder_cards_name_their_own_loader(tmp_path: Path, fmt: str) -> None:
    card = plan_publish(int_folder(tmp_path, format=fmt, group_size=32), f"me/tiny-{fmt}").card
    assert fmt in front_matter(card)["tags"] and "compressed-tensors" not in front_matter(card)["tags"]
    assert "pip install transformers optimum gptqmodel" in card and "compressed-tensors" not in card
    assert f"vllm serve me/tiny-{fmt}" in card


def test_a_folder_that_missed_its_thresholds_or_is_not_quantized_is_refused(tmp_path: Path) -> None:
    folder = int_folder(tmp_path, scheme="W8A16", group_size=32)
    (folder / "quantcli-verify.json").write_text(json.dumps({"ok": False, "failure": "mean KL divergence 0.3"}))
    with pytest.raises(InputError, match="failed its verify thresholds"):
        plan_publish(folder, "me/x")
    with pytest.raises(InputError, match="neither .gguf files nor a quantized model"):
        plan_publish(model_path("tiny-llama"), "me/x")
    with pytest.raises(InputError, match="no repo to publish to"):
        plan_publish(folder)
