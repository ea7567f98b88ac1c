"""The model card (README.md) that `quantcli publish` uploads beside the GGUF files, or with a quantized
safetensors folder (render_folder_card: scheme, method, how to load it with transformers and vLLM, verify figures),
or with the outputs of a run that has folder outputs (render_run_card: where each output is in the repo, which
loader reads it and how, PPL/KLD per output).

YAML front matter the hub reads (base_model, tags gguf/quantized, quantized_by, library_name), then a table of
files (type, size, bits per weight, verify figures), how to run them with llama.cpp and Ollama, and where
they came from (source commit, recipe, quantcli version, sha256 of each file).

    card = render_card(CardInfo(repo_id="me/SmolLM2-GGUF", base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
                                quantized_by="me", files=[...]))
    card.startswith("---\\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct")
    # -> True
"""
from __future__ import annotations

from dataclasses import dataclass, field

TAGS = ("gguf", "quantized", "quantcli", "llama.cpp")
EMBEDDING_ARCHS = ("bert", "nomic-bert", "jina-bert-v2")
QUANTCLI_URL = "https://github.com/quantcli/quantcli"


@dataclass(frozen=True)
class CardFile:
    """One published model file (a split file counts once, with its parts)."""

    name: str                               # the file name (for a split file, the name before splitting)
    type: str                               # the mix: Q4_K_M, Q8_0, F16, ...
    size: int                               # bytes, all parts together
    bits_per_weight: float
    parts: tuple[str, ...] = ()             # shard names when split
    sha256: str | None = None
    verify: dict | None = None              # the manifest's verify summary: ok, min_snr_db, max_rmse
    verify_level: str | None = None
    quality: dict | None = None             # the manifest's model_verify figures (PPL, KLD), when computed


@dataclass(frozen=True)
class CardInfo:
    repo_id: str
    quantized_by: str
    files: list[CardFile]
    base_model: str | None = None
    source_commit: str | None = None
    arch: str | None = None
    recipe: str | None = None
    quantcli_version: str | None = None
    extra_tags: tuple[str, ...] = field(default_factory=tuple)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


def _figure(value: object, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return "lossless" if value == "inf" else value
    if value == float("inf"):
        return "lossless"
    return format(value, fmt)


def front_matter(info: CardInfo) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        base_model=info.base_model,
        tags=list(dict.fromkeys((*TAGS, *info.extra_tags))),
        library_name="gguf",
        pipeline_tag="feature-extraction" if info.arch in EMBEDDING_ARCHS else "text-generation",
        quantized_by=info.quantized_by,
    )
    return "---\n" + data.to_yaml() + "\n---\n"


def render_card(info: CardInfo) -> str:
    """The whole README.md."""
    title = info.repo_id.split("/")[-1]
    lines = [front_matter(info), f"# {title}", ""]
    src = f"[{info.base_model}](https://huggingface.co/{info.base_model})" if info.base_model else "the source model"
    commit = f" at commit `{info.source_commit[:12]}`" if info.source_commit else ""
    made = f"[quantcli]({QUANTCLI_URL}) {info.quantcli_version}" if info.quantcli_version else f"[quantcli]({QUANTCLI_URL})"
    lines += [f"GGUF files of {src}{commit}, made with {made}"
              + (f" (recipe `{info.recipe}`)." if info.recipe else ".")]
    verified = [f for f in info.files if f.verify]
    if verified and len(verified) == len(info.files):
        lines.append("Every file was reopened with an independent reader (gguf-py) and checked before upload.")
    elif verified:
        lines.append("Files with an entry under Verified were reopened with an independent reader (gguf-py) and "
                     "checked; the others were not verified by quantcli.")
    lines.append("")
    lines += ["## Files", "",
              "| File | Type | Size | Bits per weight | Min SNR (dB) | Max RMSE | Verified |",
              "|---|---|---|---|---|---|---|"]
    for f in info.files:
        v = f.verify or {}
        target = f.parts[0] if f.parts else f.name
        name = f"[{target}](https://huggingface.co/{info.repo_id}/blob/main/{target})"
        if f.parts:
            rest = len(f.parts) - 1
            name += f" + {rest} more part{'s' if rest != 1 else ''}"
        ok = "-" if not v else ("yes" if v.get("ok") else "**failed**")
        if v and f.verify_level:
            ok += f" ({f.verify_level})"
        lines.append(f"| {name} | {f.type} | {_size(f.size)} | {f.bits_per_weight:.2f} | "
                     f"{_figure(v.get('min_snr_db'), '.1f')} | {_figure(v.get('max_rmse'), '.3g')} | {ok} |")
    lines += ["", "SNR and RMSE compare each tensor with the source weights after the same transform (verify level "
              "`full`); the table shows the worst tensor of each file.", ""]
    lines += quality_table([(f.name, f.quality) for f in info.files])
    lines += _how_to_run(info)
    lines += _provenance(info, info.files)
    return "\n".join(lines) + "\n"


