"""AWQ, activation-aware weight quantization (Lin et al., 2023), driven block by block on the CPU.

Weights that meet large activations matter most. AWQ protects them by an exact change of variables: the input
channels of a group of linears that share one input are multiplied by per-channel scales `s`, and the operation
that produces that input (a norm, or the output rows of a previous linear) is divided by the same `s`, so the float
model is unchanged while the quantizer sees larger salient weights. Per block, for each scale group:

1. the mean absolute input activation per channel, `a`, over the calibration tokens;
2. a grid over alpha in [0, 1): `s = a ** alpha`, floored at 1e-4 and normalised by sqrt(max(s) * min(s)); the
   group's weights `W * s` are fake-quantized with the plan's scheme (round-to-nearest min-max, the encoding the
   pack stage uses), divided back by `s`, and the output the group feeds (attention, MLP, or the linear itself) is
   compared with the float output; the alpha with the least mean squared error wins (alpha = 0 is no scaling);
3. the winning scales are folded into the weights.

All of this comes from one staged walk of the block (BlockStep.walk) over every calibration sequence: at each
group's pause, the statistics over every token are complete and the first sequences' inputs (the search tokens,
`max_tokens`) are kept; the loss runs only the sub-layer between the group and what it compares (the attention for
q/k/v, gate/up and the activation for the MLP) on those kept inputs. The walk runs the float block throughout and
the folds are applied after it: a fold is an exact change of variables, so the later groups' inputs are those of
the folded block up to float rounding (the clip search divides a group's kept input by its scales).

Then the clip search: per linear (AWQ leaves q and k alone, whose errors pass through the softmax), per output
row and scale group, the range is shrunk to max|w| * (1 - i / 20) for i < 10, and the clip with the least error of
the group's partial outputs over the search tokens is kept (AWQ subsamples 512 tokens to bound its token-by-token
sum; here the error comes from each group's Gram matrix, so every search token counts at no extra cost). The chosen weights are the scaled and clipped float
values; min-max round-to-nearest of a clipped group reproduces the clip when the pack stage encodes it.

Which operation each group's scales fold into comes from the model description (roles, fused projections, GQA,
norm offset), not from a per-family table; see docs/awq.md.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ...errors import InputError
from ...io.int_scheme import IntScheme
from ..backend import get_backend
from ..int.encode import encode_weight
from .base import Chosen
from .step import BlockStep

if TYPE_CHECKING:  # the model description sits beside quant/; only its type is named
    from ...models.spec import ModelSpec

F32 = np.float32
SCALE_FLOOR = 1e-4          # AWQ's lower bound on a channel scale before normalisation
CLIP_GRID = 20              # the clip search shrinks by 1/CLIP_GRID per step ...
CLIP_MAX_SHRINK = 0.5       # ... down to half the range (AWQ's auto_clip defaults)
NO_CLIP_ROLES = ("attn_q", "attn_k", "attn_qkv")
# Search tokens per call of the sub-layer the loss runs through (whole sequences; at least one), bounding its
# working arrays as the engine's chunks do.
PROBE_TOKENS = 2048


@dataclass(frozen=True)
class ScaleGroup:
    """Linears sharing one input, the operation whose output is that input, and what the loss looks at.

    `prev` is a norm (its factor, and bias for LayerNorm, are divided by the scales) or a linear (the rows
    `prev_rows` of it, and of its bias, are divided). `probe` names the linear whose input, captured in a block
    forward, gives the output the search compares (o_proj for the attention, down_proj for the MLP: that output
    is probe_input @ probe_weight.T); None compares the group's own (single) linear's output.
    """

    prev: str
    prev_is_norm: bool
    prev_rows: tuple[int, int] | None
    linears: tuple[str, ...]
    probe: str | None


def scale_groups(spec: ModelSpec, names: Mapping[str, str]) -> list[ScaleGroup]:
    """AWQ's scale groups for one block, from the roles the block has (role -> tensor name)."""
    if spec.post_norm_block or "attn_norm" not in names or "ffn_norm" not in names:
        raise InputError(f"AWQ cannot fold scales into {spec.architecture}'s blocks: they have no norm right before "
                         "the attention and MLP inputs (post-norm blocks).",
                         hint="Use --method gptq, or round-to-nearest without --method, for this model.")
    groups: list[ScaleGroup] = []
    q_rows, kv_rows = spec.n_head * spec.head_dim, spec.n_head_kv * spec.head_dim
    # input norm -> q, k, v (or the fused qkv)
    qkv = ("attn_qkv",) if spec.fused_qkv else ("attn_q", "attn_k", "attn_v")
    groups.append(ScaleGroup(names["attn_norm"], True, None, tuple(names[r] for r in qkv), names["attn_out"]))
    # v -> o: o's input channel j is v's output row j only when every query head has its own v head (no GQA)
    if kv_rows == q_rows:
        if spec.fused_qkv:
            groups.append(ScaleGroup(names["attn_qkv"], False, (q_rows + kv_rows, q_rows + 2 * kv_rows),
                                     (names["attn_out"],), None))
        else:
            groups.append(ScaleGroup(names["attn_v"], False, None, (names["attn_out"],), None))
    # MLP norm -> gate, up (or the fused gate_up; up alone when the MLP is not gated)
    if spec.fused_gate_up:
        ffn_in: tuple[str, ...] = ("ffn_gate_up",)
    elif spec.numerics.gated_ffn:
        ffn_in = ("ffn_gate", "ffn_up")
    else:
        ffn_in = ("ffn_up",)
    groups.append(ScaleGroup(names["ffn_norm"], True, None, tuple(names[r] for r in ffn_in), names["ffn_down"]))
    # up -> down: exact only when up enters down linearly (gated MLPs); an activation after up would not commute
    if spec.fused_gate_up:
        groups.append(ScaleGroup(names["ffn_gate_up"], False, (spec.ffn, 2 * spec.ffn), (names["ffn_down"],), None))
    elif spec.numerics.gated_ffn:
        groups.append(ScaleGroup(names["ffn_up"], False, None, (names["ffn_down"],), None))
    return groups


