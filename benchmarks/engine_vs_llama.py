"""quantcli's engine against llama.cpp's own tools: speed of calibrate and verify, and agreement of the figures.

    python -m benchmarks.engine_vs_llama --models models [--model SmolLM2-135M-Instruct] [--chunks 20]
        [--threads 2,1] [--bench-out docs/benchmarks.md] [--quality-out docs/quality.md] [--work DIR]

On one model (SmolLM2-135M-Instruct by default; `make bench` also runs the 168M bench Llama), ctx 512, the same
text and the same number of chunks for both sides:

- speed, per thread count, each pair run back to back (llama.cpp first, then quantcli):
  `quantcli calibrate` (HF folder) against `llama-imatrix --no-ppl` (the F32 GGUF of the same weights);
  the engine's PPL of the F16 GGUF against `llama-perplexity` on the same file;
  `quantcli verify Q4_K_M --source HF --data` against llama-perplexity's two KL-divergence runs (the F32 GGUF
  saving its log-probabilities with --kl-divergence-base, then the Q4_K_M file with --kl-divergence).
  Tokens/s is chunks x ctx over the whole command's wall time (load and tokenization included; the KL-divergence
  job counts the text once, although both sides run two models over it).
- agreement: PPL of the F16, Q8_0 and Q4_K_M files by the engine and by llama-perplexity; the KL divergence of
  Q4_K_M from both runs above; the importance matrices of both calibrate runs per tensor, and the KL divergence of
  Q4_K_M quantized by quantcli with each of them (the same quantizer, so only the imatrix differs).

The speed rows go into --bench-out, the agreement into --quality-out, each between its own marker lines, one pair
per model (the rest of the file is kept; `make bench` runs this after benchmarks.run has rewritten docs/benchmarks.md). Both files
are rewritten after every step, so an interrupted run leaves what it measured.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .doc_section import replace_between
from .llama_tools import tool
from .run import machine

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
CTX = 512
GGUF_TYPES = ("F32", "F16", "Q8_0", "Q4_K_M")
PPL_TYPES = ("F16", "Q8_0", "Q4_K_M")


def markers(kind: str, model: str) -> tuple[str, str]:
    """The lines around one model's section; the default model keeps the unsuffixed markers of earlier runs."""
    tag = "" if model == DEFAULT_MODEL else f" {model}"
    return f"<!-- {kind}:begin (benchmarks/engine_vs_llama.py){tag} -->", f"<!-- {kind}:end{tag} -->"


QUANTCLI_ENV = {"QUANTCLI_NO_PROGRESS": "1"}
RESULTS = "results.json"
STEPS = ("calibrate", "ppl", "kld", "more-threads", "agreement")


def log(message: str) -> None:
    print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_rss_mb: float
    output: str
    load_before: str