def _provenance(info: CardInfo | RunCardInfo, ggufs: list[CardFile]) -> list[str]:
    """Where the files came from, and the sha256 of every GGUF (the size before splitting, if it was split)."""
    lines = ["## Provenance", ""]
    if info.base_model:
        lines.append(f"- Source: `{info.base_model}`" + (f", commit `{info.source_commit}`" if info.source_commit else ""))
    if info.recipe:
        lines.append(f"- Recipe: `{info.recipe}`")
    if info.quantcli_version:
        lines.append(f"- quantcli {info.quantcli_version}")
    lines += ["", "| File | sha256 |", "|---|---|"]
    for f in ggufs:
        label = f.name + (f" (before splitting into {len(f.parts)} parts)" if f.parts else "")
        lines.append(f"| {label} | {'`' + f.sha256 + '`' if f.sha256 else '-'} |")
    return lines


def _how_to_run(info: CardInfo) -> list[str]:
    if not info.files:
        return []
    first = info.files[0]
    file_arg = first.parts[0] if first.parts else first.name
    lines = ["## Run it", "", "### llama.cpp", "", "```sh",
             f"llama-cli -hf {info.repo_id}:{first.type} -p \"Why is the sky blue?\"",
             f"llama-server -hf {info.repo_id}:{first.type}",
             "# or with a downloaded file",
             f"hf download {info.repo_id} --include '{first.name.removesuffix('.gguf')}*.gguf' --local-dir .",
             f"llama-cli -m {file_arg} -p \"Why is the sky blue?\"",
             "```", ""]
    if any(f.parts for f in info.files):
        lines += ["Split files are loaded by giving llama.cpp the first part (`-00001-of-`); it finds the others "
                  "beside it.", ""]
    lines += ["### Ollama", "", "```sh", f"ollama run hf.co/{info.repo_id}:{first.type}", "```", ""]
    lines += ["### LM Studio", "",
              f"Search for `{info.repo_id}` in LM Studio's model search and pick a file, or from a terminal:", "",
              "```sh", f"lms get {info.repo_id}", "```", ""]
    if len(info.files) > 1:
        lines += ["Replace the tag with another type from the table (" + ", ".join(f.type for f in info.files) + ").", ""]
    return lines


# ---- quantized safetensors folders ----------------------------------------------------------------------------

METHODS = {   # quantcli.method in the folder's safetensors header -> how the card names it
    "minmax": "round to nearest (RTN), scales from each group's min/max",
    "mse": "round to nearest (RTN), scales from an MSE-optimal clipping search",
    "hqq": "HQQ (half-quadratic zero-point and scale solver, no calibration data)",
    "nf4": "bitsandbytes NF4: blockwise absmax, nearest of the 16 NF4 levels",
}


@dataclass(frozen=True)
class FolderCardInfo:
    """What the card of one quantized folder says."""

    repo_id: str
    quantized_by: str
    scheme: dict                            # the folder reader's scheme (io/quantized_folder.py)
    files: list[CardFile]                   # the weight files (type "safetensors"), with sha256
    n_modules: int
    bits_per_weight: float | None           # of the quantized Linear weights, scales included
    total_bytes: int
    method: str | None = None
    base_model: str | None = None
    quantcli_version: str | None = None
    quality: dict | None = None             # verify --data's JSON (quantcli-verify.json), when present


def scheme_name(scheme: dict) -> str:
    """W4A16 / W8A8 / NF4 ...: the name users search for."""
    if scheme.get("quant_method") == "bitsandbytes":
        return "NF4" + (" (double quant)" if scheme.get("double_quant") else "")
    acts = scheme.get("activations")
    a = acts.split()[0].removeprefix("int") if acts else "16"
    name = f"W{scheme.get('num_bits')}A{a}"
    return name if scheme.get("symmetric", True) else name + "_ASYM"


