"""The shared pack pass (stages/pack_group.py) on a checkpoint built here: GGUF files and calibration-free folders
written from one read have the bytes of their single-output writers, each source tensor is read once, and an
error or Ctrl-C in the middle leaves no output under its final name and no partial file."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from quantcli.io.checkpoint import Checkpoint
from quantcli.models.spec import spec_from_config
from quantcli.plan.gguf import Plan, QuantOptions, SourceModel, make_plan
from quantcli.plan.safetensors import IntOptions, IntPlan, make_int_plan
from quantcli.quant.imatrix import ImportanceMatrix
from quantcli.io.int_scheme import scheme_named
from quantcli.stages.pack_group import read_order, write_group
from quantcli.stages.pack_safetensors import write_int_folder
from quantcli.stages.quantize import write_ggufs

# the bytes come from the C kernels or the NumPy reference: run on both (QUANTCLI_BACKEND=c and reference)
pytestmark = pytest.mark.backend

# rows of 256 fill whole K-quant super-blocks; two layers, so blocks repeat and the orders differ visibly
CONFIG = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "hidden_size": 256,
          "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 320,
          "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
          "torch_dtype": "float16"}


# a byte-level BPE with one token per id and no merges: enough for the GGUF vocabulary, read by nothing else here
TOKENIZER = {"version": "1.0", "added_tokens": [], "normalizer": None,
             "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                               "use_regex": True},
             "post_processor": None, "decoder": {"type": "ByteLevel"},
             "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                       "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                       "vocab": {f"t{i}": i for i in range(CONFIG["vocab_size"])}, "merges": []}}


def build_checkpoint(folder: Path, seed: int = 3) -> Path:
    """A random Llama in float16 (the dtype the kernels take as stored), with a tokenizer side file to copy."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    (folder / "tokenizer.json").write_text(json.dumps(TOKENIZER))
    rng = np.random.default_rng(seed)
    tensors = {}
    for t in spec_from_config(CONFIG).tensors:
        values = rng.standard_normal(t.shape).astype(np.float32)
        values = 1.0 + 0.1 * values if len(t.shape) == 1 else values / np.sqrt(t.shape[-1])
        tensors[t.hf_name] = values.astype(np.float16)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


class CountingCheckpoint(Checkpoint):
    """The checkpoint reader, counting every read of a source tensor; `fail_at` raises at that read."""

    reads: Counter
    fail_at: tuple[int, BaseException] | None

    def _count(self, name: str) -> None:
        self.reads[name] += 1
        if self.fail_at is not None and sum(self.reads.values()) == self.fail_at[0]:
            raise self.fail_at[1]

    def read_raw(self, name: str) -> np.ndarray:
        self._count(name)
        return super().read_raw(name)

    def map_raw(self, name: str) -> np.ndarray:
        self._count(name)
        return super().map_raw(name)


def counting(path: Path, fail_at: tuple[int, BaseException] | None = None) -> CountingCheckpoint:
    base = Checkpoint.open(path)
    ckpt = CountingCheckpoint(base.path, base.config, base.tensors)
    object.__setattr__(ckpt, "reads", Counter())
    object.__setattr__(ckpt, "fail_at", fail_at)
    return ckpt


def folder_plans(ckpt: Checkpoint) -> list[IntPlan]:
    """Compressed-tensors W4A16 (min-max), W8A16 per channel (MSE clip search), W4A16_ASYM with HQQ, bnb NF4,
    and a GPTQ-format folder with RTN codes; the NF4 one in two shards, to place tensors across files."""
    options = [IntOptions(scheme_named("W4A16").with_options(group_size=64)),
               IntOptions(scheme_named("W8A16").with_options(group_size=0), method="mse"),
               IntOptions(scheme_named("W4A16_ASYM"), method="hqq"),
               IntOptions(scheme_named("W4A16"), format="bnb-nf4", max_shard_bytes=600_000),
               IntOptions(scheme_named("W4A16").with_options(group_size=128), format="gptq")]
    return [make_int_plan(ckpt, o) for o in options]


def gguf_plans(ckpt: Checkpoint, imatrix: ImportanceMatrix | None) -> list[Plan]:
    source = SourceModel.open(ckpt)
    return [make_plan(source, QuantOptions(mix=mix), extra_metadata=imatrix.metadata() if imatrix else None)
            for mix in ("Q4_K_M", "Q8_0", "IQ4_XS")]


