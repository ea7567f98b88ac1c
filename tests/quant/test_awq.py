"""AWQ (quant/algorithms/awq.py): exact folding for every block layout, the scale and clip searches, refusals.

Random tiny checkpoints of llama (with and without GQA), qwen2 (biases), gemma2 (norms stored as w - 1, post
norms) and phi3 (fused qkv and gate_up) are written from their specs; the engine's block walk runs them.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from quantcli.engine import Engine
from quantcli.errors import InputError
from quantcli.models.spec import spec_from_config
from quantcli.quant.algorithms.awq import AWQ, awq_scales, clip_search, fake_quantize, scale_groups
from quantcli.quant.algorithms.base import Chosen
from quantcli.io.int_scheme import IntScheme
from tests.engine.conftest import LLAMA_CONFIG, token_ids, write_random_checkpoint

W4G32 = IntScheme("W4G32", bits=4, group_size=32, symmetric=True)
W4G32_ASYM = IntScheme("W4G32A", bits=4, group_size=32, symmetric=False)
W3_CHANNEL = IntScheme("W3C", bits=3, group_size=None, symmetric=False)

FAMILIES = {
    "llama-gqa": dict(LLAMA_CONFIG),
    "llama-mha": {**LLAMA_CONFIG, "num_key_value_heads": 4},
    "qwen2": {**LLAMA_CONFIG, "architectures": ["Qwen2ForCausalLM"], "num_key_value_heads": 4},
    "qwen3": {**LLAMA_CONFIG, "architectures": ["Qwen3ForCausalLM"], "head_dim": 32},
    "gemma2": {**LLAMA_CONFIG, "architectures": ["Gemma2ForCausalLM"], "num_key_value_heads": 4, "head_dim": 16,
               "query_pre_attn_scalar": 16, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
               "sliding_window": 32, "rms_norm_eps": 1e-6},
    "phi3": {**LLAMA_CONFIG, "architectures": ["Phi3ForCausalLM"], "num_key_value_heads": 4},
}
def tokens(n_seq: int = 3, ctx: int = 16) -> np.ndarray:
    return token_ids(n_seq, ctx, seed=5)


def apply_chosen(folder: Path, chosen: list[Chosen], out: Path) -> Path:
    """A copy of the checkpoint with the chosen dense values written as they would be stored."""
    tensors = load_file(str(folder / "model.safetensors"))
    for c in chosen:
        assert c.dense is not None and c.dense.shape == tensors[c.name].shape
        tensors[c.name] = c.dense.astype(np.float32)
    out.mkdir()
    (out / "config.json").write_bytes((folder / "config.json").read_bytes())
    save_file(tensors, str(out / "model.safetensors"))
    return out


def logits(folder: Path, ids: np.ndarray) -> np.ndarray:
    return np.stack(list(Engine.from_hf(folder).run(ids)))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_folded_scales_leave_every_layout_unchanged(family: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Force large random scales for every group (no search), write the chosen values back as the checkpoint
    stores them, and the float model's logits are those of the original."""
    folder = write_random_checkpoint(tmp_path / "src", FAMILIES[family], seed=1)
    scale_rng = np.random.default_rng(3)

    def forced(self: AWQ, step: object, group: object, act_mean: np.ndarray, *args: object) -> np.ndarray:
        return np.exp(scale_rng.uniform(-1.5, 1.5, act_mean.shape)).astype(np.float32)

    monkeypatch.setattr(AWQ, "_search", forced)
    ids = tokens()
    awq = AWQ(clip=False)
    chosen: list[Chosen] = []
    for step in Engine.from_hf(folder).blocks(ids):
        targets = {n: W4G32 for n in step.linears}
        before = step.forward()
        picked = awq.process(step, targets)
        # the step holds the folded weights: the block's float output is unchanged
        np.testing.assert_allclose(step.forward(), before, rtol=1e-4, atol=2e-5)
        assert {c.name for c in picked} >= set(targets)
        chosen += picked
    spec = spec_from_config(FAMILIES[family])
    norms = {spec.tensor(r, 0).hf_name for r in ("attn_norm", "ffn_norm")}
    assert norms <= {c.name for c in chosen}
    np.testing.assert_allclose(logits(apply_chosen(folder, chosen, tmp_path / "out"), ids), logits(folder, ids),
                               rtol=1e-3, atol=2e-4)


def test_groups_follow_the_spec() -> None:
    def roles(config: dict) -> list[tuple[str, tuple[str, ...], tuple[int, int] | None]]:
        spec = spec_from_config(config)
        names = {t.role: t.role for t in spec.tensors if t.layer == 0}   # name each tensor by its role
        return [(g.prev, g.linears, g.prev_rows) for g in scale_groups(spec, names)]

    assert roles(FAMILIES["llama-gqa"]) == [("attn_norm", ("attn_q", "attn_k", "attn_v"), None),
                                            ("ffn_norm", ("ffn_gate", "ffn_up"), None),
                                            ("ffn_up", ("ffn_down",), None)]     # GQA: no v -> o
    assert ("attn_v", ("attn_out",), None) in roles(FAMILIES["llama-mha"])
    # phi3: v is the last third of qkv's rows, up the second half of gate_up's
    assert roles(FAMILIES["phi3"]) == [("attn_norm", ("attn_qkv",), None), ("attn_qkv", ("attn_out",), (128, 192)),
                                       ("ffn_norm", ("ffn_gate_up",), None), ("ffn_gate_up", ("ffn_down",), (96, 192))]
    # qwen3 (4 query heads, 2 kv heads): GQA, so v cannot pass its scales on to o
    assert all(g[0] != "attn_v" for g in roles(FAMILIES["qwen3"]))


