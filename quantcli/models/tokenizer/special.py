"""Special-token ids, the add-BOS/EOS/SEP flags, chat templates and normaliser flags of a tokenizer.

The rules follow llama.cpp's converter (gguf-py's SpecialVocab), so a GGUF from quantcli and one from
convert_hf_to_gguf.py tell llama.cpp the same thing:
- token texts come from tokenizer_config.json (`bos_token`, ...), ids from tokenizer.json's added tokens
  (falling back to the exported vocabulary), and config.json's `*_token_id` fill the roles still empty;
- whether BOS/EOS/SEP are added comes first from tokenizer.json's post-processor (ByteLevel adds nothing,
  RobertaProcessing adds all three, a TemplateProcessing adds what it names), then from tokenizer_config.json's
  `add_bos_token`/`add_eos_token`;
- a TemplateProcessing whose last token is not the EOS named in tokenizer_config.json makes that token the EOS,
  and the former EOS becomes the end-of-turn (eot) token, or end-of-message (eom) if eot is taken.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from gguf import GGUFValueType, Keys

from quantcli.io.files import read_text
from quantcli.io.gguf_metadata import MetaKV, kv_bool, kv_str, kv_u32
from quantcli.models.tokenizer.files import (
    CHAT_TEMPLATE_JINJA,
    CHAT_TEMPLATE_JSON,
    EXTRA_CHAT_TEMPLATES_DIR,
    TokenizerFiles,
    read_json,
)

log = logging.getLogger(__name__)

# Roles tokenizer_config.json names, in the order they are resolved. `cls` has no GGUF key (llama.cpp reads
# none) but still stands in for a missing BOS, as BERT-style configs rely on.
ROLES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
ID_KEYS: dict[str, str] = {
    "bos": Keys.Tokenizer.BOS_ID,
    "eos": Keys.Tokenizer.EOS_ID,
    "eot": Keys.Tokenizer.EOT_ID,
    "eom": Keys.Tokenizer.EOM_ID,
    "unk": Keys.Tokenizer.UNK_ID,
    "sep": Keys.Tokenizer.SEP_ID,
    "pad": Keys.Tokenizer.PAD_ID,
    "mask": Keys.Tokenizer.MASK_ID,
}
ADD_KEYS: dict[str, str] = {
    "bos": Keys.Tokenizer.ADD_BOS,
    "eos": Keys.Tokenizer.ADD_EOS,
    "sep": Keys.Tokenizer.ADD_SEP,
}
DEFAULT_TEMPLATE_NAME = "default"
# BertNormalizer flags. Older gguf-py releases (0.19 among them) lack these two keys; llama.cpp reads them under
# these names (src/llama-arch.cpp).
NORMALIZER_LOWERCASE_KEY = getattr(Keys.Tokenizer, "NORMALIZER_LOWERCASE", "tokenizer.ggml.normalizer.lowercase")
NORMALIZER_STRIP_ACCENTS_KEY = getattr(Keys.Tokenizer, "NORMALIZER_STRIP_ACCENTS",
                                       "tokenizer.ggml.normalizer.strip_accents")


@dataclass
class SpecialTokens:
    """The resolved special-token facts; `ids` and `add` keep the order in which roles were decided."""

    ids: dict[str, int] = field(default_factory=dict)
    add: dict[str, bool] = field(default_factory=dict)
    chat_template: str | list[dict[str, str]] | None = None
    lowercase: bool | None = None
    strip_accents: bool | None = None

    def metadata(self) -> list[MetaKV]:
        """The GGUF keys for these facts (roles without a GGUF key, like cls, are left out)."""
        out = [kv_u32(ID_KEYS[role], tid) for role, tid in self.ids.items() if role in ID_KEYS]
        out += [kv_bool(ADD_KEYS[role], flag) for role, flag in self.add.items() if role in ADD_KEYS]
        out += chat_template_metadata(self.chat_template)
        if self.lowercase is not None:
            out.append(kv_bool(NORMALIZER_LOWERCASE_KEY, self.lowercase))
        if self.strip_accents is not None:
            out.append(kv_bool(NORMALIZER_STRIP_ACCENTS_KEY, self.strip_accents))
        return out


def token_text(entry: Any) -> str | None:
    """tokenizer_config.json spells a special token as a string or as an AddedToken dict with "content"."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def _template_token(item: Any) -> str | None:
    """The special token named by one TemplateProcessing item ({"SpecialToken": {"id": ...}}), if any."""
    if isinstance(item, dict):
        token = item.get("SpecialToken")
        if isinstance(token, dict) and isinstance(token.get("id"), str):
            return token["id"] or None
    return None


def _template_sequence(item: Any) -> str | None:
    if isinstance(item, dict) and isinstance(item.get("Sequence"), dict):
        return item["Sequence"].get("id")
    return None


