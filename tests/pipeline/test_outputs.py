"""Output paths (pipeline/outputs.py), partial names and the stale-partial sweep (io/atomic.py), output locks
(io/locks.py): the pieces that keep a run inside its output folder and its files its own."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantcli.errors import InputError, RecipeError
from quantcli.io.atomic import partial_name, pid_alive, sweep_partials
from quantcli.io.gguf_writer import write_error_hint
from quantcli.io.locks import lock_name, output_locks
from quantcli.pipeline.batch import parse_batch
from quantcli.pipeline.convert import output_labels, output_names
from quantcli.pipeline.outputs import output_target, resolve_layout
from quantcli.recipe.schema import parse_recipe


def layout_of(recipe_text: str, out: Path, model: str = "m"):  # type: ignore[no-untyped-def]
    recipe = parse_recipe(recipe_text, "r.yaml")
    names = output_names(recipe, [None] * len(recipe.outputs), model)
    return resolve_layout(out, names, model=model, recipe=recipe.name, labels=output_labels(recipe))


@pytest.mark.parametrize("recipe_text", [
    'name: ../../../victim.txt\nquantize: {type: Q8_0, file: "{recipe}"}\n',     # the GGUF escapes
    "name: ../../../victim\nquantize: {type: Q8_0}\n",                          # the manifest alone escapes
    "name: /tmp/victim\nquantize: {type: Q8_0}\n",                              # an absolute name
    'name: "..\\\\x"\nquantize: {type: Q8_0, file: "{recipe}.gguf"}\n',         # a Windows separator
    'name: ".."\nquantize: {type: Q8_0, file: "{recipe}"}\n',
])
def test_names_that_leave_the_output_folder_are_refused(recipe_text: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a plain file name"):
        layout_of(recipe_text, tmp_path / "a" / "b" / "c")


def test_a_symlink_at_an_output_name_leading_outside_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "m-Q8_0.gguf").symlink_to(tmp_path / "victim.gguf")
    with pytest.raises(InputError, match="is a symlink to .*outside the output folder"):
        layout_of("quantize: {type: Q8_0}\n", out)


def test_a_folder_at_an_output_name_is_refused_with_a_fix_that_is_not_free_space(tmp_path: Path) -> None:
    (tmp_path / "m-Q8_0.gguf").mkdir()
    with pytest.raises(InputError) as info:
        layout_of("quantize: {type: Q8_0}\n", tmp_path)
    assert "is a folder" in str(info.value) and "Free disk space" not in str(info.value)


@pytest.mark.parametrize("outputs", [
    '  - {type: Q8_0, file: "x-{recipe}.gguf"}\n  - {type: Q4_0, file: "x-r.gguf"}\n',   # template vs its expansion
    '  - {type: Q8_0, file: "X.gguf"}\n  - {type: Q4_0, file: "x.gguf"}\n',             # differ only in case
    '  - {type: Q8_0, file: "m.r.manifest.json"}\n',                                      # an output on the manifest
])
def test_outputs_resolving_to_one_file_are_refused_up_front(outputs: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="would both write"):
        layout_of(f"name: r\noutputs:\n{outputs}", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_dash_o_rule(tmp_path: Path) -> None:
    assert output_target(tmp_path / "M.GGUF", 1) == (tmp_path, tmp_path / "M.GGUF")      # any case: a file
    assert output_target(tmp_path / "Qwen2.5-0.5B", 3) == (tmp_path / "Qwen2.5-0.5B", None)   # digits: a folder
    with pytest.raises(InputError, match="'.bin', which is not a GGUF file name"):
        output_target(tmp_path / "out.bin", 1)
    (tmp_path / "v.bin").mkdir()
    assert output_target(tmp_path / "v.bin", 1) == (tmp_path / "v.bin", None)           # an existing folder is one
    with pytest.raises(InputError, match="names one file but the recipe has 2 outputs"):
        output_target(tmp_path / "x.gguf", 2)
    layout = resolve_layout(tmp_path / "M.GGUF", ["ignored"], model="m", recipe="r")
    assert layout.files == (tmp_path / "M.GGUF",) and layout.manifest == tmp_path / "M.manifest.json"


def test_batch_jobs_writing_one_file_are_refused_when_the_batch_is_loaded(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name / "llama").mkdir(parents=True)
    # Two models whose folders share a name, written to one folder: same file names, same manifest.
    text = "output: out\nmodels:\n  - model: ./a/llama\n    name: one\n  - model: ./b/llama\n    name: two\nrecipes: [q8_0]\n"
    with pytest.raises(RecipeError, match=r"batch.yaml:5: job 'one.q8_0' .* and job 'two.q8_0' .* would both write"):
        parse_batch(text, "batch.yaml", base=tmp_path)
    # One model, two recipes that make the same file.
    (tmp_path / "mine.yaml").write_text("quantize: {type: Q8_0}\n")
    text = "output: out/{model}\nmodels: [./a/llama]\nrecipes: [q8_0, mine.yaml]\n"
    with pytest.raises(RecipeError, match="would both write .*llama-Q8_0.gguf"):
        parse_batch(text, "batch.yaml", base=tmp_path)
    # A job name that would put the job's folder elsewhere.
    text = "output: out/{model}\nmodels:\n  - model: ./a/llama\n    name: ../../escape\nrecipes: [q8_0]\n"
    with pytest.raises(RecipeError, match="not a plain file name"):
        parse_batch(text, "batch.yaml", base=tmp_path)


def test_every_writer_gets_its_own_partial_name(tmp_path: Path) -> None:
    target = tmp_path / "x.gguf"
    names = {partial_name(target) for _ in range(100)}
    assert len(names) == 100
    assert all(n.parent == tmp_path and n.name.startswith(".x.gguf.partial-") for n in names)


def test_sweep_removes_partials_of_dead_processes_only(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    assert not pid_alive(dead_pid)
    stale = tmp_path / f".x.gguf.partial-{dead_pid}-0"
    stale_old_style = tmp_path / f".y.gguf.partial-{dead_pid}"
    live = tmp_path / f".x.gguf.partial-{os.getpid()}-7"
    unrelated = tmp_path / "notes.partial-1"
    for p in (stale, stale_old_style, live, unrelated):
        p.write_bytes(b"x")
    assert sorted(sweep_partials(tmp_path)) == sorted([stale, stale_old_style])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, unrelated.name])


def test_output_locks_exclude_a_second_process(tmp_path: Path) -> None:
    target = tmp_path / "x.gguf"
    probe = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR)\n"
             "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError:\n    print('held')\n")
    with output_locks([target, tmp_path / "m.manifest.json"]):
        held = subprocess.run([sys.executable, "-c", probe, str(lock_name(target))], capture_output=True, text=True)
    assert held.stdout.strip() == "held"
    assert list(tmp_path.iterdir()) == []            # the holder removes its lock files when it lets go


def test_a_waiter_on_a_lock_file_deleted_by_its_holder_takes_the_new_one(tmp_path: Path) -> None:
    """Three processes: the holder deletes the lock file on release; a waiter that had opened the old file must
    not run beside a third process that locked a fresh file of that name."""
    target = tmp_path / "x.gguf"
    log = tmp_path / "log"
    worker = ("import sys, time\nfrom pathlib import Path\nfrom quantcli.io.locks import output_locks\n"
              "log = open(sys.argv[2], 'a')\n"
              "for _ in range(30):\n"
              "    with output_locks([Path(sys.argv[1])]):\n"
              "        log.write('in\\n'); log.flush(); time.sleep(0.002); log.write('out\\n'); log.flush()\n")
    procs = [subprocess.Popen([sys.executable, "-c", worker, str(target), str(log)]) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    lines = log.read_text().split()
    assert len(lines) == 180 and lines == ["in", "out"] * 90        # never two holders at once
    assert not lock_name(target).exists()


def test_write_error_hints_offer_free_space_only_for_space_errors() -> None:
    assert "Free disk space" in write_error_hint(OSError(errno.ENOSPC, "No space left on device"))
    assert "Free disk space" in write_error_hint(OSError(errno.EFBIG, "File too large"))
    for code in (errno.EISDIR, errno.EACCES, errno.EROFS):
        assert "Free disk space" not in write_error_hint(OSError(code, os.strerror(code)))


@pytest.mark.parametrize("text, words", [
    ("quantize: {type: Q8_0}\nverify: {min_snr_db: .nan}\n", "must be a finite number"),
    ("quantize: {type: Q8_0}\nverify: {min_snr_db: .inf}\n", "must be a finite number"),
    ("quantize: {type: Q8_0}\nverify: {max_rmse: -1}\n", "must be 0 or more"),
    ("quantize: {type: Q8_0, file: ''}\n", "file is empty"),
])
def test_recipe_values_that_would_disable_a_check_or_a_name_are_refused(text: str, words: str) -> None:
    with pytest.raises(RecipeError, match=words):
        parse_recipe(text, "r.yaml")