def awq_scales(act_mean: np.ndarray, alpha: float) -> np.ndarray:
    """s = act_mean ** alpha, floored at 1e-4, normalised so that max(s) * min(s) = 1 (alpha = 0: all ones)."""
    s = np.maximum(np.power(act_mean.astype(np.float64), alpha), SCALE_FLOOR)
    return (s / np.sqrt(s.max() * s.min())).astype(F32)


def fake_quantize(w: np.ndarray, scheme: IntScheme, scale_dtype: str) -> np.ndarray:
    """What the pack stage's min-max round-to-nearest encoding of `w` dequantizes to."""
    codes, _ = encode_weight(w, scheme, scale_dtype, "minmax", get_backend())
    return codes.dequantize(scale_dtype, scheme.group_size)


def clip_search(w: np.ndarray, x: np.ndarray, scheme: IntScheme, scale_dtype: str) -> np.ndarray:
    """AWQ's clip search: per output row and scale group, the shrink of [-max|w|, max|w|] whose quantized weights
    give the least mean squared error of the group's partial output x_g @ w_g over the tokens of `x`; returns
    `w` clipped to the chosen ranges.

    The error of a weight change d over the tokens is d^T C_g d with C_g = X_g^T X_g / tokens, the same number AWQ
    computes token by token, at a cost that does not grow with the tokens.
    """
    rows, n = w.shape
    g = n if scheme.group_size is None else scheme.group_size
    n_groups = n // g
    xg = x.reshape(-1, n_groups, g).transpose(1, 0, 2).astype(np.float64)             # groups, tokens, g
    gram = xg.transpose(0, 2, 1) @ xg / len(x)                                          # groups, g, g
    wb = w.reshape(rows, n_groups, g)
    amax = np.abs(wb).max(axis=2)                                                       # rows, groups
    best_err = np.full(amax.shape, np.inf)
    best_max = amax.copy()
    for i in range(int(CLIP_MAX_SHRINK * CLIP_GRID)):
        m = amax * F32(1 - i / CLIP_GRID)
        cw = np.clip(wb, -m[:, :, None], m[:, :, None])
        qw = fake_quantize(cw.reshape(rows, n), scheme, scale_dtype).reshape(wb.shape)
        delta = (qw - wb).transpose(1, 0, 2).astype(np.float64)                         # groups, rows, g
        err = np.einsum("grk,grk->rg", delta @ gram, delta)                              # rows, groups
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_max = np.where(better, m, best_max)
    return np.clip(wb, -best_max[:, :, None], best_max[:, :, None]).reshape(rows, n)