def folder_front_matter(info: FolderCardInfo) -> str:
    from huggingface_hub import ModelCardData

    fmt = str(info.scheme.get("quant_method") or "compressed-tensors")     # the hub's tag for the format
    tags = ["quantized", "quantcli", fmt, f"{info.scheme.get('num_bits')}-bit"]
    if info.scheme.get("quant_method") == "bitsandbytes":
        tags.append("nf4")
    data = ModelCardData(base_model=info.base_model, base_model_relation="quantized" if info.base_model else None,
                         tags=tags, library_name="transformers", pipeline_tag="text-generation",
                         quantized_by=info.quantized_by)
    return "---\n" + data.to_yaml() + "\n---\n"


@dataclass(frozen=True)
class FolderLoader:
    """What a card says about loading one folder format: its name, the pip packages, vLLM's flags, a note."""

    label: str          # may name {format}, the folder's own format field
    packages: str
    vllm_flags: str
    note: str


# quant_method -> how that folder is loaded (the formats quantcli writes, docs/int-formats.md)
FOLDER_LOADERS: dict[str, FolderLoader] = {
    "compressed-tensors": FolderLoader(
        "compressed-tensors ({format})", "transformers compressed-tensors", "",
        "vLLM picks the compressed-tensors kernels from config.json; transformers decompresses on load."),
    "bitsandbytes": FolderLoader(
        "bitsandbytes 4-bit (NF4)", "transformers accelerate bitsandbytes", " --quantization bitsandbytes",
        "quantcli's tests load such folders on a CPU with bitsandbytes 0.50; GPUs need a CUDA build of it."),
    "gptq": FolderLoader(
        "GPTQ (checkpoint_format {format})", "transformers optimum gptqmodel", "",
        "transformers loads GPTQ folders through optimum and gptqmodel; vLLM reads quantization_config."),
    "awq": FolderLoader(
        "AWQ ({format})", "transformers optimum gptqmodel", "",
        "transformers loads AWQ GEMM folders through gptqmodel; vLLM reads quantization_config."),
}


def render_folder_card(info: FolderCardInfo) -> str:
    """The README.md of a quantized folder: scheme, how to load it, verify figures, provenance."""
    s = info.scheme
    title = info.repo_id.split("/")[-1]
    src = f"[{info.base_model}](https://huggingface.co/{info.base_model})" if info.base_model else "the source model"
    made = f"[quantcli]({QUANTCLI_URL})" + (f" {info.quantcli_version}" if info.quantcli_version else "")
    loader = FOLDER_LOADERS.get(str(s.get("quant_method")), FOLDER_LOADERS["compressed-tensors"])
    bnb = s.get("quant_method") == "bitsandbytes"
    fmt = loader.label.format(format=s.get("format"))
    lines = [folder_front_matter(info), f"# {title}", "",
             f"{scheme_name(s)} weights of {src} in the {fmt} format, made with {made}. "
             "transformers and vLLM load the folder as it is; the quantization is described in config.json's "
             "`quantization_config`.", ""]
    group = "per output channel" if s.get("group_size") is None else f"{s.get('group_size')}"
    rows = [("Format", fmt), ("Scheme", scheme_name(s)), ("Method", METHODS.get(info.method or "", info.method or "not recorded")),
            ("Weight bits", str(s.get("num_bits"))),
            ("Group size" if not bnb else "Block size", group),
            ("Symmetric", "yes" if s.get("symmetric") else "no (zero points)")]
    if bnb:
        rows.append(("Double quantization", "yes" if s.get("double_quant") else "no"))
    else:
        rows.append(("Activations", s.get("activations") or "not quantized (16-bit)"))
    rows += [("Quantized modules", f"{info.n_modules} Linear layers"),
             ("Kept in the model dtype", ", ".join(f"`{p}`" for p in s.get("ignore") or []) or "-"),
             ("Bits per quantized weight", "-" if info.bits_per_weight is None else f"{info.bits_per_weight:.3f} (scales included)"),
             ("Size", _size(info.total_bytes))]
    lines += ["## Quantization", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]
    lines += _folder_quality(info.quality)
    lines += _how_to_load(info.repo_id, loader)
    lines += ["## Provenance", ""]
    if info.base_model:
        lines.append(f"- Source: `{info.base_model}`")
    if info.quantcli_version:
        lines.append(f"- quantcli {info.quantcli_version}")
    lines += ["", "| File | sha256 |", "|---|---|"]
    for f in info.files:
        lines.append(f"| {f.name} | {'`' + f.sha256 + '`' if f.sha256 else '-'} |")
    return "\n".join(lines) + "\n"


