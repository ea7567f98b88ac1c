"""benchmarks/widened_model.py pads a checkpoint with zeros to K-quant-sized rows; the model must compute the same."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.widened_model import check, head_rows, query_heads, widen
from tests.fixtures.paths import model_path


def test_query_heads_keep_whole_groups_and_fill_the_multiple() -> None:
    assert query_heads(9, 3, 64, 256) == 12          # SmolLM2: 9 heads of 64 in 3 groups -> 12 (768 wide)
    assert query_heads(4, 2, 64, 256) == 4           # already whole
    assert query_heads(4, 2, 64, 384) == 6


def test_each_head_keeps_its_key_value_group() -> None:
    rows = head_rows(9, 3, 12, 1)                    # one row per head
    assert rows.tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10]
    assert all(r // 4 == h // 3 for h, r in enumerate(rows))   # old group h // 3, new group r // 4


@pytest.mark.slow
def test_widened_tiny_llama_computes_what_the_source_computes(tmp_path: Path) -> None:
    source = model_path("tiny-llama")                # hidden 256, MLP 672, 4 heads of 64 over 2 kv heads
    out = tmp_path / "wide"
    shape = widen(source, out, multiple=384)         # 384 makes every part grow, the query heads too
    assert shape == {"hidden": 384, "intermediate": 768, "query_heads": 6}
    before, config = (json.loads((folder / "config.json").read_text()) for folder in (source, out))
    assert config["num_attention_heads"] == 6 and config["head_dim"] == 64
    assert config["rms_norm_eps"] == pytest.approx(before["rms_norm_eps"] * 256 / 384)
    kld = check(source, out, threads=1)
    assert np.isfinite(kld) and kld < 1e-8