def importance(plan: Plan) -> ImportanceMatrix:
    rng = np.random.default_rng(7)
    weights = {t.name: rng.uniform(0.1, 2.0, t.ggml_shape[0]).astype(np.float32) for t in plan.tensors
               if len(t.ggml_shape) == 2}
    return ImportanceMatrix(Path("test.imatrix"), weights, ("random",), 4)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_mixed_group_writes_the_bytes_of_single_runs_from_one_read(tmp_path: Path) -> None:
    source = build_checkpoint(tmp_path / "model")
    ckpt = counting(source)
    imatrix = importance(gguf_plans(ckpt, None)[0])
    ggufs, folders = gguf_plans(ckpt, imatrix), folder_plans(ckpt)
    together, alone = tmp_path / "together", tmp_path / "alone"
    g_paths = [together / f"m-{p.mix}.gguf" for p in ggufs]
    f_paths = [together / f"f{i}" for i in range(len(folders))]

    digests, files = write_group(list(zip(ggufs, g_paths)), list(zip(folders, f_paths)), ckpt, threads=2,
                                 imatrix=imatrix)

    # one read of every source tensor for seven outputs
    assert set(ckpt.reads) == set(ckpt.tensors) and set(ckpt.reads.values()) == {1}
    # every output as its own writer makes it, with its own reads
    plain = Checkpoint.open(source)
    for plan, path, digest in zip(ggufs, g_paths, digests):
        (single,) = write_ggufs([(plan, alone / path.name)], plain, threads=1, imatrix=imatrix)
        assert path.read_bytes() == (alone / path.name).read_bytes(), plan.mix
        assert digest == single == hashlib.sha256(path.read_bytes()).hexdigest()
    for plan, path, names in zip(folders, f_paths, files):
        write_int_folder(plan, plain, alone / path.name, threads=1)
        assert files_of(path) == files_of(alone / path.name), plan.options
        assert sorted(names) == sorted(files_of(path))
    assert len(files[3]) > len(files[0]) and "model.safetensors.index.json" in files[3]   # the NF4 folder is sharded
    assert "tokenizer_config.json" in files[0]


def test_folders_alone_are_read_in_checkpoint_order_once(tmp_path: Path) -> None:
    ckpt = counting(build_checkpoint(tmp_path / "model"))
    folders = folder_plans(ckpt)[:2]
    steps = read_order([], folders, ckpt)
    assert [s.sources for s in steps] == [(name,) for name in ckpt.tensors]
    write_group([], [(p, tmp_path / f"f{i}") for i, p in enumerate(folders)], ckpt, threads=2)
    assert set(ckpt.reads.values()) == {1} and len(ckpt.reads) == len(ckpt.tensors)


def test_the_gguf_order_leads_and_folder_only_tensors_follow(tmp_path: Path) -> None:
    ckpt = counting(build_checkpoint(tmp_path / "model"))
    (plan,) = gguf_plans(ckpt, None)[:1]
    steps = read_order([plan], folder_plans(ckpt)[:1], ckpt)
    assert [s.sources for s in steps[:len(plan.tensors)]] == [tuple(t.spec.sources) for t in plan.tensors]
    assert sorted(s for step in steps for s in step.sources) == sorted(ckpt.tensors)


@pytest.mark.parametrize("failure", [OSError(5, "Input/output error"), KeyboardInterrupt()],
                         ids=["read error", "ctrl-c"])
@pytest.mark.parametrize("at", [1, 9, 19])
def test_a_failure_mid_pack_leaves_no_output_and_no_partial_file(tmp_path: Path, failure: BaseException,
                                                                  at: int) -> None:
    ckpt = counting(build_checkpoint(tmp_path / "model"), fail_at=(at, failure))
    out = tmp_path / "out"
    out.mkdir()
    ggufs = [(p, out / f"m-{p.mix}.gguf") for p in gguf_plans(ckpt, None)[:2]]
    folders = [(p, out / f"f{i}") for i, p in enumerate(folder_plans(ckpt)[:4])]
    with pytest.raises(type(failure)):
        write_group(ggufs, folders, ckpt, threads=2)
    assert list(out.iterdir()) == []          # no final name, no partial file or folder left behind


def test_two_folders_never_share_a_file(tmp_path: Path) -> None:
    ckpt = counting(build_checkpoint(tmp_path / "model"))
    plan = folder_plans(ckpt)[0]
    _, files = write_group([], [(plan, tmp_path / "a"), (plan, tmp_path / "b")], ckpt, threads=1)
    assert files[0] == files[1] and files_of(tmp_path / "a") == files_of(tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").stat().st_ino != (tmp_path / "b" / "model.safetensors").stat().st_ino