def test_post_norm_blocks_are_refused() -> None:
    bert = {"architectures": ["BertModel"], "num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64,
            "num_attention_heads": 4, "vocab_size": 50, "max_position_embeddings": 32, "type_vocab_size": 2,
            "layer_norm_eps": 1e-12}
    spec = spec_from_config(bert)
    with pytest.raises(InputError, match="AWQ cannot fold") as info:
        scale_groups(spec, {t.role: t.hf_name for t in spec.tensors if t.layer == 0})
    assert "--method gptq" in (info.value.hint or "")


def test_scales_are_normalised_and_alpha_zero_is_identity() -> None:
    act = np.abs(np.random.default_rng(5).standard_normal(64)).astype(np.float32) + 0.01
    np.testing.assert_array_equal(awq_scales(act, 0.0), np.ones(64, np.float32))
    for alpha in (0.25, 0.5, 0.95):
        s = awq_scales(act, alpha)
        assert float(s.max()) * float(s.min()) == pytest.approx(1.0, rel=1e-5)
        assert np.array_equal(np.argsort(s, kind="stable"), np.argsort(act, kind="stable"))  # larger act, larger s
    np.testing.assert_allclose(awq_scales(np.full(64, 3.0, np.float32), 0.7), 1.0, rtol=1e-6)


def outlier_model(tmp_path: Path, config: dict, seed: int = 2) -> Path:
    """A random checkpoint whose norms make a few input channels of every linear group ~30x larger: the case
    AWQ is for."""
    folder = write_random_checkpoint(tmp_path / "outlier", config, seed=seed)
    tensors = load_file(str(folder / "model.safetensors"))
    hot = np.array([3, 17, 40])
    for name, value in tensors.items():
        if name.endswith(("input_layernorm.weight", "post_attention_layernorm.weight")):
            value = value.copy()
            value[hot] *= 30.0
            tensors[name] = value
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def block_errors(folder: Path, scheme: IntScheme, method: AWQ) -> tuple[list[float], list[float]]:
    """Per block: MSE of the block output against float, for RTN and for the method's choice (both
    dequantized by the pack stage's encoding), on the same float inputs. 256 tokens: with 64, the error of a
    random block's output is noisy enough that AWQ lost to RTN on one block for some token draws."""
    ids = tokens(8, 32)
    rtn_err, awq_err = [], []
    for step in Engine.from_hf(folder).blocks(ids):
        reference = step.forward()
        originals = {n: step.weight(n).copy() for n in step.names.values()}
        for n in step.linears:
            step.set_weight(n, fake_quantize(originals[n], scheme, "F32"))
        rtn_err.append(float(np.mean((step.forward() - reference) ** 2)))
        for n, w in originals.items():
            step.set_weight(n, w)
        chosen = method.process(step, {n: scheme for n in step.linears})
        for c in chosen:
            assert c.dense is not None
            w = fake_quantize(c.dense, scheme, "F32") if c.name in step.linears else c.dense
            step.set_weight(c.name, w)   # llama: norms are stored as their factor
        awq_err.append(float(np.mean((step.forward() - reference) ** 2)))
        for n, w in originals.items():   # the next block starts from float inputs either way
            step.set_weight(n, w)
    return rtn_err, awq_err


@pytest.mark.parametrize("scheme", [W4G32, W4G32_ASYM, W3_CHANNEL], ids=["sym-g32", "asym-g32", "w3-channel"])
def test_awq_beats_rtn_on_outlier_channels(tmp_path: Path, scheme: IntScheme) -> None:
    folder = outlier_model(tmp_path, {**LLAMA_CONFIG, "num_key_value_heads": 4})
    method = AWQ()
    rtn, awq = block_errors(folder, scheme, method)
    assert sum(awq) < 0.8 * sum(rtn), (rtn, awq)
    assert all(a <= r * 1.05 for a, r in zip(awq, rtn)), (rtn, awq)
    assert any(alpha > 0 for alpha in method.alphas.values())


def test_scale_search_alone_never_loses_to_rtn(tmp_path: Path) -> None:
    """Without clipping, alpha = 0 (plain RTN) is a candidate, so each group's loss is at most RTN's."""
    folder = outlier_model(tmp_path, LLAMA_CONFIG)
    rtn, awq = block_errors(folder, W4G32, AWQ(clip=False))
    assert sum(awq) < sum(rtn)


