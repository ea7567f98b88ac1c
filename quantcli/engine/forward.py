"""One float32 forward pass for every architecture quantcli converts, driven by the ModelSpec.

The pass is layer-sequential: the hidden states of every sequence ([n_seq, ctx, hidden] float32) go through
block i before any goes through block i + 1, and a block's weights are read when the block starts and dropped
when it ends. Peak memory is therefore one block's weights, the hidden states of all sequences, and the working
arrays of one chunk of sequences (see docs/engine.md for the bound). The loop is where GPTQ and AWQ hook in:
`capture(name, x)` sees the input of every linear layer as it is used.

Families differ only through the spec's data (norm kind, activation, biases, fused projections, q/k norms,
post norms, rope kind, soft-capping, sliding windows, encoder or decoder); there is one block function for all
the pre-norm decoders and one for BERT's post-norm encoder. Each is a generator over one chunk of sequences that
pauses at the block's sub-layer groups (GROUPS): running it to the end is the plain forward, and
BlockStep.walk advances every chunk to a group before any chunk goes past it, so a calibrated method can
quantize the group's linears in between (docs/engine.md, "Walking the blocks").
"""
from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..models.spec import ModelSpec, ModelTensor
from . import ops
from .weights import GGUFWeights, HFWeights, WeightSource

Capture = Callable[[str, np.ndarray], None]
# A block's linears in groups that read one input, in forward order: the points where a block's generator pauses.
# Each generator yields (index into GROUPS, the group's input [tokens, in_features]); a group's roles that the
# block does not have are skipped (q/k/v or the fused qkv; gate/up, the fused gate_up, or up alone).
GROUPS: tuple[tuple[str, ...], ...] = (
    ("attn_qkv", "attn_q", "attn_k", "attn_v"),
    ("attn_out",),
    ("ffn_gate_up", "ffn_gate", "ffn_up"),
    ("ffn_down",),
)
Stages = Generator[tuple[int, np.ndarray], None, None]
F32 = np.float32
# Tokens per chunk of sequences sent through a block at once: large enough for efficient BLAS calls, small
# enough that the FFN's intermediate arrays (chunk x ffn floats, a few of them) stay modest.
CHUNK_TOKENS = 2048
# Attention scores of one sequence are computed for at most this many query rows x heads at a time.
SCORE_ROWS = 16384
# Query rows per block in causal attention (each block only multiplies the keys it can see).
QUERY_BLOCK = 128


class _Block:
    """One block's weights by role, float32, loaded on entry.

    The block functions read weights through `weight` and `get`; while `reads` is a set, the roles they read are
    added to it (BlockStep.walk's record of which weights its results already depend on).
    """

    def __init__(self, source: WeightSource, tensors: dict[str, ModelTensor]) -> None:
        self.w = {role: source.load(t) for role, t in tensors.items()}
        self.names = {role: source.name(t) for role, t in tensors.items()}
        self.reads: set[str] | None = None

    def weight(self, role: str) -> np.ndarray:
        if self.reads is not None:
            self.reads.add(role)
        return self.w[role]

    def get(self, role: str) -> np.ndarray | None:
        if self.reads is not None:
            self.reads.add(role)
        return self.w.get(role)

    def overridden(self, weights: Mapping[str, np.ndarray]) -> "_Block":
        """A copy sharing every array, with some roles' weights replaced (for one call, not recorded)."""
        other = _Block.__new__(_Block)
        other.w = {**self.w, **weights}
        other.names, other.reads = self.names, None
        return other

    def group_names(self, group: int) -> list[str]:
        """Tensor names of the linears of GROUPS[group] that this block has, in forward order."""
        return [self.names[r] for r in GROUPS[group] if r in self.names]