def _folder_quality(q: dict | None) -> list[str]:
    if not q or q.get("ppl") is None:
        return []
    return ["## Quality", "",
            f"`quantcli verify` ran this folder and its source in quantcli's float32 engine on `{q.get('data')}` "
            f"({q.get('n_chunks')} chunks of {q.get('ctx')} tokens, {q.get('n_scored')} scored tokens; the folder's "
            "weights dequantized as its loader does, activations in float32):", "",
            "| PPL (source) | PPL (this folder) | KLD mean | KLD 99% | same top-1 |", "|---:|---:|---:|---:|---:|",
            f"| {_figure(q.get('ppl_source'), '.4f')} | {_figure(q.get('ppl'), '.4f')} | "
            f"{_figure(q.get('kld_mean'), '.5f')} | {_figure(q.get('kld_p99'), '.5f')} | "
            f"{_figure(None if q.get('same_top1') is None else 100 * q['same_top1'], '.2f')} % |", ""]


def _how_to_load(repo_id: str, loader: FolderLoader) -> list[str]:
    packages, vllm, note = loader.packages, f"vllm serve {repo_id}" + loader.vllm_flags, loader.note
    return ["## Load it", "", "### transformers", "", "```sh", f"pip install {packages}", "```", "", "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")   # quantization_config is read from config.json',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
            'inputs = tokenizer("Why is the sky blue?", return_tensors="pt")',
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=40)[0]))",
            "```", "", "### vLLM", "", "```sh", vllm, "```", "", note, ""]


# ---- quality figures (the manifest's model_verify) -----------------------------------------------------------

def quality_table(rows: list[tuple[str, dict | None]]) -> list[str]:
    """The PPL/KLD figures convert computed for its outputs (a recipe's verify.max_kld / max_ppl_ratio), one row
    per output that has them; embedding models get their cosine similarity instead. Nothing when none has."""
    scored = [(name, q) for name, q in rows if q and (q.get("ppl") is not None or q.get("cos_mean") is not None)]
    if not scored:
        return []
    q0 = scored[0][1]
    lines = ["## Quality", "",
             f"quantcli scored each output and its source in its float32 engine on `{q0.get('data')}` "
             f"({q0.get('n_chunks')} chunks of {q0.get('ctx')} tokens) before uploading:", ""]
    if any(q.get("ppl") is not None for _, q in scored):
        lines += ["| Output | PPL (source) | PPL | KLD mean | KLD 99% | same top-1 |", "|---|---:|---:|---:|---:|---:|"]
        for name, q in scored:
            top1 = None if q.get("same_top1") is None else 100 * q["same_top1"]
            lines.append(f"| {name} | {_figure(q.get('ppl_source'), '.4f')} | {_figure(q.get('ppl'), '.4f')} | "
                         f"{_figure(q.get('kld_mean'), '.5f')} | {_figure(q.get('kld_p99'), '.5f')} | "
                         f"{_figure(top1, '.2f')} % |")
    else:
        lines += ["| Output | cosine mean | cosine min |", "|---|---:|---:|"]
        lines += [f"| {name} | {_figure(q.get('cos_mean'), '.6f')} | {_figure(q.get('cos_min'), '.6f')} |"
                  for name, q in scored]
    lines += ["", "KLD is the mean KL divergence of the output's next-token distribution from the source's; lower "
              "is closer to the source.", ""]
    return lines


# ---- the card of a run with folder outputs (GGUF files and/or safetensors folders) ----------------------------

@dataclass(frozen=True)
class RunCardFolder:
    """One folder output of a published run."""

    prefix: str                             # "" (the repo's root) or "<folder>/"
    format: str                             # the manifest's: compressed-tensors, bnb-nf4, gptq, awq, dense, splitquant-branches
    type: str                               # W4A16, NF4, splitquant, ...
    method: str | None
    size: int
    scheme: dict | None                     # the folder reader's scheme (None: no quantization_config)
    quality: dict | None
    files: tuple[CardFile, ...]             # its weight files, with sha256


