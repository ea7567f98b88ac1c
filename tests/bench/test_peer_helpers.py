"""The benchmark helpers that decide something without running a peer: which install plans the peer venv refuses,
and how a benchmark rewrites only its own section of a shared Markdown page."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.doc_section import markers, replace_section
from benchmarks.peer_venv import refused


def plan(*names: str) -> dict:
    """A pip --dry-run --report with these distributions (name==version) to install."""
    return {"install": [{"metadata": {"name": n.split("==")[0], "version": n.split("==")[1]}} for n in names]}


def test_cpu_plan_is_accepted_with_the_nvml_binding() -> None:
    assert refused(plan("torch==2.13.0+cpu", "llmcompressor==0.14.0.1", "nvidia-ml-py==13.615.71")) == []


@pytest.mark.parametrize("cuda", ["nvidia-cublas-cu12==12.8.4.1", "nvidia_cudnn_cu12==9.10.2.21", "triton==3.5.0"])
def test_cuda_packages_are_refused(cuda: str) -> None:
    bad = refused(plan("torch==2.14.1", cuda, "nvidia-ml-py==13.615.71"))
    assert len(bad) == 1 and bad[0].replace("_", "-").startswith(cuda.split("==")[0].replace("_", "-"))


def test_section_is_appended_then_replaced_and_the_rest_is_kept(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Page\n\nhand-written intro\n", encoding="utf-8")
    replace_section(page, "one", "first table")
    replace_section(page, "two", "other table")
    page.write_text(page.read_text(encoding="utf-8") + "\nprose after\n", encoding="utf-8")
    replace_section(page, "one", "new table")
    text = page.read_text(encoding="utf-8")
    begin, end = markers("one")
    assert "first table" not in text and f"{begin}\nnew table\n{end}" in text
    assert text.startswith("# Page\n\nhand-written intro\n") and "other table" in text and text.endswith("prose after\n")
    assert text.index("new table") < text.index("other table")
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_page_is_created(tmp_path: Path) -> None:
    page = tmp_path / "new.md"
    replace_section(page, "s", "body")
    assert page.read_text(encoding="utf-8") == "<!-- s:begin -->\nbody\n<!-- s:end -->\n"


def test_a_command_past_its_timeout_is_stopped() -> None:
    import sys

    from benchmarks.measure import TimedOut, run_once

    with pytest.raises(TimedOut, match="stopped after 1 s"):
        run_once([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)
    assert run_once([sys.executable, "-c", "pass"], timeout=60).seconds > 0


def test_a_stopped_peer_is_reported_as_a_bound() -> None:
    import argparse

    from benchmarks.llmcompressor_peer import Row, report

    rows = [Row("m", "W4A16 g64 GPTQ 8x512", "quantcli", 900.0, 300, 20.0, Path("a")),
            Row("m", "W4A16 g64 GPTQ 8x512", "llm-compressor", 2400.0, 0.0, 20.0, Path("b"), stopped=True)]
    text = report(rows, argparse.Namespace(threads=2, ctx=512, eval_chunks=4), 8, (20.0, 21.0))
    assert "| 900.0 | < 0.38x |" in text and "| > 2400 (stopped) |" in text and "lower bound" in text
    assert "ms per token" not in text


def test_a_partial_calibrated_speed_run_keeps_the_rows_it_did_not_repeat(tmp_path: Path) -> None:
    from benchmarks import calibrated_speed as cs
    from benchmarks.doc_section import replace_between

    page = tmp_path / "page.md"
    page.write_text("# Page\n\nprose\n", encoding="utf-8")
    gptq, awq = (cs.LABELS[k].format(group=64) for k in ("gptq", "awq"))
    old = [f"| {gptq} | 128 x 512 | 900.0 | 950 | 9.0 → 9.0 | 2026-01-01 00:00 |",
           f"| {awq} | 128 x 512 | 398.1 | 913 | 1.0 → 1.0 | 2026-01-01 00:10 |"]
    replace_between(page, cs.BEGIN, cs.END, cs.table(old, 128, 512, 2))
    assert cs.earlier_rows(page) == {gptq: old[0], awq: old[1]}
    # a run with --only gptq replaces GPTQ's row and keeps AWQ's; the prose around the section stays
    new = f"| {gptq} | 128 x 512 | 163.4 | 954 | 0.8 → 2.1 | 2026-11-28 01:48 |"
    replace_between(page, cs.BEGIN, cs.END, cs.table([new, cs.earlier_rows(page)[awq]], 128, 512, 2))
    assert cs.earlier_rows(page) == {gptq: new, awq: old[1]}
    assert page.read_text(encoding="utf-8").startswith("# Page\n\nprose\n")


def test_the_scaling_table_replaces_its_own_section_and_keeps_the_prose_after_it(tmp_path: Path) -> None:
    # benchmarks/scaling.py --doc and benchmarks/run.py both mark the table; a rerun replaces only what is
    # between the markers, not the hand-written analysis that follows it up to the next section
    from benchmarks.run import write_report
    from benchmarks.scaling import SECTION, scaling_report

    page = tmp_path / "benchmarks.md"
    first = [{"model": "m", "quantcli 1t s": 3.0}]
    write_report([{"step": "convert", "s": 1.0}], page, 1, 2, first)
    begin, end = markers(SECTION)
    page.write_text(page.read_text(encoding="utf-8") + "\nanalysis by hand\n\n<!-- other:begin -->\nx\n"
                    "<!-- other:end -->\n", encoding="utf-8")
    replace_section(page, SECTION, "\n".join(scaling_report([{"model": "m", "quantcli 1t s": 2.5}])))
    text = page.read_text(encoding="utf-8")
    assert text.count(begin) == 1 and "| m | 2.5 |" in text and "| m | 3.0 |" not in text
    assert "analysis by hand" in text and "<!-- other:begin -->\nx\n" in text
