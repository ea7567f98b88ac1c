"""Random checkpoints written straight from a ModelSpec (numpy + safetensors), for engine tests that need no
built model: every tensor the spec lists, seeded normal values, norm scales around 1."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from quantcli.models.spec import spec_from_config

LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "hidden_size": 64,
                "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 97,
                "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}



def token_ids(n_seq: int, ctx: int, *, seed: int, vocab: int = LLAMA_CONFIG["vocab_size"]) -> np.ndarray:
    """(n_seq, ctx) int32 token ids from their own seed: a test sees the same data whichever tests its
    pytest-xdist worker ran before it."""
    return np.random.default_rng(seed).integers(0, vocab, size=(n_seq, ctx)).astype(np.int32)


def write_random_checkpoint(folder: Path, config: dict, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    spec = spec_from_config(config)
    rng = np.random.default_rng(seed)
    tensors = {}
    for t in spec.tensors:
        values = rng.standard_normal(t.shape).astype(np.float32)
        if t.role.endswith("_norm") and spec.numerics.norm_weight_offset == 0:
            values = 1.0 + 0.1 * values
        elif len(t.shape) == 2:
            values *= 1.0 / np.sqrt(t.shape[1])
        else:
            values *= 0.1
        tensors[t.hf_name] = values
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


@pytest.fixture()
def random_model(tmp_path: Path) -> Callable[..., Path]:
    """random_model(**config overrides) -> a checkpoint folder of a random llama-shaped (or given) model."""
    def make(seed: int = 0, **overrides: object) -> Path:
        config = {**LLAMA_CONFIG, **overrides}
        return write_random_checkpoint(tmp_path / f"model-{len(list(tmp_path.iterdir()))}", config, seed)
    return make