@dataclass(frozen=True)
class RunCardInfo:
    repo_id: str
    quantized_by: str
    ggufs: list[CardFile]
    folders: list[RunCardFolder]
    base_model: str | None = None
    source_commit: str | None = None
    arch: str | None = None
    recipe: str | None = None
    quantcli_version: str | None = None


@dataclass(frozen=True)
class RunLoader:
    """How a card tells users to load one folder format."""

    label: str
    tag: str                                # the hub tag of the format
    packages: str                           # pip packages for transformers ("" : none beyond transformers)
    vllm_flags: str | None                  # None: vLLM does not load it
    note: str


# the manifest's folder format -> how it is loaded (the formats quantcli writes, docs/int-formats.md)
RUN_LOADERS: dict[str, RunLoader] = {
    "compressed-tensors": RunLoader("compressed-tensors", "compressed-tensors", "transformers compressed-tensors", "",
                                    "transformers decompresses it on load with the compressed-tensors package; vLLM "
                                    "runs it with its compressed-tensors kernels."),
    "gptq": RunLoader("GPTQ", "gptq", "transformers optimum gptqmodel", "",
                      "transformers loads GPTQ through optimum and gptqmodel; vLLM reads its quantization_config."),
    "awq": RunLoader("AWQ (GEMM)", "awq", "transformers optimum gptqmodel", "",
                     "vLLM serves AWQ folders directly; transformers loads them through gptqmodel."),
    "bnb-nf4": RunLoader("bitsandbytes NF4", "bitsandbytes", "transformers accelerate bitsandbytes",
                         " --quantization bitsandbytes",
                         "transformers loads it with bitsandbytes (a CUDA build on GPUs; quantcli's tests load it on a CPU)."),
    "dense": RunLoader("SplitQuantV2, dense", "splitquant", "transformers", "",
                       "A plain model: the weights are SplitQuantV2's dequantized sum in the source dtype, with no "
                       "quantization_config, so every loader reads it as an ordinary checkpoint (no memory saving). "
                       "The three-branch SplitQuantV2 form runs only in quantcli's engine."),
    "splitquant-branches": RunLoader("SplitQuantV2, three INT4 branches", "splitquant", "", None,
                                     "No stock loader runs three branches per layer: this form runs only in "
                                     "quantcli's engine (docs/splitquant.md)."),
}


def run_loader(fmt: str) -> RunLoader:
    return RUN_LOADERS.get(fmt, RunLoader(fmt, fmt, "transformers", "", "quantization_config in config.json says how."))


def run_front_matter(info: RunCardInfo) -> str:
    from huggingface_hub import ModelCardData

    tags = ["quantized", "quantcli"]
    if info.ggufs:
        tags += ["gguf", "llama.cpp"]
    tags += [run_loader(f.format).tag for f in info.folders]
    bits = {f"{f.scheme.get('num_bits')}-bit" for f in info.folders if f.scheme and f.scheme.get("num_bits")}
    tags += sorted(bits)
    data = ModelCardData(base_model=info.base_model, base_model_relation="quantized" if info.base_model else None,
                         tags=list(dict.fromkeys(tags)), library_name="gguf" if info.ggufs else "transformers",
                         pipeline_tag="feature-extraction" if info.arch in EMBEDDING_ARCHS else "text-generation",
                         quantized_by=info.quantized_by)
    return "---\n" + data.to_yaml() + "\n---\n"


def _folder_label(f: RunCardFolder) -> str:
    return f"`{f.prefix}`" if f.prefix else "the repo's root"