class UniformStep:
    """A one-group block (v -> o of a 4-head MHA attention) whose o_proj input has |x| = 1 on every channel."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.spec = spec_from_config({**LLAMA_CONFIG, "num_key_value_heads": 4})
        self.inputs = np.zeros((2, 8, 64), np.float32)
        self._names = {t.role: t.hf_name for t in self.spec.tensors if t.layer == 0}
        self._w = {t.hf_name: rng.standard_normal(t.shape).astype(np.float32) for t in self.spec.tensors
                   if t.layer == 0}
        self._x = np.sign(rng.standard_normal((16, 64))).astype(np.float32)

    @property
    def names(self) -> dict[str, str]:
        return dict(self._names)

    @property
    def linears(self) -> list[str]:
        return [self._names["attn_out"]]

    def role(self, name: str) -> str:
        return {v: k for k, v in self._names.items()}[name]

    def weight(self, name: str) -> np.ndarray:
        return self._w[name]

    def set_weight(self, name: str, value: np.ndarray) -> None:
        self._w[name] = np.asarray(value, np.float32)

    def forward(self, x: None = None, *, capture: object = None, sequences: slice | None = None) -> np.ndarray:
        rows = self._x if sequences is None else self._x.reshape(2, 8, 64)[sequences].reshape(-1, 64)
        for name in ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up", "ffn_down"):
            if capture is not None:
                capture(self._names[name], np.ones((len(rows), self._w[self._names[name]].shape[1]), np.float32))
        if capture is not None:
            capture(self._names["attn_out"], rows)
        return self.inputs

    def walk(self, capture: Callable[[str, np.ndarray], None] | None = None,
             on_group: Callable[[list[str]], None] | None = None) -> np.ndarray:
        for roles in (("attn_q", "attn_k", "attn_v"), ("attn_out",), ("ffn_gate", "ffn_up"), ("ffn_down",)):
            names = [self._names[r] for r in roles]
            x = self._x if roles == ("attn_out",) else np.ones((16, self._w[names[0]].shape[1]), np.float32)
            for name in names:
                if capture is not None:
                    capture(name, x)
            if on_group is not None:
                on_group(names)
        return self.inputs


def test_uniform_activations_pick_alpha_zero() -> None:
    step = UniformStep()
    o = step.names["attn_out"]
    before = step.weight(o).copy()
    awq = AWQ(clip=False)
    chosen = awq.process(step, {o: W4G32})   # type: ignore[arg-type]
    assert awq.alphas[o] == 0.0
    np.testing.assert_array_equal(dict((c.name, c.dense) for c in chosen)[o], before)


def test_clip_search_shrinks_ranges_and_never_raises_the_error() -> None:
    rng = np.random.default_rng(9)
    w = rng.standard_normal((40, 64)).astype(np.float32)
    w[:, 5] *= 6.0                            # a few large weights per row: clipping them can pay
    x = rng.standard_normal((300, 64)).astype(np.float32)
    for scheme in (W4G32, W4G32_ASYM, W3_CHANNEL):
        clipped = clip_search(w, x, scheme, "F32")
        assert np.all(np.abs(clipped) <= np.abs(w)) and np.all(clipped * w >= 0)
        assert not np.array_equal(clipped, w)

        def err(v: np.ndarray) -> np.ndarray:
            """Mean squared error of each (row, scale group)'s partial output, what the search minimises."""
            g = 64 if scheme.group_size is None else scheme.group_size
            d = (fake_quantize(v, scheme, "F32") - w).reshape(40, -1, g)
            return np.einsum("tgk,rgk->trg", x.reshape(300, -1, g), d) ** 2

        assert np.all(err(clipped).mean(axis=0) <= err(w).mean(axis=0) * (1 + 1e-5))
        assert err(clipped).sum() < err(w).sum()


def test_targets_that_the_group_size_does_not_divide_are_refused(tmp_path: Path) -> None:
    folder = write_random_checkpoint(tmp_path / "m", LLAMA_CONFIG)
    step = next(Engine.from_hf(folder).blocks(tokens(1, 8)))
    g48 = IntScheme("W4G48", bits=4, group_size=48, symmetric=True)
    with pytest.raises(InputError, match="does not divide"):
        AWQ().process(step, {n: g48 for n in step.linears})


def test_untargeted_linears_keep_their_values_unless_folded(tmp_path: Path) -> None:
    """Only the MLP is quantized: the attention group is left alone, and the MLP's norm carries the scales."""
    folder = outlier_model(tmp_path, LLAMA_CONFIG)
    step = next(Engine.from_hf(folder).blocks(tokens(2, 16)))
    names: Mapping[str, str] = step.names
    originals = {n: step.weight(n).copy() for n in names.values()}
    mlp = [names[r] for r in ("ffn_gate", "ffn_up", "ffn_down")]
    chosen = {c.name: c.dense for c in AWQ().process(step, {n: W4G32 for n in mlp})}
    for role in ("attn_q", "attn_k", "attn_v", "attn_out", "attn_norm"):
        np.testing.assert_array_equal(step.weight(names[role]), originals[names[role]])
        assert names[role] not in chosen
    assert set(mlp) <= set(chosen)
