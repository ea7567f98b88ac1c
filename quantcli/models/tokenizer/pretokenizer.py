"""Choose llama.cpp's BPE pre-tokenizer name from the pre_tokenizer definition inside tokenizer.json.

llama.cpp's own converter hashes the token ids of a probe text to recognise a model; that breaks as soon as a
vocabulary changes. Here the definition itself is compared: both the tokenizer.json side and the known table are
reduced to a canonical list of steps, so spelling differences that do not change the split (defaults written out
or left implicit, Digits vs the equivalent Split, nested Sequences, trim_offsets) do not matter.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from quantcli.errors import UnsupportedError
from quantcli.models.tokenizer.known_pretokenizers import (
    KNOWN_PRE_TOKENIZERS,
    LLAMA_CPP_PRE_NAMES,
    KnownPreTokenizer,
)

log = logging.getLogger(__name__)

OVERRIDE_OPTION = "--pre-tokenizer"
SUMMARY_REGEX_CHARS = 40  # a regex longer than this is cut in messages
# Normalisers llama.cpp can live with: none, or NFC (which it skips; see known_pretokenizers).
HARMLESS_NORMALIZERS = ("none", "nfc")
# Tie-break weights when several names share a definition: ignore_merges changes ids, clean_spaces only the
# decoded text, the normaliser only non-NFC input.
WEIGHT_IGNORE_MERGES = 4
WEIGHT_CLEAN_SPACES = 2
WEIGHT_NORMALIZER = 1


def _canonical_regex(regex: str) -> str:
    # A raw line break and the escape \n mean the same to every regex engine here.
    return regex.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


def _isolated_split(regex: str) -> dict[str, Any]:
    return {"split": {"regex": regex}, "behavior": "isolated", "invert": False}


def _canonical_step(step: Any) -> list[dict[str, Any]]:
    if not isinstance(step, dict):
        return [{"other": step}]
    kind = step.get("type")
    if kind == "Sequence":
        return [c for inner in step.get("pretokenizers") or [] for c in _canonical_step(inner)]
    if kind == "Split":
        pattern = step.get("pattern") or {}
        if "Regex" in pattern:
            target = {"regex": _canonical_regex(str(pattern["Regex"]))}
        else:
            target = {"string": pattern.get("String")}
        return [{"split": target, "behavior": str(step.get("behavior", "")).lower(),
                 "invert": bool(step.get("invert", False))}]
    if kind == "ByteLevel":
        # trim_offsets only moves offsets, never ids.
        return [{"byte_level": {"add_prefix_space": bool(step.get("add_prefix_space", True)),
                                "use_regex": bool(step.get("use_regex", True))}}]
    if kind == "Digits":
        # Digits uses Unicode's numeric classes, as \p{N} does; runs are kept together unless individual.
        return [_isolated_split("\\p{N}" if step.get("individual_digits", False) else "\\p{N}+")]
    if kind == "Punctuation":
        return [{"punctuation": str(step.get("behavior", "Isolated")).lower()}]
    return [{"other": {k: v for k, v in step.items()}}]


def canonical_definition(pre_tokenizer: Any) -> str:
    """Canonical JSON of a tokenizer.json pre_tokenizer: equal strings split text the same way.

    Example:
        >>> a = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}]}
        >>> b = {"type": "Split", "pattern": {"Regex": "\\\\p{N}"}, "behavior": "Isolated", "invert": False}
        >>> canonical_definition(a) == canonical_definition(b)
        True
    """
    steps = [] if pre_tokenizer is None else _canonical_step(pre_tokenizer)
    return json.dumps(steps, sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def normalizer_kind(normalizer: Any) -> str:
    """"none", "nfc", or the canonical JSON of any other normaliser.

    Example:
        >>> normalizer_kind(None), normalizer_kind({"type": "NFC"}), normalizer_kind({"type": "Lowercase"})
        ('none', 'nfc', '{"type":"Lowercase"}')
    """
    if normalizer is None:
        return "none"
    if isinstance(normalizer, dict):
        if normalizer.get("type") == "NFC":
            return "nfc"
        if normalizer.get("type") == "Sequence":
            inner = {normalizer_kind(n) for n in normalizer.get("normalizers") or []} - {"none"}
            if not inner:
                return "none"
            if inner == {"nfc"}:
                return "nfc"
    return json.dumps(normalizer, sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def _short_regex(regex: str) -> str:
    shown = _canonical_regex(regex)
    return shown if len(shown) <= SUMMARY_REGEX_CHARS else shown[:SUMMARY_REGEX_CHARS] + "..."


def _summarize_step(step: Any) -> list[str]:
    if not isinstance(step, dict):
        return [repr(step)]
    kind = step.get("type")
    if kind == "Sequence":
        return [s for inner in step.get("pretokenizers") or [] for s in _summarize_step(inner)]
    if kind == "Split":
        pattern = step.get("pattern") or {}
        shown = f"/{_short_regex(str(pattern['Regex']))}/" if "Regex" in pattern else repr(pattern.get("String"))
        invert = ", inverted" if step.get("invert") else ""
        return [f"Split({shown} {str(step.get('behavior', '')).lower()}{invert})"]
    if kind == "ByteLevel":
        return [f"ByteLevel(add_prefix_space={step.get('add_prefix_space', True)}, "
                f"use_regex={step.get('use_regex', True)})"]
    if kind == "Digits":
        return [f"Digits(individual_digits={step.get('individual_digits', False)})"]
    params = ", ".join(f"{k}={v!r}" for k, v in step.items() if k != "type")
    return [f"{kind}({params})"]


def summarize(pre_tokenizer: Any, normalizer: Any = None) -> str:
    """A short one-line description of a pre_tokenizer (regexes cut), for messages.

    Example:
        >>> summarize({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True})
        'ByteLevel(add_prefix_space=False, use_regex=True)'
    """
    steps = _summarize_step(pre_tokenizer) if pre_tokenizer is not None else ["none"]
    text = " -> ".join(steps) if steps else "empty Sequence"
    kind = normalizer_kind(normalizer)
    if kind != "none":
        text += f" with normalizer {kind if len(kind) <= SUMMARY_REGEX_CHARS else kind[:SUMMARY_REGEX_CHARS] + '...'}"
    return text


def valid_names_text() -> str:
    return ", ".join(sorted(LLAMA_CPP_PRE_NAMES))


def check_name(name: str) -> str:
    """Accept an explicit pre-tokenizer name if llama.cpp knows it.

    Example:
        >>> check_name("qwen2")
        'qwen2'
    """
    if name not in LLAMA_CPP_PRE_NAMES:
        raise UnsupportedError(
            f"unknown pre-tokenizer name {name!r} for {OVERRIDE_OPTION}; llama.cpp knows: {valid_names_text()}."
        )
    return name


_TABLE_BY_DEFINITION: dict[str, list[KnownPreTokenizer]] = {}
for _row in KNOWN_PRE_TOKENIZERS:
    _TABLE_BY_DEFINITION.setdefault(canonical_definition(_row.definition), []).append(_row)


def _score(row: KnownPreTokenizer, ignore_merges: bool, clean_spaces: bool | None, normalizer: str) -> int:
    score = WEIGHT_IGNORE_MERGES if row.ignore_merges == ignore_merges else 0
    if clean_spaces is not None and row.clean_spaces == clean_spaces:
        score += WEIGHT_CLEAN_SPACES
    if row.normalizer is not None and row.normalizer == normalizer:
        score += WEIGHT_NORMALIZER
    return score


def detect_pre_tokenizer(tokenizer_json: dict[str, Any], tokenizer_config: dict[str, Any], source: str) -> str:
    """The llama.cpp pre-tokenizer name whose splitting matches tokenizer.json's pre_tokenizer.

    `source` names the file in messages. Raises UnsupportedError when no known definition matches.

    Example:
        >>> tj = {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
        ...       "model": {"type": "BPE"}}
        >>> detect_pre_tokenizer(tj, {}, "tokenizer.json")
        'gpt-2'
    """
    pre_tokenizer = tokenizer_json.get("pre_tokenizer")
    normalizer = tokenizer_json.get("normalizer")
    kind = normalizer_kind(normalizer)
    candidates = _TABLE_BY_DEFINITION.get(canonical_definition(pre_tokenizer), [])
    if not candidates or kind not in HARMLESS_NORMALIZERS:
        raise UnsupportedError(
            f"{source} has a BPE pre-tokenizer quantcli does not recognise: {summarize(pre_tokenizer, normalizer)}. "
            f"If you know which llama.cpp pre-tokenizer splits text the same way, pass {OVERRIDE_OPTION} NAME "
            f"with one of: {valid_names_text()}."
        )
    model = tokenizer_json.get("model") if isinstance(tokenizer_json.get("model"), dict) else {}
    ignore_merges = bool(model.get("ignore_merges", False))
    clean = tokenizer_config.get("clean_up_tokenization_spaces")
    clean_spaces = clean if isinstance(clean, bool) else None
    best = max(candidates, key=lambda row: _score(row, ignore_merges, clean_spaces, kind))
    if best.ignore_merges != ignore_merges:
        log.warning("%s: pre-tokenizer %r has ignore_merges=%s in llama.cpp but %s in the tokenizer; "
                    "a few words may tokenize differently", source, best.name, best.ignore_merges, ignore_merges)
    return best.name