def run(cmd: Sequence[str], out: Path, env: dict[str, str] | None = None) -> Run:
    """The command's wall time, its own peak RSS (wait4) and its stdout+stderr (kept in `out`)."""
    load = load_average()
    with open(out, "w", encoding="utf-8") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env={**os.environ, **(env or {})}, stdout=sink, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    text = out.read_text(encoding="utf-8", errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{text[-3000:]}")
    return Run(seconds, usage.ru_maxrss / 1024, text, load)


# -- llama.cpp's printed figures ----------------------------------------------------------------------------------
def final_ppl(text: str) -> float:
    """llama-perplexity's "Final estimate: PPL = 42.3140 +/- 3.21875".

    >>> final_ppl("...\\nFinal estimate: PPL = 42.3140 +/- 3.21875\\n")
    42.314
    """
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", text)
    if not m:
        raise ValueError("no 'Final estimate' line in llama-perplexity's output")
    return float(m.group(1))


KLD_LINES = {"ppl": r"Mean PPL\(Q\)\s*:\s*([-0-9.]+)", "ppl_base": r"Mean PPL\(base\)\s*:\s*([-0-9.]+)",
             "kld_mean": r"Mean\s+KLD:\s*([-0-9.]+)", "kld_median": r"Median\s+KLD:\s*([-0-9.]+)",
             "kld_p99": r"99\.0%\s+KLD:\s*([-0-9.]+)", "kld_max": r"Maximum KLD:\s*([-0-9.]+)",
             "rms_dp": r"RMS Δp\s*:\s*([-0-9.]+)", "same_top1": r"Same top p:\s*([-0-9.]+)"}


def kld_figures(text: str) -> dict[str, float]:
    """The statistics llama-perplexity --kl-divergence prints (RMS Δp and same top p as fractions).

    >>> kld_figures("Mean    KLD:   0.071000 ±   0.002\\nSame top p: 86.000 ± 1.0 %")["same_top1"]
    0.86
    """
    out = {}
    for key, pattern in KLD_LINES.items():
        m = re.search(pattern, text)
        if m:
            value = float(m.group(1))
            out[key] = value / 100 if key in ("rms_dp", "same_top1") else value
    if "kld_mean" not in out:
        raise ValueError("no 'Mean KLD' line in llama-perplexity's output")
    return out


# -- quantcli's side ----------------------------------------------------------------------------------------------
def quantcli(*args: str) -> list[str]:
    return [sys.executable, "-m", "quantcli.cli.app", *args]


OUR_PPL_SCRIPT = """
import json, sys
from pathlib import Path
from benchmarks.engine_vs_llama import our_ppl
print(json.dumps(our_ppl(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))))
"""


def our_ppl(path: Path, source: Path, text: Path, chunks: int, threads: int) -> dict[str, Any]:
    """PPL of one GGUF by the engine, llama-perplexity's way: what `verify --data` computes for its output, without
    the source pass (llama-perplexity on one file has no base model either)."""
    from quantcli.engine import Engine
    from quantcli.stages.eval_text import SpecialIds, text_tokens
    from quantcli.stages.chunks import chunk_tokens, with_bos
    from quantcli.stages.perplexity import PerplexityScorer, first_scored
    from quantcli.stages.verify import open_layout

    special = SpecialIds.from_metadata(open_layout(path).values)
    tokens = text_tokens(source, text.read_text(encoding="utf-8"), special)
    cut = chunk_tokens(tokens, CTX, chunks)
    engine = Engine.from_gguf(path, source=source, threads=threads)
    scorer = PerplexityScorer(CTX)
    try:
        for chunk, logits in zip(cut, engine.run(with_bos(cut, special.bos), logits_from=first_scored(CTX)),
                                 strict=True):
            scorer.add(chunk, logits)
    finally:
        engine.close()
    r = scorer.result()
    return {"ppl": r.ppl, "n_scored": r.n_scored, "n_chunks": r.n_chunks}


def same_tokens(base: Path, source: Path, text: Path, chunks: int, gguf: Path) -> bool:
    """Whether llama-perplexity evaluated the tokens our chunker cuts: its --kl-divergence-base file starts with
    "_logits_", n_ctx (u32), n_vocab and n_chunk (i32), then the chunks' original tokens (int32)."""
    import numpy as np

    from quantcli.stages.chunks import chunk_tokens
    from quantcli.stages.eval_text import SpecialIds, text_tokens
    from quantcli.stages.verify import open_layout

    with open(base, "rb") as f:
        head = f.read(20)
        n_ctx, _, n_chunk = np.frombuffer(head[8:20], dtype="<i4")
        theirs = np.frombuffer(f.read(4 * int(n_ctx) * int(n_chunk)), dtype="<i4").reshape(n_chunk, n_ctx)
    special = SpecialIds.from_metadata(open_layout(gguf).values)
    ours = chunk_tokens(text_tokens(source, text.read_text(encoding="utf-8"), special), CTX, chunks)
    return ours.shape == theirs.shape and bool((ours == theirs).all())


def last_json(text: str) -> Any:
    start = text.rfind("\n{")
    return json.loads(text[start + 1 if start >= 0 else text.index("{"):])


def with_fast_tokenizer(source: Path, work: Path) -> Path:
    """`source`, or a copy in `work` with a tokenizer.json when it ships only a SentencePiece tokenizer.model.

    The 168M bench Llama carries tokenizer.model alone, so that llama.cpp's own converter (the benchmarks' other
    peer) reads it; quantcli tokenizes text with a fast tokenizer. transformers converts the same SentencePiece
    model into one, the weights are linked, and the GGUF files are still made from `source` (its SPM vocabulary),
    so both sides tokenize with the same model; same_tokens() checks that they cut the same chunks.
    """
    if (source / "tokenizer.json").is_file():
        return source
    copy = work / f"{source.name}-fast-tokenizer"
    if not (copy / "tokenizer.json").is_file():
        copy.mkdir(parents=True, exist_ok=True)
        for item in source.iterdir():
            if not (copy / item.name).exists():
                (copy / item.name).symlink_to(item.resolve())
        # in a child: transformers in this process would raise the peak RSS every later child inherits
        run([sys.executable, "-c", "import sys; from transformers import AutoTokenizer; "
             "AutoTokenizer.from_pretrained(sys.argv[1], use_fast=True).save_pretrained(sys.argv[2])",
             str(source), str(copy)], work / "fast-tokenizer.log")
    return copy


# -- the measurements -----------------------------------------------------------------------------------------------
@dataclass
class Results:
    chunks: int
    model: str = DEFAULT_MODEL
    speed: list[dict[str, Any]] = field(default_factory=list)
    ppl: dict[str, tuple[float, float]] = field(default_factory=dict)          # type -> (ours, llama.cpp)
    kld: dict[str, dict[str, float]] = field(default_factory=dict)             # "ours" / "llama.cpp" -> figures
    imatrix: dict[str, Any] = field(default_factory=dict)
    loads: list[str] = field(default_factory=list)
    started: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def speed_row(task: str, threads: int, tokens: int, peer: Run, ours: Run) -> dict[str, Any]:
    return {"task": task, "threads": threads, "tokens": tokens,
            "llama.cpp s": round(peer.seconds, 1), "quantcli s": round(ours.seconds, 1),
            "llama.cpp tok/s": round(tokens / peer.seconds, 1), "quantcli tok/s": round(tokens / ours.seconds, 1),
            "speed ratio": round(peer.seconds / ours.seconds, 2),
            "llama.cpp RSS MB": round(peer.peak_rss_mb), "quantcli RSS MB": round(ours.peak_rss_mb),
            "load avg before": f"{peer.load_before} / {ours.load_before}"}


class Bench:
    def __init__(self, models: Path, model: str, work: Path, chunks: int, bench_out: Path | None,
                 quality_out: Path | None) -> None:
        self.origin = self.source = models / model
        self.work = work
        self.res = Results(chunks, model)
        self.bench_out, self.quality_out = bench_out, quality_out
        self.calib, self.eval = work / "calibration.txt", work / "eval.txt"
        self.files = {t: work / f"{model}-{t}.gguf" for t in GGUF_TYPES}
        self.imatrices = {"llama.cpp": work / "imatrix-llama.gguf", "quantcli": work / "imatrix-ours.gguf"}
        saved = work / RESULTS
        if saved.is_file():
            data = json.loads(saved.read_text(encoding="utf-8"))
            if data.get("chunks") == chunks and data.get("model", DEFAULT_MODEL) == model:
                data["ppl"] = {k: tuple(v) for k, v in data["ppl"].items()}
                self.res = Results(**data)

    @property
    def tokens(self) -> int:
        return self.res.chunks * CTX

    def prepare(self) -> None:
        from quantcli.stages.calibration_data import builtin_text

        # the GGUF files come from the model's own folder; the text is tokenized through the fast tokenizer
        self.source = with_fast_tokenizer(self.origin, self.work)

        # the shipped texts as plain files, so both sides read the same bytes
        for path, name in ((self.calib, "calibration"), (self.eval, "eval")):
            if not path.is_file():
                path.write_text(builtin_text(name).text, encoding="utf-8")
        for qtype, path in self.files.items():
            if not path.is_file():
                run(quantcli("convert", str(self.origin), "--type", qtype, "-o", str(path), "--verify", "none"),
                    self.work / f"convert-{qtype}.log", QUANTCLI_ENV)

    def calibrate(self, threads: int) -> None:
        n = str(self.res.chunks)
        peer_out, our_out = self.work / f"imatrix-llama-t{threads}.gguf", self.work / f"imatrix-ours-t{threads}.gguf"
        first = not self.res.speed or all(not r["task"].startswith("calibrate") for r in self.res.speed)
        peer = run([tool("llama-imatrix"), "-m", str(self.files["F32"]), "-f", str(self.calib), "-c", str(CTX),
                    "--chunks", n, "-t", str(threads), "--no-ppl", "-o", str(peer_out)],
                   self.work / f"imatrix-t{threads}.log")
        ours = run(quantcli("calibrate", str(self.source), "--data", str(self.calib), "--ctx", str(CTX), "--chunks", n,
                            "-t", str(threads), "-o", str(our_out), "--force"),
                   self.work / f"calibrate-t{threads}.log", QUANTCLI_ENV)
        if first:   # the agreement compares the matrices of the first thread count
            for who, made in (("llama.cpp", peer_out), ("quantcli", our_out)):
                self.imatrices[who].write_bytes(made.read_bytes())
        self.add_speed(speed_row("calibrate: llama-imatrix --no-ppl (F32 GGUF) vs quantcli calibrate (HF)",
                                 threads, self.tokens, peer, ours))

    def perplexity(self, qtype: str, threads: int, timed: bool) -> None:
        n = str(self.res.chunks)
        path = self.files[qtype]
        peer = run([tool("llama-perplexity"), "-m", str(path), "-f", str(self.eval), "-c", str(CTX), "--chunks", n,
                    "-t", str(threads)], self.work / f"ppl-{qtype}-t{threads}.log")
        ours = run([sys.executable, "-c", OUR_PPL_SCRIPT, str(path), str(self.source), str(self.eval), n, str(threads)],
                   self.work / f"ours-ppl-{qtype}-t{threads}.log", QUANTCLI_ENV)
        self.res.ppl[qtype] = (float(last_json(ours.output)["ppl"]), final_ppl(peer.output))
        log(f"PPL {qtype}: ours {self.res.ppl[qtype][0]:.4f}, llama.cpp {self.res.ppl[qtype][1]:.4f}")
        if timed:
            self.add_speed(speed_row(f"PPL of the {qtype} GGUF: llama-perplexity vs the engine", threads,
                                     self.tokens, peer, ours))
        else:
            self.write()

    def kl_divergence(self, threads: int) -> None:
        n, t = str(self.res.chunks), str(threads)
        base = self.work / "llama-base.kld"
        save = run([tool("llama-perplexity"), "-m", str(self.files["F32"]), "-f", str(self.eval), "-c", str(CTX),
                    "--chunks", n, "-t", t, "--kl-divergence-base", str(base)], self.work / f"kld-base-t{t}.log")
        score = run([tool("llama-perplexity"), "-m", str(self.files["Q4_K_M"]), "-c", str(CTX), "-t", t,
                     "--kl-divergence-base", str(base), "--kl-divergence"], self.work / f"kld-t{t}.log")
        ours = run(quantcli("verify", str(self.files["Q4_K_M"]), "--source", str(self.source), "--data", str(self.eval),
                            "--ctx", str(CTX), "--chunks", n, "--threads", t, "--json"),
                   self.work / f"verify-t{t}.log", QUANTCLI_ENV)
        peer = Run(save.seconds + score.seconds, max(save.peak_rss_mb, score.peak_rss_mb), score.output,
                   save.load_before)
        self.res.kld["llama.cpp"] = kld_figures(score.output)
        mine = last_json(ours.output)
        self.res.kld["quantcli"] = {k: mine[k] for k in ("ppl", "ppl_source", "kld_mean", "kld_median", "kld_p99",
                                                         "kld_max", "rms_dp", "same_top1")}
        self.res.kld["quantcli"]["ppl_base"] = mine["ppl_source"]
        # the token check reads the model's tokenizer in this process: it waits for the agreement step, because
        # a child's peak RSS starts from its parent's (Linux keeps it across fork and exec)
        self.add_speed(speed_row("KLD of Q4_K_M: llama-perplexity (F32 base + --kl-divergence) vs quantcli verify "
                                 "--source --data", threads, self.tokens, peer, ours))

    def imatrix_agreement(self) -> None:
        """Per-tensor relative difference of the two imatrices, and the KLD of Q4_K_M quantized with each."""
        import numpy as np

        from quantcli.engine import Engine
        from quantcli.quant.imatrix import load_imatrix
        from quantcli.stages.eval_text import SpecialIds, text_tokens
        from quantcli.stages.chunks import chunk_tokens
        from quantcli.stages.verify import open_layout
        from quantcli.stages.verify_model import score_outputs

        base = self.work / "llama-base.kld"
        if base.is_file():
            self.res.kld["tokens"] = {"identical": float(same_tokens(base, self.source, self.eval, self.res.chunks,
                                                                     self.files["F32"]))}
            base.unlink()   # n_chunks x ctx/2 x vocab 16-bit log-probabilities: hundreds of MB
        peer, ours = (load_imatrix(self.imatrices[k]).weights for k in ("llama.cpp", "quantcli"))
        common = sorted(set(peer) & set(ours))
        rel = {n: float(np.linalg.norm(ours[n].astype(np.float64) - peer[n]) / np.linalg.norm(peer[n].astype(np.float64)))
               for n in common}
        worst = max(rel, key=rel.get)  # type: ignore[arg-type]
        self.res.imatrix = {"tensors": len(common), "only_llama": sorted(set(peer) - set(ours)),
                            "only_ours": sorted(set(ours) - set(peer)), "rel_max": rel[worst], "rel_worst": worst,
                            "rel_median": float(np.median(list(rel.values()))),
                            "rel_mean": float(np.mean(list(rel.values())))}
        files = {}
        for who, im in self.imatrices.items():
            files[who] = self.work / f"{self.res.model}-Q4_K_M-imatrix-{who}.gguf"
            run(quantcli("convert", str(self.origin), "--type", "Q4_K_M", "--imatrix", str(im), "-o", str(files[who]),
                         "--verify", "none"), self.work / f"convert-imatrix-{who}.log", QUANTCLI_ENV)
        special = SpecialIds.from_metadata(open_layout(files["quantcli"]).values)
        tokens = text_tokens(self.source, self.eval.read_text(encoding="utf-8"), special)
        cut = chunk_tokens(tokens, CTX, self.res.chunks)
        src = Engine.from_hf(self.source, threads=2)
        outs = [Engine.from_gguf(p, source=self.source, threads=2) for p in files.values()]
        try:
            results = score_outputs(src, outs, cut, special.bos, batch=2)
        finally:
            for e in [src, *outs]:
                e.close()
        for who, r in zip(files, results):
            self.res.imatrix[f"kld_{who}"] = r.kld_mean
            self.res.imatrix[f"ppl_{who}"] = r.ppl
        log(f"imatrix: {self.res.imatrix}")
        self.write()

    def add_speed(self, row: dict[str, Any]) -> None:
        # a step run again (resumed with --steps) replaces its row
        self.res.speed = [r for r in self.res.speed if (r["task"], r["threads"]) != (row["task"], row["threads"])]
        self.res.speed.append(row)
        log(json.dumps(row))
        self.write()

    # -- the documents ----------------------------------------------------------------------------------------------
    def write(self) -> None:
        self.res.loads.append(load_average())
        # kept beside the logs, so a run resumed with --steps renders the figures of the earlier steps too
        (self.work / RESULTS).write_text(json.dumps(asdict(self.res), indent=1), encoding="utf-8")
        if self.bench_out:
            replace_between(self.bench_out, *markers("engine-vs-llama", self.res.model), render_speed(self.res))
        if self.quality_out:
            replace_between(self.quality_out, *markers("tools-agreement", self.res.model), render_agreement(self.res))


def _table(rows: list[dict[str, Any]]) -> list[str]:
    cols = list(rows[0])
    return (["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
            + ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows])


def _when(res: Results) -> list[str]:
    return [f"- run started {res.started}; machine: {machine()}",
            f"- load average (1, 5, 15 min) at each step: {'; '.join(res.loads)}"]


def render_speed(res: Results) -> str:
    begin, end = markers("engine-vs-llama", res.model)
    title = "" if res.model == DEFAULT_MODEL else f" ({res.model})"
    lines = [begin, "", f"## The engine against llama.cpp's tools: calibrate and verify{title}", "",
             f"{res.model}, ctx {CTX}, {res.chunks} chunks ({res.chunks * CTX} tokens) of the same text on "
             "both sides (`builtin:calibration` for calibrate, `builtin:eval` for perplexity), llama.cpp's tools "
             "built from the pinned sdist (`make llama-tools`). Each pair ran back to back, llama.cpp first. "
             "'speed ratio' is llama.cpp's time over quantcli's: above 1, quantcli is faster. Times are one run of "
             "the whole command (loading and tokenizing included). 'load avg before' is the machine's 1-minute load "
             "average when each side started: the absolute figures come from a machine shared with other jobs, so "
             "read the ratios, not the tokens/s. Where the engine's time goes (matmuls, the LM head, attention, "
             "norms; one chunk profiled at 1 and 2 threads): docs/engine.md, 'Where the time goes'.", ""]
    if res.speed:
        lines += _table(res.speed)
    lines += ["", *_when(res), "", end]
    return "\n".join(lines)


def render_agreement(res: Results) -> str:
    begin, end = markers("tools-agreement", res.model)
    title = "" if res.model == DEFAULT_MODEL else f" ({res.model})"
    lines = [begin, "", f"### Against llama.cpp's own tools (llama-perplexity, llama-imatrix){title}", "",
             f"{res.model}, ctx {CTX}, the first {res.chunks} chunks of the same text on both sides; "
             "llama.cpp's command-line tools built from the pinned sdist (benchmarks/engine_vs_llama.py, part of "
             "`make bench`). Both score the second half of each chunk (the logits at positions 256..510 predict "
             f"tokens 257..511: {res.chunks * (CTX - 1 - CTX // 2)} scored tokens).", ""]
    if res.ppl:
        lines += ["| file | quantcli engine PPL | llama-perplexity PPL | difference |", "|---|---:|---:|---:|"]
        for qtype, (ours, theirs) in res.ppl.items():
            lines.append(f"| {qtype} | {ours:.4f} | {theirs:.4f} | {100 * (ours / theirs - 1):+.3f} % |")
        lines.append("")
    if res.kld:
        keys = [("ppl_base", "PPL of the base"), ("ppl", "PPL of Q4_K_M"), ("kld_mean", "KLD mean"),
                ("kld_median", "KLD median"), ("kld_p99", "KLD 99 %"), ("kld_max", "KLD max"),
                ("same_top1", "same top-1"), ("rms_dp", "RMS Δp")]
        ours, theirs = res.kld.get("quantcli", {}), res.kld.get("llama.cpp", {})
        if "tokens" in res.kld:
            lines += [("llama-perplexity evaluated exactly the tokens quantcli's chunker cuts (read back from its "
                       "--kl-divergence-base file)." if res.kld["tokens"]["identical"] else
                       "**The tokens llama-perplexity evaluated differ from quantcli's chunks** (its "
                       "--kl-divergence-base file), so the rows below do not compare like with like."), ""]
        lines += ["KL divergence of the Q4_K_M file from its base: quantcli verify (base: the HF checkpoint, float32) "
                  "and llama-perplexity --kl-divergence (base: the F32 GGUF of the same weights, run by llama.cpp):", "",
                  "| figure | quantcli | llama.cpp | difference |", "|---|---:|---:|---:|"]
        for key, label in keys:
            if key in ours and key in theirs:
                a, b = float(ours[key]), float(theirs[key])
                diff = f"{100 * (a / b - 1):+.2f} %" if b else "n/a"
                lines.append(f"| {label} | {a:.6f} | {b:.6f} | {diff} |")
        lines.append("")
    im = res.imatrix
    if im:
        lines += [f"Importance matrices on `builtin:calibration` ({res.chunks} chunks of {CTX}): quantcli calibrate "
                  "(HF folder) and llama-imatrix (F32 GGUF). Per tensor, the relative L2 difference of the mean "
                  f"squared activations over {im['tensors']} tensors: median {im['rel_median']:.2e}, mean "
                  f"{im['rel_mean']:.2e}, max {im['rel_max']:.2e} ({im['rel_worst']})"
                  + (f"; only in llama.cpp's: {', '.join(im['only_llama'])}" if im['only_llama'] else "")
                  + (f"; only in ours: {', '.join(im['only_ours'])}" if im['only_ours'] else "") + ".", ""]
        if "kld_quantcli" in im:
            lines += ["Q4_K_M quantized by quantcli with each matrix (the same quantizer, so only the matrix differs), "
                      "scored by quantcli verify against the source on `builtin:eval`:", "",
                      "| imatrix from | PPL | KLD mean |", "|---|---:|---:|",
                      f"| quantcli calibrate | {im['ppl_quantcli']:.4f} | {im['kld_quantcli']:.5f} |",
                      f"| llama-imatrix | {im['ppl_llama.cpp']:.4f} | {im['kld_llama.cpp']:.5f} |",
                      "", f"KLD difference: {100 * (im['kld_quantcli'] / im['kld_llama.cpp'] - 1):+.2f} %.", ""]
    lines += [*_when(res), "", end]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--model", default=DEFAULT_MODEL, help="A model folder under --models.")
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--threads", default="2,1", help="Thread counts of the speed rows, first one also for agreement.")
    ap.add_argument("--bench-out", type=Path)
    ap.add_argument("--quality-out", type=Path)
    ap.add_argument("--work", type=Path, help="Keep the files and logs here (and resume from its results.json).")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"Which steps to run, of {', '.join(STEPS)}.")
    args = ap.parse_args()
    steps = set(args.steps.split(","))
    os.environ.setdefault("QUANTCLI_MODELS", str(args.models))   # where `make llama-tools` put the binaries
    threads = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory(prefix="engine-vs-llama-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bench = Bench(args.models, args.model, work, args.chunks, args.bench_out, args.quality_out)
        bench.prepare()
        first = threads[0]
        # the rows at the first thread count, which also give the agreement figures
        if "calibrate" in steps:
            bench.calibrate(first)
        if "ppl" in steps:
            bench.perplexity("F16", first, timed=True)
        if "kld" in steps:
            bench.kl_divergence(first)
        if "more-threads" in steps:
            for t in threads[1:]:
                bench.calibrate(t)
                bench.perplexity("F16", t, timed=True)
        # last: it loads models into this process, whose peak RSS every later child would inherit
        if "agreement" in steps:
            for qtype in PPL_TYPES[1:]:
                bench.perplexity(qtype, first, timed=False)
            bench.imatrix_agreement()
        log("done")


if __name__ == "__main__":
    main()