def render_run_card(info: RunCardInfo) -> str:
    """The README.md of a run's outputs: where each one is in the repo, how to load it, its figures."""
    title = info.repo_id.split("/")[-1]
    src = f"[{info.base_model}](https://huggingface.co/{info.base_model})" if info.base_model else "the source model"
    made = f"[quantcli]({QUANTCLI_URL})" + (f" {info.quantcli_version}" if info.quantcli_version else "")
    n = len(info.ggufs) + len(info.folders)
    lines = [run_front_matter(info), f"# {title}", "",
             f"Quantized versions of {src}, made with {made} in one run"
             + (f" (recipe `{info.recipe}`)" if info.recipe else "") + f": {n} output{'s' if n != 1 else ''}.", ""]
    if info.ggufs and info.folders or len(info.folders) > 1:
        lines += ["The GGUF files sit at the root of the repo, where llama.cpp, Ollama and LM Studio look for them; "
                  "each safetensors folder has a subfolder of its own with its config.json, weights and tokenizer, "
                  "so no two outputs share a path.", ""]
    lines += ["## Outputs", "", "| Path in repo | Format | Type | Size | Load with |", "|---|---|---|---|---|"]
    for g in info.ggufs:
        name = g.parts[0] if g.parts else g.name
        lines.append(f"| [{name}](https://huggingface.co/{info.repo_id}/blob/main/{name}) | GGUF | {g.type} | "
                     f"{_size(g.size)} | llama.cpp, Ollama, LM Studio |")
    for f in info.folders:
        loader = run_loader(f.format)
        users = "quantcli's engine only" if loader.vllm_flags is None else \
            ("transformers, vLLM" if not loader.packages.replace("transformers", "").strip()
             else f"transformers ({loader.packages.replace('transformers', '').strip()}), vLLM")
        lines.append(f"| {f.prefix or '/'} | {loader.label} | {f.type} | {_size(f.size)} | {users} |")
    lines.append("")
    lines += quality_table([(g.name, g.quality) for g in info.ggufs]
                           + [(f.prefix or "/", f.quality) for f in info.folders])
    lines += ["## Load it", ""]
    if info.ggufs:
        gguf = CardInfo(repo_id=info.repo_id, quantized_by=info.quantized_by, files=info.ggufs)
        lines += ["### GGUF files", ""] + [ln.replace("### ", "#### ") for ln in _how_to_run(gguf)[2:]]
    for f in info.folders:
        lines += _load_folder(info.repo_id, f)
    lines += _provenance(info, info.ggufs)
    for f in info.folders:
        lines += [f"| {f.prefix}{c.name} | {'`' + c.sha256 + '`' if c.sha256 else '-'} |" for c in f.files]
    return "\n".join(lines) + "\n"


def _load_folder(repo_id: str, f: RunCardFolder) -> list[str]:
    """How to load one folder output, from its place in the repo."""
    loader = run_loader(f.format)
    s = f.scheme or {}
    head = f"### {loader.label} ({f.type}) in {_folder_label(f)}"
    details = []
    if s.get("num_bits"):
        group = "per output channel" if s.get("group_size") is None else str(s.get("group_size"))
        details.append(f"{s.get('num_bits')}-bit weights, group size {group}, "
                       + ("symmetric" if s.get("symmetric") else "asymmetric (zero points)")
                       + (f", method {METHODS.get(f.method or '', f.method)}" if f.method else "") + ".")
    lines = [head, "", *details, *([""] if details else []), loader.note, ""]
    if loader.vllm_flags is None:
        lines += ["```python", "from pathlib import Path", "from huggingface_hub import snapshot_download",
                  "from quantcli.engine import Engine", "from quantcli.engine.split_weights import open_folder", "",
                  f'folder = Path(snapshot_download("{repo_id}"' + (f', allow_patterns="{f.prefix}*"' if f.prefix else "")
                  + "))" + (f' / "{f.prefix.rstrip("/")}"' if f.prefix else ""),
                  "engine = Engine(open_folder(folder))", "```", ""]
        return lines
    sub = f', subfolder="{f.prefix.rstrip("/")}"' if f.prefix else ""
    if loader.packages:
        lines += ["```sh", f"pip install {loader.packages}", "```", ""]
    lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f'model = AutoModelForCausalLM.from_pretrained("{repo_id}"{sub})',
              f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{sub})', "```", ""]
    if f.prefix:
        local = f.prefix.rstrip("/")
        lines += ["vLLM serves a folder, not a subfolder of a repo: download it first.", "",
                  "```sh", f"hf download {repo_id} --include '{f.prefix}*' --local-dir .",
                  f"vllm serve ./{local}{loader.vllm_flags}", "```", ""]
    else:
        lines += ["```sh", f"vllm serve {repo_id}{loader.vllm_flags}", "```", ""]
    return lines