class _Resolver:
    """Holds the token texts by role while the post-processor and configs are read (the converter's state)."""

    def __init__(self, files: TokenizerFiles) -> None:
        self.has_config = files.tokenizer_config is not None
        self.names: dict[str, str] = {}
        for role in ROLES:
            text = token_text(files.config.get(f"{role}_token"))
            if text:
                self.names[role] = text
        self.roles: list[str] = list(ROLES)
        self.add: dict[str, bool] = {}

    def fallback_names(self) -> None:
        # BERT-style configs name only cls/sep; they play the parts of BOS/EOS.
        if not self.has_config:
            return
        if "bos" not in self.names and "cls" in self.names:
            self.names["bos"] = self.names["cls"]
        if "eos" not in self.names and "sep" in self.names:
            self.names["eos"] = self.names["sep"]

    def read_post_processor(self, post_processor: Any) -> None:
        if not isinstance(post_processor, dict):
            return
        steps = post_processor.get("processors", [post_processor])
        for step in steps if isinstance(steps, list) else []:
            if not isinstance(step, dict):
                continue
            kind = step.get("type")
            if kind == "ByteLevel":
                self.add.setdefault("bos", False)
                self.add.setdefault("eos", False)
            elif kind == "RobertaProcessing":
                self._read_roberta(step)
            elif kind == "TemplateProcessing":
                self._read_template(step)

    def _read_roberta(self, step: dict[str, Any]) -> None:
        self.add.update(bos=True, eos=True, sep=True)
        if not self.has_config:
            return
        for role, default_role in (("cls", "bos"), ("sep", "eos")):
            if role not in self.names:
                pair = step.get(role)
                text = pair[0] if isinstance(pair, list) and pair else self.names.get(default_role)
                if isinstance(text, str):
                    self.names[role] = text

    def _read_template(self, step: dict[str, Any]) -> None:
        single = step.get("single") if isinstance(step.get("single"), list) else []
        pair = step.get("pair") if isinstance(step.get("pair"), list) else []
        first = last = None
        if len(single) > 1:
            first = _template_token(single[0])
            if first:
                self._template_first(first)
            last = _template_token(single[-1])
            if last:
                self._template_last(last)
        if pair:
            self._template_pair(pair, first, last)

    def _template_first(self, first: str) -> None:
        if self.has_config and first not in (self.names.get("bos"), self.names.get("cls")):
            self.names.setdefault("bos", first)
            self.names.setdefault("cls", first)
        elif not self.has_config:
            self.names["bos"] = first
        self.add["bos"] = first in (self.names.get("bos"), self.names.get("cls"))
        if not self.add["bos"]:
            log.warning("tokenizer.json's post-processor starts with %r, which is neither BOS nor CLS", first)

    def _template_last(self, last: str) -> None:
        eos = self.names.get("eos")
        if not self.has_config:
            self.names["eos"] = last
        elif last != eos:
            # The template's closing token wins as EOS; keep the old EOS reachable as end of turn/message.
            for spare in ("eot", "eom"):
                if spare not in self.roles:
                    self.roles.append(spare)
                    if eos is not None:
                        self.names[spare] = eos
                    break
            else:
                log.warning("EOS %r replaced by %r with no eot/eom role left to keep it", eos, last)
            self.names["eos"] = last
        self.add["eos"] = True

    def _template_pair(self, pair: list[Any], first: str | None, last: str | None) -> None:
        start = 1 if first and _template_token(pair[0]) == first else 0
        stop = -1 if last and _template_token(pair[-1]) == last else None
        middle = pair[slice(start, stop)]
        if not middle or _template_sequence(middle[0]) != "A" or _template_sequence(middle[-1]) != "B":
            return
        separators = middle[1:-1]
        if not separators:
            return
        sep_names = {self.names.get("sep"), self.names.get("eos")} - {None}
        # "A [SEP] B" adds a separator only when the single template did not already close with one;
        # "A [SEP] [SEP] B" (RoBERTa-like) always does.
        first_sep = _template_token(separators[0])
        second_sep = _template_token(separators[1]) if len(separators) == 2 else None
        add_sep = (first_sep in sep_names and not last) or second_sep in sep_names
        self.add["sep"] = add_sep
        if add_sep and "sep" not in self.names and self.has_config and self.names.get("eos"):
            self.names["sep"] = self.names["eos"]


def _chat_template(files: TokenizerFiles) -> str | list[dict[str, str]] | None:
    """tokenizer_config.json's chat_template, else chat_template.jinja (plus additional_chat_templates/*.jinja as
    named templates), else chat_template.json."""
    configured = files.config.get("chat_template")
    if isinstance(configured, (str, list)):
        return configured
    if configured is not None:
        log.warning("ignoring chat_template of type %s in tokenizer_config.json", type(configured).__name__)
    jinja = files.folder / CHAT_TEMPLATE_JINJA
    if jinja.is_file():
        default = read_text(jinja, "chat template")
        extra_dir = files.folder / EXTRA_CHAT_TEMPLATES_DIR
        extras = sorted(extra_dir.glob("*.jinja")) if extra_dir.is_dir() else []
        if not extras:
            return default
        return [{"name": DEFAULT_TEMPLATE_NAME, "template": default}] + [
            {"name": path.stem, "template": read_text(path, "chat template")} for path in extras
        ]
    json_file = files.folder / CHAT_TEMPLATE_JSON
    if json_file.is_file():
        document = read_json(json_file)
        template = document.get("chat_template") if isinstance(document, dict) else None
        if isinstance(template, (str, list)):
            return template
    return None


