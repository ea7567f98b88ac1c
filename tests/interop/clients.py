"""The two real clients the interop tests compare: llama.cpp (llama-cpp-python) on our GGUF files and
transformers (torch, float32) on the source checkpoint.

Both sides get the same token ids (from the model's own HF tokenizer), so a difference is the model's, never
the tokenizer's; the MiniLM test is the one place that lets llama.cpp tokenize, as a user would.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tests.fixtures.threads import LLAMA_THREADS

N_CTX = 128          # llama.cpp rounds this up (to 256); results are compared by position


def load_llama(path: Path, **kwargs: Any) -> Any:
    """llama.cpp with a float32 KV cache.

    The default cache stores K and V as float16; that rounding would be charged to our file. With float32 the
    only differences left in an F32 file are summation order and ggml's own approximations (its GELU table).
    """
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=N_CTX, verbose=False, **LLAMA_THREADS,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, **kwargs)


def llama_logits(path: Path, ids: Sequence[int]) -> np.ndarray:
    """Logits at every position, shape (len(ids), vocab)."""
    llm = load_llama(path, logits_all=True)
    try:
        llm.eval(list(ids))
        return np.array(llm.scores[:len(ids)], dtype=np.float32)
    finally:
        llm.close()


def llama_greedy(path: Path, prompt: Sequence[int], n_new: int) -> list[int]:
    """n_new tokens, each the argmax of the logits (no sampler, no stop token)."""
    llm = load_llama(path, logits_all=True)
    try:
        llm.eval(list(prompt))
        out: list[int] = []
        for _ in range(n_new):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(token)
            llm.eval([token])
        return out
    finally:
        llm.close()


def llama_token_states(path: Path, ids: Sequence[int]) -> np.ndarray:
    """An encoder's last hidden state for every token, shape (len(ids), n_embd), pooling switched off."""
    import llama_cpp

    llm = load_llama(path, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE)
    batch = llama_cpp.llama_batch_init(len(ids), 0, 1)
    try:
        for i, token in enumerate(ids):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, i, 1, True
            batch.seq_id[i][0] = 0
        batch.n_tokens = len(ids)
        if llama_cpp.llama_decode(llm.ctx, batch) != 0:
            raise RuntimeError(f"llama_decode failed on {path}")
        n_embd = llm.n_embd()
        flat = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings(llm.ctx), shape=(len(ids) * n_embd,))
        return flat.reshape(len(ids), n_embd).copy()
    finally:
        llama_cpp.llama_batch_free(batch)
        llm.close()


def llama_sentence_embeddings(path: Path, sentences: Sequence[str]) -> np.ndarray:
    """The file's own pooling (from its metadata) over llama.cpp's own tokenization, L2-normalised."""
    llm = load_llama(path, embedding=True)
    try:
        return np.array(llm.embed(list(sentences), normalize=True), dtype=np.float32)
    finally:
        llm.close()


def hf_tokenizer(folder: Path) -> Any:
    import transformers

    return transformers.AutoTokenizer.from_pretrained(folder)


def hf_logits(folder: Path, ids: Sequence[int]) -> np.ndarray:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].numpy()


def hf_greedy(folder: Path, prompt: Sequence[int], n_new: int) -> list[int]:
    """n_new argmax tokens with a KV cache; no generation config, so no stop token and no logit processors."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    cache = transformers.DynamicCache(config=model.config)
    step, out = torch.tensor([list(prompt)]), []
    with torch.no_grad():
        for _ in range(n_new):
            logits = model(input_ids=step, cache=cache, use_cache=True).logits
            out.append(int(logits[0, -1].argmax()))
            step = torch.tensor([[out[-1]]])
    return out


def hf_token_states(folder: Path, ids: Sequence[int]) -> np.ndarray:
    import torch
    import transformers

    model = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).last_hidden_state[0].numpy()


def hf_sentence_embeddings(folder: Path, sentences: Sequence[str]) -> np.ndarray:
    """sentence-transformers' recipe for all-MiniLM-L6-v2: mean over real tokens, then L2 normalisation."""
    import torch
    import transformers

    tokenizer = hf_tokenizer(folder)
    model = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    batch = tokenizer(list(sentences), padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
    pooled = (states * mask).sum(dim=1) / mask.sum(dim=1)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()