class AWQ:
    """AWQ as a BlockMethod (quant/algorithms/base.py).

    n_grid: alphas tried, k / n_grid for k = 0 .. n_grid - 1. clip: run the clip search after the scales.
    max_tokens: calibration tokens the searches run the block on (whole sequences, the first ones); the
    activation statistics use every sequence. scale_dtype: the dtype the pack stage stores scales in, so the
    search's fake quantization rounds them as the file will.
    """

    name = "awq"

    def __init__(self, n_grid: int = 20, clip: bool = True, *, max_tokens: int = 4096, scale_dtype: str = "F32") -> None:
        if n_grid < 1:
            raise InputError(f"AWQ's n_grid is {n_grid}.", hint="Give at least 1 (20 is AWQ's default).")
        self.n_grid, self.clip, self.max_tokens, self.scale_dtype = n_grid, clip, max_tokens, scale_dtype
        self.alphas: dict[str, float] = {}      # first linear of each scale group -> the alpha chosen (for reports)

    # -- the walk -------------------------------------------------------------------------------------------
    def process(self, step: BlockStep, targets: Mapping[str, IntScheme]) -> list[Chosen]:
        spec = step.spec
        names = step.names
        groups = scale_groups(spec, names)
        for name, scheme in targets.items():
            scheme.check_row(name, step.weight(name).shape[1])
        n_seq, ctx = step.inputs.shape[:2]
        n_sample = max(1, min(n_seq, self.max_tokens // ctx))
        by_first = {g.linears[0]: g for g in groups}
        data = _Collected(n_sample * ctx)
        scales: dict[str, np.ndarray] = {}

        def on_group(linears: list[str]) -> None:
            # every token has reached this group's input, with the block's float weights: its statistics are
            # complete and the search runs on the first sequences' inputs, kept by the capture
            group = by_first.get(linears[0])
            if group is not None and any(n in targets for n in group.linears):
                scales[group.linears[0]] = self._search(step, group, data.mean(group.linears[0]), data, targets, ctx)

        # One pass over the block gives every group's activation statistics and search inputs. The walk keeps
        # the float weights: folding a group's scales is an exact change of variables, so the later groups'
        # inputs are those of the folded block, and every fold is applied after the walk.
        step.walk(capture=data, on_group=on_group)
        changed: set[str] = set()
        for group in groups:
            if group.linears[0] in scales:
                changed |= self._fold(step, group, scales[group.linears[0]], names)
        if self.clip:
            of_group = {n: g for g in groups for n in g.linears}
            for name in (n for n in step.linears if n in targets and step.role(n) not in NO_CLIP_ROLES):
                x = data.sample(name)
                g = of_group.get(name)
                s = None if g is None else scales.get(g.linears[0])
                if s is not None and not np.all(s == 1):
                    x = x / s          # the input after the fold: the producing operation was divided by s
                step.set_weight(name, clip_search(step.weight(name), x, targets[name], self.scale_dtype))
        offset = F32(spec.numerics.norm_weight_offset)
        chosen = [Chosen(name, dense=step.weight(name).copy()) for name in step.linears if name in targets]
        for name in sorted(changed - set(targets)):
            value = step.weight(name)
            role = step.role(name)
            # a norm's factor back to the value the checkpoint stores (gemma: w - 1); biases are stored as used
            stored = value - offset if role in _norm_roles(names) and offset else value
            chosen.append(Chosen(name, dense=np.asarray(stored, dtype=F32)))
        return chosen

    # -- steps ----------------------------------------------------------------------------------------------
    def _search(self, step: BlockStep, group: ScaleGroup, act_mean: np.ndarray, data: "_Collected",
                targets: Mapping[str, IntScheme], ctx: int) -> np.ndarray:
        """The grid over alpha; returns the best scales (all ones when alpha = 0 wins)."""
        originals = {n: step.weight(n) for n in group.linears}
        loss = self._loss_fn(step, group, data.sample(group.linears[0]), ctx, originals)
        best_loss, best_alpha, best_s = np.inf, 0.0, np.ones_like(act_mean)
        for k in range(self.n_grid):
            alpha = k / self.n_grid
            s = awq_scales(act_mean, alpha)
            candidate = {n: (fake_quantize(w * s, targets[n], self.scale_dtype) / s if n in targets else w)
                         for n, w in originals.items()}
            value = loss(candidate)
            if value < best_loss:
                best_loss, best_alpha, best_s = value, alpha, s
        self.alphas[group.linears[0]] = best_alpha
        return best_s

    def _loss_fn(self, step: BlockStep, group: ScaleGroup, x: np.ndarray, ctx: int,
                 originals: Mapping[str, np.ndarray]) -> Callable[[Mapping[str, np.ndarray]], float]:
        """loss(candidate weights) -> mean squared error of the inspected output against the float one, over the
        search tokens `x` (the group's input, whole sequences of `ctx` tokens)."""
        if group.probe is None:
            (name,) = group.linears
            w = originals[name]

            def direct(candidate: Mapping[str, np.ndarray]) -> float:
                return float(np.mean(np.square(x @ (candidate[name] - w).T), dtype=np.float64))
            return direct

        # only the sub-layer between the group and the probe runs (the attention for q/k/v, the MLP's gate/up
        # and activation for gate/up), from the group's kept input, a few sequences at a time
        w_probe = step.weight(group.probe)
        attention = step.role(group.probe) == "attn_out"
        per = max(1, PROBE_TOKENS // ctx) * ctx
        pieces = [x[t0:t0 + per] for t0 in range(0, len(x), per)]

        def probe_out(piece: np.ndarray, weights: Mapping[str, np.ndarray] | None) -> np.ndarray:
            inner = (step.attention(piece.reshape(-1, ctx, piece.shape[-1]), weights=weights) if attention
                     else step.mlp(piece, weights=weights))
            return inner @ w_probe.T

        reference = [probe_out(piece, None) for piece in pieces]
        total = sum(r.size for r in reference)

        def through_sublayer(candidate: Mapping[str, np.ndarray]) -> float:
            err = sum(float(np.sum(np.square(probe_out(piece, candidate) - ref), dtype=np.float64))
                      for piece, ref in zip(pieces, reference))
            return err / total
        return through_sublayer

    def _fold(self, step: BlockStep, group: ScaleGroup, s: np.ndarray, names: Mapping[str, str]) -> set[str]:
        """Divide the producing operation by s and multiply the group's input columns by s (exact in float)."""
        if np.all(s == 1):
            return set()
        role = step.role(group.prev)
        changed = {group.prev, *group.linears}
        bias = names.get(role + "_bias")
        if group.prev_is_norm:
            step.set_weight(group.prev, step.weight(group.prev) / s)
        else:
            lo, hi = group.prev_rows or (0, step.weight(group.prev).shape[0])
            w = step.weight(group.prev).copy()
            w[lo:hi] /= s[:, None]
            step.set_weight(group.prev, w)
        if bias is not None:
            b = step.weight(bias).copy()
            lo, hi = group.prev_rows or (0, b.shape[0])
            b[lo:hi] /= s
            step.set_weight(bias, b)
            changed.add(bias)
        for n in group.linears:
            step.set_weight(n, step.weight(n) * s)
        return changed


def _norm_roles(names: Mapping[str, str]) -> set[str]:
    return {r for r in names if r.endswith("_norm")}


class _Collected:
    """The walk's capture: per input of the block's linears (linears that read one array share its entry), the
    sum of |x| per channel over every token, and the first `keep` tokens' rows (the search tokens: whole
    sequences, since the engine's chunks hold whole sequences in order)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.key: dict[str, str] = {}
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.rows: dict[str, list[np.ndarray]] = {}
        self._last: tuple[np.ndarray, str] | None = None

    def __call__(self, name: str, x: np.ndarray) -> None:
        if self._last is not None and self._last[0] is x:      # q/k/v, gate/up: one array, one entry
            self.key[name] = self._last[1]
            return
        self._last = (x, name)
        self.key[name] = name
        flat = x.reshape(-1, x.shape[-1])
        self.sums[name] = self.sums.get(name, 0) + np.abs(flat).sum(axis=0, dtype=np.float64)
        seen = self.counts.get(name, 0)
        if seen < self.keep:
            self.rows.setdefault(name, []).append(np.array(flat[:self.keep - seen], dtype=F32))
        self.counts[name] = seen + len(flat)

    def mean(self, name: str) -> np.ndarray:
        """Mean |x| per input channel over every token."""
        key = self.key[name]
        return (self.sums[key] / self.counts[key]).astype(F32)

    def sample(self, name: str) -> np.ndarray:
        """The search tokens' inputs [tokens, in_features]."""
        key = self.key[name]
        rows = self.rows[key]
        if len(rows) > 1:
            self.rows[key] = rows = [np.concatenate(rows)]
        return rows[0]