def _template_name(name: str) -> str:
    # GGUF key suffixes stay alphanumeric, as llama.cpp's writer keeps them.
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in name)


def chat_template_metadata(template: str | list[dict[str, str]] | None) -> list[MetaKV]:
    """tokenizer.chat_template, plus tokenizer.chat_template.NAME and tokenizer.chat_templates for named ones.

    Example:
        >>> [kv.key for kv in chat_template_metadata("{{ messages }}")]
        ['tokenizer.chat_template']
    """
    if template is None:
        return []
    if isinstance(template, str):
        return [kv_str(Keys.Tokenizer.CHAT_TEMPLATE, template)]
    default = None
    named: list[MetaKV] = []
    names: list[str] = []
    for choice in template:
        if not isinstance(choice, dict) or not isinstance(choice.get("template"), str):
            continue
        name = _template_name(str(choice.get("name", "")))
        if name == DEFAULT_TEMPLATE_NAME:
            default = choice["template"]
        elif name and name not in names:
            names.append(name)
            named.append(kv_str(Keys.Tokenizer.CHAT_TEMPLATE_N.format(name=name), choice["template"]))
    out = named
    if names:
        out.append(MetaKV(Keys.Tokenizer.CHAT_TEMPLATES, names, GGUFValueType.ARRAY, GGUFValueType.STRING))
    if default is not None:
        out.append(kv_str(Keys.Tokenizer.CHAT_TEMPLATE, default))
    return out


def _normalizer_flags(normalizer: Any, found: SpecialTokens) -> None:
    if not isinstance(normalizer, dict):
        return
    kind = normalizer.get("type")
    if kind == "Lowercase":
        found.lowercase = True
    elif kind == "StripAccents":
        found.strip_accents = True
    elif kind == "BertNormalizer":
        if "lowercase" in normalizer:
            found.lowercase = normalizer["lowercase"]
        if "strip_accents" in normalizer:
            found.strip_accents = normalizer["strip_accents"]
    elif kind == "Sequence":
        for inner in normalizer.get("normalizers") or []:
            _normalizer_flags(inner, found)


def _valid_id(role: str, value: Any, n_vocab: int, source: str) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    if 0 <= value < n_vocab:
        return value
    log.warning("ignoring %s token id %d from %s: the vocabulary has %d tokens", role, value, source, n_vocab)
    return None


def read_special_tokens(files: TokenizerFiles, config: dict[str, Any], tokens: list[str]) -> SpecialTokens:
    """Resolve special-token ids, add flags, chat template and normaliser flags for an exported vocabulary.

    `config` is the model's config.json; `tokens` the exported token texts (ids outside them are dropped).

    Example:
        >>> found = read_special_tokens(files, config, tokens)  # doctest: +SKIP
        >>> found.ids["eos"], found.add  # doctest: +SKIP
        (2, {'bos': False, 'eos': False})
    """
    found = SpecialTokens()
    resolver = _Resolver(files)
    if files.tokenizer_json is not None:
        resolver.fallback_names()
        resolver.read_post_processor(files.tokenizer_json.get("post_processor"))
        _normalizer_flags(files.tokenizer_json.get("normalizer"), found)
    found.add = dict(resolver.add)
    found.chat_template = _chat_template(files)
    n_vocab = len(tokens)
    added_by_text: dict[str, int] = {}
    for entry in files.json_added_tokens:
        added_by_text.setdefault(entry["content"], entry["id"])
    if files.tokenizer_config is not None:
        for role in resolver.roles:
            flag = files.config.get(f"add_{role}_token")
            if isinstance(flag, bool):
                if role not in found.add:
                    found.add[role] = flag
                elif found.add[role] != flag:
                    log.warning("tokenizer_config.json says add_%s_token=%s but tokenizer.json's post-processor "
                                "says %s; using the post-processor", role, flag, found.add[role])
            text = resolver.names.get(role)
            if text is None or role in found.ids:
                continue
            token_id = added_by_text.get(text)
            if token_id is None and text in tokens:
                token_id = tokens.index(text)
            valid = _valid_id(role, token_id, n_vocab, str(files.folder))
            if valid is not None:
                found.ids[role] = valid
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for role in resolver.roles:
        if role in found.ids:
            continue
        value = config.get(f"{role}_token_id", text_config.get(f"{role}_token_id"))
        valid = _valid_id(role, value, n_vocab, "config.json")
        if valid is not None:
            found.ids[role] = valid
    return found


def describe(found: SpecialTokens, tokens: list[str]) -> str:
    """A one-line summary for logs, e.g. "bos=<s>(1) eos=</s>(2)"."""
    return " ".join(f"{role}={tokens[tid]!r}({tid})" for role, tid in found.ids.items())

