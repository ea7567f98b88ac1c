"""One float32 forward pass for every architecture quantcli converts, driven by the ModelSpec.

The pass is layer-sequential: the hidden states of every sequence ([n_seq, ctx, hidden] float32) go through
block i before any goes through block i + 1, and a block's weights are read when the block starts and dropped
when it ends. Peak memory is therefore one block's weights, the hidden states of all sequences, and the working
arrays of one chunk of sequences (see docs/engine.md for the bound). The loop is where GPTQ and AWQ hook in:
`capture(name, x)` sees the input of every linear layer as it is used.

Families differ only through the spec's data (norm kind, activation, biases, fused projections, q/k norms,
post norms, rope kind, soft-capping, sliding windows, encoder or decoder); there is one block function for all
the pre-norm decoders and one for BERT's post-norm encoder.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..models.spec import ModelSpec, ModelTensor
from . import ops
from .weights import GGUFWeights, HFWeights, WeightSource

Capture = Callable[[str, np.ndarray], None]
F32 = np.float32
# Tokens per chunk of sequences sent through a block at once: large enough for efficient BLAS calls, small
# enough that the FFN's intermediate arrays (chunk x ffn floats, a few of them) stay modest.
CHUNK_TOKENS = 2048
# Attention scores of one sequence are computed for at most this many query rows x heads at a time.
SCORE_ROWS = 16384
# Query rows per block in causal attention (each block only multiplies the keys it can see).
QUERY_BLOCK = 128


class _Block:
    """One block's weights by role, float32, loaded on entry."""

    def __init__(self, source: WeightSource, tensors: dict[str, ModelTensor]) -> None:
        self.w = {role: source.load(t) for role, t in tensors.items()}
        self.names = {role: source.name(t) for role, t in tensors.items()}

    def get(self, role: str) -> np.ndarray | None:
        return self.w.get(role)


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
            x = step.forward()
            del step

    def _forward(self, tokens: np.ndarray, capture: Capture | None, mask: np.ndarray | None,
                 token_types: np.ndarray | None) -> np.ndarray:
        x = self._embed_tokens(tokens, token_types)
        for i in range(self.spec.n_layer):
            x = self._run_block(i, _Block(self.source, self.spec.block(i)), x, capture, mask, out=x)
        return x

    def _run_block(self, i: int, block: _Block, x: np.ndarray, capture: Capture | None, mask: np.ndarray | None,
                   out: np.ndarray | None = None) -> np.ndarray:
        """Block i over hidden states [n_seq, ctx, hidden], in chunks of sequences; `out` may be `x` itself."""
        n_seq, ctx, _ = x.shape
        out = np.empty_like(x) if out is None else out
        group = max(1, CHUNK_TOKENS // ctx)
        for s0 in range(0, n_seq, group):
            chunk = x[s0:s0 + group]
            if self.spec.post_norm_block:
                chunk_mask = None if mask is None else mask[s0:s0 + group]
                out[s0:s0 + group] = self._encoder_block(i, block, chunk, capture, chunk_mask)
            else:
                out[s0:s0 + group] = self._decoder_block(i, block, chunk, capture)
        return out

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

    def _linear(self, block: _Block, role: str, x: np.ndarray, capture: Capture | None) -> np.ndarray:
        if capture is not None:
            capture(block.names[role], x)
        y = x @ block.w[role].T
        bias = block.get(role + "_bias")
        if bias is not None:
            y += bias
        return y

    def _norm(self, x: np.ndarray, block: _Block, role: str) -> np.ndarray:
        if self.spec.numerics.norm == "layer":
            return ops.layer_norm(x, block.w[role], block.w[role + "_bias"], self.spec.norm_eps)
        return ops.rms_norm(x, block.w[role], self.spec.norm_eps)

    def _rope(self, ctx: int, local: bool) -> tuple[np.ndarray, np.ndarray]:
        key = (ctx, local)
        if key not in self._rope_cache:
            rope = self.spec.rope_local if local and self.spec.rope_local is not None else self.spec.rope
            assert rope is not None
            self._rope_cache[key] = ops.rope_tables(rope, ctx)
        return self._rope_cache[key]

    def _qkv(self, block: _Block, h: np.ndarray, capture: Capture | None) -> tuple[np.ndarray, ...]:
        spec = self.spec
        q_rows, kv_rows = spec.n_head * spec.head_dim, spec.n_head_kv * spec.head_dim
        if spec.fused_qkv:
            qkv = self._linear(block, "attn_qkv", h, capture)
            return qkv[:, :q_rows], qkv[:, q_rows:q_rows + kv_rows], qkv[:, q_rows + kv_rows:]
        return (self._linear(block, "attn_q", h, capture), self._linear(block, "attn_k", h, capture),
                self._linear(block, "attn_v", h, capture))

    def _attention(self, i: int, block: _Block, h: np.ndarray, n_seq: int, ctx: int, capture: Capture | None,
                   key_mask: np.ndarray | None) -> np.ndarray:
        """Self-attention of a chunk: h [n_seq * ctx, hidden] -> the output projection's input [n_seq * ctx, q_rows]."""
        spec = self.spec
        nh, nkv, hd = spec.n_head, spec.n_head_kv, spec.head_dim
        group = nh // nkv
        q, k, v = self._qkv(block, h, capture)
        q = q.reshape(n_seq, ctx, nh, hd)
        k = k.reshape(n_seq, ctx, nkv, hd)
        v = v.reshape(n_seq, ctx, nkv, hd)
        if spec.numerics.qk_norm:
            q = ops.rms_norm(q, block.w["attn_q_norm"], spec.norm_eps)
            k = ops.rms_norm(k, block.w["attn_k_norm"], spec.norm_eps)
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

    def _ffn(self, block: _Block, h: np.ndarray, capture: Capture | None) -> np.ndarray:
        act = ops.ACTIVATIONS[self.spec.numerics.activation]
        if self.spec.fused_gate_up:
            gate_up = self._linear(block, "ffn_gate_up", h, capture)
            gate, up = gate_up[:, :self.spec.ffn], gate_up[:, self.spec.ffn:]
            inner = act(gate)
            inner *= up
        elif self.spec.numerics.gated_ffn:
            inner = act(self._linear(block, "ffn_gate", h, capture))
            inner *= self._linear(block, "ffn_up", h, capture)
        else:
            inner = act(self._linear(block, "ffn_up", h, capture))
        return self._linear(block, "ffn_down", np.ascontiguousarray(inner, dtype=F32), capture)

    def _decoder_block(self, i: int, block: _Block, x: np.ndarray, capture: Capture | None) -> np.ndarray:
        spec = self.spec
        n_seq, ctx, hidden = x.shape
        flat = x.reshape(n_seq * ctx, hidden)
        h = self._norm(flat, block, "attn_norm")
        a = self._attention(i, block, h, n_seq, ctx, capture, None)
        a = self._linear(block, "attn_out", a, capture)
        if spec.numerics.post_norms:
            a = self._norm(a, block, "post_attn_norm")
        flat = flat + a
        f = self._ffn(block, self._norm(flat, block, "ffn_norm"), capture)
        if spec.numerics.post_norms:
            f = self._norm(f, block, "post_ffn_norm")
        return (flat + f).reshape(n_seq, ctx, hidden)

    def _encoder_block(self, i: int, block: _Block, x: np.ndarray, capture: Capture | None,
                       mask: np.ndarray | None) -> np.ndarray:
        n_seq, ctx, hidden = x.shape
        flat = x.reshape(n_seq * ctx, hidden)
        a = self._attention(i, block, flat, n_seq, ctx, capture, mask)
        a = self._linear(block, "attn_out", a, capture)
        flat = self._norm(a + flat, block, "attn_out_norm")
        f = self._ffn(block, flat, capture)
        return self._norm(f + flat, block, "layer_out_norm").reshape(n_seq, ctx, hidden)

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


class BlockStep:
    """Block `index` of a layer-sequential walk (Engine.blocks): its inputs, its weights, and a way to run it.

    `inputs` are the hidden states entering the block for every sequence, [n_seq, ctx, hidden] float32 (read
    only). Weights are keyed by the source checkpoint's tensor names (the names `capture` reports); `linears`
    lists the block's matmul weights in the order the forward pass uses them.
    """

    def __init__(self, engine: Engine, index: int, block: _Block, inputs: np.ndarray,
                 mask: np.ndarray | None) -> None:
        self.index = index
        self.inputs = inputs
        self._engine, self._block, self._mask = engine, block, mask
        self._role = {name: role for role, name in block.names.items()}
        self.inputs.flags.writeable = False

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
        """Replace a weight for every later `forward` of this step and for the outputs passed to the next block."""
        old = self.weight(name)
        value = np.asarray(value, dtype=F32)
        if value.shape != old.shape:
            raise ValueError(f"{name}: replacement has shape {value.shape}, the weight {old.shape}")
        self._block.w[self._role[name]] = np.ascontiguousarray(value)

    def forward(self, x: np.ndarray | None = None, *, capture: Capture | None = None,
                sequences: slice | None = None) -> np.ndarray:
        """The block's output for `x` (default: its inputs, or those of `sequences`), with the current weights."""
        if x is None:
            x = self.inputs if sequences is None else self.inputs[sequences]
        mask = self._mask if self._mask is None or sequences is None else self._mask[sequences]
        with _threads_limit(self._engine.threads):
            return self._engine._run_block(self.index, self._block, np.asarray(x, dtype=F32), capture, mask)