@cache
def _blas():  # type: ignore[no-untyped-def]
    """threadpoolctl's view of the loaded BLAS, inspected once (each fresh inspection scans the loaded libraries)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _threads_limit(threads: int):  # type: ignore[no-untyped-def]
    """A context that holds BLAS to `threads` threads (0: leave BLAS as configured)."""
    import contextlib

    if threads <= 0:
        return contextlib.nullcontext()
    return _blas().limit(limits=threads, user_api="blas")


def _blas_threads() -> int:
    """The BLAS's current thread count (1 when no BLAS reports one)."""
    return max([int(lib.get("num_threads", 1)) for lib in _blas().info() if lib.get("user_api") == "blas"] or [1])


class Engine:
    """A model ready to run: its spec and a weight source. Create with from_hf or from_gguf."""

    def __init__(self, source: WeightSource, threads: int = 0) -> None:
        self.source = source
        self.spec: ModelSpec = source.spec
        self.threads = threads
        self._rope_cache: dict[tuple[int, bool], tuple[np.ndarray, np.ndarray]] = {}
        self._mask_cache: dict[tuple[int, bool], np.ndarray] = {}
        self._pool: ThreadPoolExecutor | None = None     # attention's workers, made on first use

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, folder: Path, *, threads: int = 0) -> "Engine":
        return cls(HFWeights.open(Path(folder)), threads)

    @classmethod
    def from_gguf(cls, path: Path, *, source: Path, threads: int = 0) -> "Engine":
        return cls(GGUFWeights.open(Path(path), Path(source)), threads)

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab

    @property
    def n_ctx_train(self) -> int:
        return self.spec.n_ctx_train

    @property
    def is_encoder(self) -> bool:
        return self.spec.is_encoder

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self.source.close()

    def _workers(self) -> ThreadPoolExecutor:
        if self._pool is None:
            n = self.threads if self.threads > 0 else _blas_threads()
            self._pool = ThreadPoolExecutor(max_workers=max(1, n), thread_name_prefix="quantcli-attn")
        return self._pool

    # -- public passes ----------------------------------------------------------------------------------
    def run(self, tokens: np.ndarray, *, capture: Capture | None = None, logits: bool = True, logits_from: int = 0,
            attention_mask: np.ndarray | None = None, token_types: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """Run every block over all sequences now; return an iterator of per-sequence outputs.

        The blocks (and every capture call for them) run before this returns. The iterator yields, per sequence
        and in order, float32 logits [ctx, vocab] for a decoder, or the last hidden states [ctx, hidden] for an
        encoder or a bare transformer without an LM head (Qwen2Model; after its final norm). The output head's input is captured as each sequence's logits are produced; with logits=False
        it is captured here and the iterator is empty.

        logits_from=p yields the logits of positions p..ctx-1 only ([ctx - p, vocab]): perplexity scores the second
        half of each chunk, and the LM head is a large share of a pass (a 32k or 49k vocabulary).
        """
        tokens = self._check_tokens(tokens)
        if not 0 <= logits_from < tokens.shape[1]:
            raise ValueError(f"logits_from={logits_from} is outside the {tokens.shape[1]} positions")
        mask = self._check_mask(attention_mask, tokens.shape)
        with _threads_limit(self.threads):
            x = self._forward(tokens, capture, mask, token_types)
        head = self.spec.output_tensor()
        if head is None:  # encoders and bare transformers: the last hidden states (after the final norm, if any)
            if self.spec.numerics.causal:
                norm = self.source.load(self.spec.tensor("output_norm"))
                return iter([ops.rms_norm(x[s], norm, self.spec.norm_eps) for s in range(x.shape[0])])
            return iter(list(x))
        name = self.source.name(head)
        if not logits:
            if capture is not None:
                norm = self.source.load(self.spec.tensor("output_norm"))
                for s in range(x.shape[0]):
                    capture(name, ops.rms_norm(x[s], norm, self.spec.norm_eps))
            return iter(())
        return self._logits(x[:, logits_from:], head, name, capture)

    def embed(self, tokens: np.ndarray, attention_mask: np.ndarray | None = None,
              token_types: np.ndarray | None = None) -> np.ndarray:
        """Pooled sentence embeddings [n_seq, hidden] with the model's sentence-transformers pooling (mean over
        unmasked tokens when the folder declares none), L2-normalised when the folder has a Normalize module."""
        tokens = self._check_tokens(tokens)
        mask = self._check_mask(attention_mask, tokens.shape)
        with _threads_limit(self.threads):
            states = self._forward(tokens, None, mask, token_types)
            if self.spec.numerics.causal:
                states = ops.rms_norm(states, self.source.load(self.spec.tensor("output_norm")), self.spec.norm_eps)
        m = np.ones(tokens.shape, dtype=F32) if mask is None else mask.astype(F32)
        pooling = self.spec.pooling or "mean"
        if pooling == "mean":
            pooled = (states * m[..., None]).sum(axis=1) / np.maximum(m.sum(axis=1, keepdims=True), F32(1e-9))
        elif pooling == "cls":
            pooled = states[:, 0]
        else:
            last = np.maximum(m.sum(axis=1).astype(np.int64) - 1, 0)
            pooled = states[np.arange(len(states)), last]
        pooled = pooled.astype(F32)
        if self.spec.normalize:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), F32(1e-12))
        return pooled

    # -- checks -----------------------------------------------------------------------------------------
    def _check_tokens(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] == 0 or not np.issubdtype(tokens.dtype, np.integer):
            raise InputError(f"tokens must be a 2-D integer array (n_seq, ctx); got {tokens.dtype} {tokens.shape}.",
                             hint="Pass token ids shaped (sequences, positions).")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.spec.vocab):
            raise InputError(f"token ids must lie in [0, {self.spec.vocab}); got {tokens.min()}..{tokens.max()}.",
                             hint="Tokenize with this model's own tokenizer.")
        if self.spec.rope is None and tokens.shape[1] > self.spec.n_ctx_train:
            raise InputError(f"{tokens.shape[1]} positions exceed the model's {self.spec.n_ctx_train} learned ones.",
                             hint=f"Use sequences of at most {self.spec.n_ctx_train} tokens.")
        return tokens.astype(np.int64, copy=False)

    def _check_mask(self, mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
        if mask is None:
            return None
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise InputError(f"attention_mask has shape {mask.shape}, the tokens {shape}.",
                             hint="Give one 0/1 entry per token.")
        return mask.astype(bool)

    # -- the pass -----------------------------------------------------------------------------------------
    def blocks(self, tokens: np.ndarray, *, attention_mask: np.ndarray | None = None,
               token_types: np.ndarray | None = None) -> Iterator["BlockStep"]:
        """Walk the blocks one at a time over all sequences, yielding a BlockStep for each.

        This is the loop GPTQ and AWQ drive: a step exposes the block's inputs and weights, runs the block on
        any inputs with any candidate weights, and accepts replacement weights. When the caller asks for the
        next step, the block is run over all inputs with its current (possibly replaced) weights, and those
        outputs feed the next block, so later blocks see the errors of the quantized earlier ones.
        """
        tokens = self._check_tokens(tokens)
        mask = self._check_mask(attention_mask, tokens.shape)
        with _threads_limit(self.threads):
            x = self._embed_tokens(tokens, token_types)
        for i in range(self.spec.n_layer):
            step = BlockStep(self, i, _Block(self.source, self.spec.block(i)), x, mask)
            yield step
            if i + 1 == self.spec.n_layer:
                break       # nothing reads the last block's outputs
            x = step.output()
            del step

    def _forward(self, tokens: np.ndarray, capture: Capture | None, mask: np.ndarray | None,
                 token_types: np.ndarray | None) -> np.ndarray:
        x = self._embed_tokens(tokens, token_types)
        for i in range(self.spec.n_layer):
            x = self._run_block(i, _Block(self.source, self.spec.block(i)), x, capture, mask, out=x)
        return x

    def _run_block(self, i: int, block: _Block, x: np.ndarray, capture: Capture | None, mask: np.ndarray | None,
                   out: np.ndarray | None = None) -> np.ndarray:
        """Block i over hidden states [n_seq, ctx, hidden], chunk after chunk; `out` may be `x` itself."""
        out = np.empty_like(x) if out is None else out
        for stages in self._chunk_stages(i, block, x, mask, out):
            for group, h in stages:
                if capture is not None:
                    for name in block.group_names(group):
                        capture(name, h)
        return out

    def _chunk_stages(self, i: int, block: _Block, x: np.ndarray, mask: np.ndarray | None,
                      out: np.ndarray) -> list[Stages]:
        """One generator per chunk of about CHUNK_TOKENS tokens (whole sequences); each writes its chunk of `out`
        when it finishes. A chunk reads its slice of `x` before it writes that slice of `out`, so they may alias."""
        n_seq, ctx, _ = x.shape
        group = max(1, CHUNK_TOKENS // ctx)
        gens: list[Stages] = []
        for s0 in range(0, n_seq, group):
            chunk, dest = x[s0:s0 + group], out[s0:s0 + group]
            if self.spec.post_norm_block:
                chunk_mask = None if mask is None else mask[s0:s0 + group]
                gens.append(self._encoder_block(i, block, chunk, dest, chunk_mask))
            else:
                gens.append(self._decoder_block(i, block, chunk, dest))
        return gens

    def _embed_tokens(self, tokens: np.ndarray, token_types: np.ndarray | None) -> np.ndarray:
        spec = self.spec
        uniq, inverse = np.unique(tokens, return_inverse=True)
        table = self.source.rows(spec.tensor("tok_embd"), uniq)
        x = table[inverse.reshape(-1)].reshape(*tokens.shape, spec.hidden)
        if spec.numerics.embed_scale == "sqrt_hidden":
            x = x * F32(math.sqrt(spec.hidden))  # gemma: sqrt(hidden) rounded to float32, as transformers
        if spec.rope is None:  # learned positions and token types, then a LayerNorm (bert)
            types = np.zeros(tokens.shape, dtype=np.int64) if token_types is None else np.asarray(token_types)
            if types.shape != tokens.shape or types.min() < 0 or types.max() >= spec.n_token_types:
                raise InputError(f"token_types must be {tokens.shape} ids below {spec.n_token_types}.",
                                 hint="Pass one token-type id per token, or none for all zeros.")
            x = x + self.source.load(spec.tensor("type_embd"))[types]
            x = x + self.source.load(spec.tensor("pos_embd"))[: tokens.shape[1]][None]
            x = ops.layer_norm(x, self.source.load(spec.tensor("embd_norm")),
                               self.source.load(spec.tensor("embd_norm_bias")), spec.norm_eps)
        return np.ascontiguousarray(x, dtype=F32)

    def _linear(self, block: _Block, role: str, x: np.ndarray) -> np.ndarray:
        y = x @ block.weight(role).T
        bias = block.get(role + "_bias")
        if bias is not None:
            y += bias
        return y

    def _norm(self, x: np.ndarray, block: _Block, role: str) -> np.ndarray:
        if self.spec.numerics.norm == "layer":
            return ops.layer_norm(x, block.weight(role), block.weight(role + "_bias"), self.spec.norm_eps)
        return ops.rms_norm(x, block.weight(role), self.spec.norm_eps)

    def _rope(self, ctx: int, local: bool) -> tuple[np.ndarray, np.ndarray]:
        key = (ctx, local)
        if key not in self._rope_cache:
            rope = self.spec.rope_local if local and self.spec.rope_local is not None else self.spec.rope
            assert rope is not None
            self._rope_cache[key] = ops.rope_tables(rope, ctx)
        return self._rope_cache[key]

    def _qkv(self, block: _Block, h: np.ndarray) -> tuple[np.ndarray, ...]:
        spec = self.spec
        q_rows, kv_rows = spec.n_head * spec.head_dim, spec.n_head_kv * spec.head_dim
        if spec.fused_qkv:
            qkv = self._linear(block, "attn_qkv", h)
            return qkv[:, :q_rows], qkv[:, q_rows:q_rows + kv_rows], qkv[:, q_rows + kv_rows:]
        return self._linear(block, "attn_q", h), self._linear(block, "attn_k", h), self._linear(block, "attn_v", h)

    def _attention(self, i: int, block: _Block, h: np.ndarray, n_seq: int, ctx: int,
                   key_mask: np.ndarray | None) -> np.ndarray:
        """Self-attention of a chunk: h [n_seq * ctx, hidden] -> the output projection's input [n_seq * ctx, q_rows]."""
        spec = self.spec
        nh, nkv, hd = spec.n_head, spec.n_head_kv, spec.head_dim
        group = nh // nkv
        q, k, v = self._qkv(block, h)
        q = q.reshape(n_seq, ctx, nh, hd)
        k = k.reshape(n_seq, ctx, nkv, hd)
        v = v.reshape(n_seq, ctx, nkv, hd)
        if spec.numerics.qk_norm:
            q = ops.rms_norm(q, block.weight("attn_q_norm"), spec.norm_eps)
            k = ops.rms_norm(k, block.weight("attn_k_norm"), spec.norm_eps)
        if spec.rope is not None:
            cos, sin = self._rope(ctx, spec.sliding_layers[i])
            q, k = ops.apply_rope(q, cos, sin), ops.apply_rope(k, cos, sin)
        allowed = self._allowed(i, ctx)
        out = np.empty((n_seq, ctx, nkv, group, hd), dtype=F32)
        # queries grouped by their kv head: one batched matmul per sequence covers every head of a group
        qg = q.reshape(n_seq, ctx, nkv, group, hd).transpose(0, 2, 3, 1, 4)       # s, kv, group, ctx, hd
        kt = k.transpose(0, 2, 3, 1)                                               # s, kv, hd, ctx
        vv = v.transpose(0, 2, 1, 3)                                               # s, kv, ctx, hd
        causal = spec.numerics.causal
        window = spec.sliding_window if spec.sliding_layers[i] else None
        # causal models take query rows in blocks and skip the key columns a block cannot see (those after its
        # last row, and before its first row's window), which halves the work at long contexts
        rows = min(QUERY_BLOCK if causal else ctx, max(1, SCORE_ROWS // max(1, nh)))
        scale = F32(spec.attn_scale)

        def one(s: int, r0: int) -> None:
            """Query rows r0.. of sequence s, every head: out[s, r0:r1] (tasks write disjoint rows)."""
            # additive mask: 0 where attending is allowed, -inf elsewhere (every row keeps its own position)
            bias = allowed if key_mask is None else allowed + np.where(key_mask[s], F32(0), F32(-np.inf))[None, :]
            r1 = min(ctx, r0 + rows)
            n = r1 - r0
            k0 = max(0, r0 - window + 1) if window is not None else 0
            k1 = r1 if causal else ctx
            # (kv, group * rows, hd) @ (kv, hd, keys): equal batch dims, so numpy hands each slice to BLAS
            qs = np.ascontiguousarray(qg[s, :, :, r0:r1]).reshape(nkv, group * n, hd)
            scores = (qs @ kt[s, :, :, k0:k1]).reshape(nkv, group, n, k1 - k0)
            scores *= scale
            if spec.attn_softcap is not None:
                scores = ops.softcap(scores, spec.attn_softcap)
            scores += bias[r0:r1, k0:k1]
            ops.softmax_inplace(scores)
            o = scores.reshape(nkv, group * n, k1 - k0) @ vv[s, :, k0:k1]          # kv, group * rows, hd
            out[s, r0:r1] = o.reshape(nkv, group, n, hd).transpose(2, 0, 1, 3)

        # Each task's matmuls are small (a head's rows x keys): BLAS's own threads cost more in hand-offs than they
        # gain, and slow down by orders of magnitude when the machine is busy. So BLAS runs them on one thread and
        # the tasks (sequence, query block) share the engine's workers; numpy releases the GIL inside them.
        kt, vv = np.ascontiguousarray(kt), np.ascontiguousarray(vv)
        tasks = [(s, r0) for s in range(n_seq) for r0 in range(0, ctx, rows)]
        with _threads_limit(1):
            for _ in self._workers().map(lambda t: one(*t), tasks):
                pass
        return out.reshape(n_seq * ctx, nh * hd)

    def _allowed(self, i: int, ctx: int) -> np.ndarray:
        """(ctx, ctx) float32: 0 where query position r may attend to key position c in block i, else -inf."""
        key = (ctx, self.spec.sliding_layers[i])
        if key not in self._mask_cache:
            if not self.spec.numerics.causal:
                self._mask_cache[key] = np.zeros((ctx, ctx), dtype=F32)
            else:
                r = np.arange(ctx)[:, None]
                c = np.arange(ctx)[None, :]
                allowed = c <= r
                if self.spec.sliding_layers[i] and self.spec.sliding_window is not None:
                    allowed &= (r - c) < self.spec.sliding_window
                self._mask_cache[key] = np.where(allowed, F32(0), F32(-np.inf)).astype(F32)
        return self._mask_cache[key]

    def _ffn_inner(self, block: _Block, h: np.ndarray) -> np.ndarray:
        """The MLP up to the down projection's input [tokens, ffn] float32."""
        act = ops.ACTIVATIONS[self.spec.numerics.activation]
        if self.spec.fused_gate_up:
            gate_up = self._linear(block, "ffn_gate_up", h)
            gate, up = gate_up[:, :self.spec.ffn], gate_up[:, self.spec.ffn:]
            inner = act(gate)
            inner *= up
        elif self.spec.numerics.gated_ffn:
            inner = act(self._linear(block, "ffn_gate", h))
            inner *= self._linear(block, "ffn_up", h)
        else:
            inner = act(self._linear(block, "ffn_up", h))
        return np.ascontiguousarray(inner, dtype=F32)

    # The block functions. Each pauses before every group of linears with (group, its input) and drops what it no
    # longer needs before pausing, since BlockStep.walk keeps every chunk's generator suspended at once.
    def _decoder_block(self, i: int, block: _Block, x: np.ndarray, out: np.ndarray) -> Stages:
        spec = self.spec
        n_seq, ctx, hidden = x.shape
        flat = x.reshape(n_seq * ctx, hidden)
        res = out.reshape(n_seq * ctx, hidden)      # the residual stream lives in the output rows
        h = self._norm(flat, block, "attn_norm")
        yield 0, h
        a = self._attention(i, block, h, n_seq, ctx, None)
        del h
        yield 1, a
        a = self._linear(block, "attn_out", a)
        if spec.numerics.post_norms:
            a = self._norm(a, block, "post_attn_norm")
        np.add(flat, a, out=res)
        del a, flat
        h = self._norm(res, block, "ffn_norm")
        yield 2, h
        inner = self._ffn_inner(block, h)
        del h
        yield 3, inner
        f = self._linear(block, "ffn_down", inner)
        del inner
        if spec.numerics.post_norms:
            f = self._norm(f, block, "post_ffn_norm")
        res += f

    def _encoder_block(self, i: int, block: _Block, x: np.ndarray, out: np.ndarray,
                       mask: np.ndarray | None) -> Stages:
        n_seq, ctx, hidden = x.shape
        flat = x.reshape(n_seq * ctx, hidden)
        yield 0, flat
        a = self._attention(i, block, flat, n_seq, ctx, mask)
        yield 1, a
        a = self._linear(block, "attn_out", a)
        flat = self._norm(a + flat, block, "attn_out_norm")
        del a
        yield 2, flat
        inner = self._ffn_inner(block, flat)
        yield 3, inner
        f = self._linear(block, "ffn_down", inner)
        del inner
        out[...] = self._norm(f + flat, block, "layer_out_norm").reshape(n_seq, ctx, hidden)

    def _logits(self, x: np.ndarray, head: ModelTensor, name: str, capture: Capture | None) -> Iterator[np.ndarray]:
        """Final norm, then logits per sequence (one sequence's logits in memory at a time)."""
        spec = self.spec
        with _threads_limit(self.threads):
            norm = self.source.load(spec.tensor("output_norm"))
            weight = self.source.load(head)
        for s in range(x.shape[0]):
            with _threads_limit(self.threads):
                h = ops.rms_norm(x[s], norm, spec.norm_eps)
                if capture is not None:
                    capture(name, h)
                out = h @ weight.T
                if spec.final_softcap is not None:
                    out = ops.softcap(out, spec.final_softcap)
            yield np.ascontiguousarray(out, dtype=F32)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal float32 arrays bit for bit (so -0.0 differs from 0.0 and a NaN equals itself)."""
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


class BlockStep:
    """Block `index` of a layer-sequential walk (Engine.blocks): its inputs, its weights, and a way to run it.

    `inputs` are the hidden states entering the block for every sequence, [n_seq, ctx, hidden] float32 (read
    only). Weights are keyed by the source checkpoint's tensor names (the names `capture` reports); `linears`
    lists the block's matmul weights in the order the forward pass uses them. `walk` runs the block once over
    every sequence, pausing at each group of linears; `output` gives the outputs the next block starts from.
    """

    def __init__(self, engine: Engine, index: int, block: _Block, inputs: np.ndarray,
                 mask: np.ndarray | None) -> None:
        self.index = index
        self.inputs = inputs
        self._engine, self._block, self._mask = engine, block, mask
        self._role = {name: role for role, name in block.names.items()}
        self.inputs.flags.writeable = False
        # the last walk: the roles its block functions read (None before any walk), and its outputs while they
        # still equal what the current weights give
        self._walk_reads: set[str] | None = None
        self._walk_out: np.ndarray | None = None
        self._stale = False

    @property
    def spec(self) -> ModelSpec:
        """The model description (which norms precede which linears, GQA, fused projections, ...)."""
        return self._engine.spec

    @property
    def names(self) -> dict[str, str]:
        """Role ("attn_q", "ffn_down", "attn_norm", ...) -> tensor name, for every tensor of the block."""
        return dict(self._block.names)

    @property
    def linears(self) -> list[str]:
        """Names of the block's matmul weights, in forward order."""
        order = ("attn_qkv", "attn_q", "attn_k", "attn_v", "attn_out", "ffn_gate_up", "ffn_gate", "ffn_up",
                 "ffn_down")
        return [self._block.names[r] for r in order if r in self._block.names]

    def role(self, name: str) -> str:
        return self._role[name]

    def weight(self, name: str) -> np.ndarray:
        """The block's current float32 weight `name` (HF layout; norms as the factor the pass multiplies by)."""
        return self._block.w[self._role[name]]

    def set_weight(self, name: str, value: np.ndarray) -> None:
        """Replace a weight for every later `forward` of this step and for the outputs passed to the next block.

        During or after a `walk`, replacing a weight the walk has already used with different bits drops the
        walk's outputs (`output` then runs the block again); the walk's later captures, if it is still running,
        saw the old value.
        """
        role = self._role[name]
        old = self._block.w[role]
        value = np.asarray(value, dtype=F32)
        if value.shape != old.shape:
            raise ValueError(f"{name}: replacement has shape {value.shape}, the weight {old.shape}")
        value = np.ascontiguousarray(value)
        if self._walk_reads is not None and role in self._walk_reads and not _same_bits(old, value):
            self._walk_out, self._stale = None, True      # until the next walk
        self._block.w[role] = value

    def walk(self, capture: Capture | None = None,
             on_group: Callable[[list[str]], None] | None = None) -> np.ndarray:
        """Run the block over every sequence once, stage by stage; returns its outputs [n_seq, ctx, hidden].

        The sequences go in the chunks `forward` uses. Every chunk runs up to the input of a group of linears
        (GROUPS: q/k/v, o, gate/up, down) before any chunk goes on: `capture(name, x)` then receives each chunk's
        input for each linear of the group, in chunk order, and `on_group(names)` may `set_weight` those linears
        (or any later weight); every chunk then continues with the weights as they are. The captures and outputs
        are bit for bit those of calling `forward(capture=...)` once per group with the earlier groups' weights
        replaced. The outputs are kept for `output` unless a weight the walk already used is replaced afterwards.

        Memory: besides `inputs` and the outputs, the input of the group being processed for every sequence
        (at the down projection: [n_seq * ctx, ffn] float32) - see docs/engine.md.
        """
        engine, block = self._engine, self._block
        out = np.empty_like(self.inputs)
        self._walk_reads, self._walk_out, self._stale = set(), None, False
        with _threads_limit(engine.threads):
            gens = engine._chunk_stages(self.index, block, self.inputs, self._mask, out)
            pending = [self._advance(g) for g in gens]
            while pending and pending[0] is not None:
                group = pending[0][0]
                names = block.group_names(group)
                for stage in pending:
                    assert stage is not None and stage[0] == group, "the chunks of a block pause at the same groups"
                    if capture is not None:
                        for name in names:
                            capture(name, stage[1])
                if on_group is not None and names:
                    on_group(names)
                for c, g in enumerate(gens):
                    pending[c] = None                          # let the chunk drop this group's input
                    pending[c] = self._advance(g)
        if not self._stale:
            self._walk_out = out
        return out

    def _advance(self, gen: Stages) -> tuple[int, np.ndarray] | None:
        """Run one chunk's generator to its next pause (None: the chunk is done), recording the weights it reads."""
        self._block.reads = self._walk_reads
        try:
            return next(gen)
        except StopIteration:
            return None
        finally:
            self._block.reads = None

    def attention(self, h: np.ndarray, *, weights: Mapping[str, np.ndarray] | None = None,
                  sequences: slice | None = None) -> np.ndarray:
        """The attention sub-layer on `h`, the q/k/v linears' input for whole sequences [n_seq, ctx, hidden]: the
        output projection's input [n_seq * ctx, n_head * head_dim]. `weights` (by tensor name) replace the step's
        for this call only; `sequences` says which sequences `h` holds, for a padding mask."""
        n_seq, ctx, hidden = h.shape
        mask = None if self._mask is None else self._mask[sequences if sequences is not None else slice(None)]
        block = self._with(weights)
        with _threads_limit(self._engine.threads):
            return self._engine._attention(self.index, block, np.asarray(h, dtype=F32).reshape(n_seq * ctx, hidden),
                                           n_seq, ctx, mask)

    def mlp(self, h: np.ndarray, *, weights: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """The MLP up to the down projection's input, from the gate/up linears' input h [tokens, hidden]: [tokens,
        ffn]. `weights` (by tensor name) replace the step's for this call only."""
        block = self._with(weights)
        with _threads_limit(self._engine.threads):
            return self._engine._ffn_inner(block, np.asarray(h, dtype=F32).reshape(-1, h.shape[-1]))

    def _with(self, weights: Mapping[str, np.ndarray] | None) -> _Block:
        if not weights:
            return self._block
        return self._block.overridden({self._role[n]: np.ascontiguousarray(w, dtype=F32) for n, w in weights.items()})

    def output(self) -> np.ndarray:
        """The block's outputs for every sequence with the current weights: the last walk's, when no weight it
        used has changed since, else a fresh `forward`."""
        if self._walk_out is not None:
            return self._walk_out
        return self.forward()

    def forward(self, x: np.ndarray | None = None, *, capture: Capture | None = None,
                sequences: slice | None = None) -> np.ndarray:
        """The block's output for `x` (default: its inputs, or those of `sequences`), with the current weights."""
        if x is None:
            x = self.inputs if sequences is None else self.inputs[sequences]
        mask = self._mask if self._mask is None or sequences is None else self._mask[sequences]
        with _threads_limit(self._engine.threads):
            return self._engine._run_block(self.index, self._block, np.asarray(x, dtype=F32), capture, mask)
