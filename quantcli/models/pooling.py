"""The pooling a sentence-transformers model folder declares (modules.json -> its Pooling module's config).

Embedding models carry their pooling beside the weights, not in config.json; llama.cpp reads it from
`{arch}.pooling_type` to turn token states into one sentence vector.

    >>> sentence_transformers_pooling(Path("all-MiniLM-L6-v2"))  # doctest: +SKIP
    <PoolingType.MEAN: 1>
"""
from __future__ import annotations

import json
from pathlib import Path

from gguf import PoolingType

from ..errors import InputError, UnsupportedError

MODULES_FILE = "modules.json"
# sentence-transformers' flags, in the order llama.cpp's converter gives them precedence
_FLAGS: tuple[tuple[str, PoolingType], ...] = (
    ("pooling_mode_mean_tokens", PoolingType.MEAN),
    ("pooling_mode_cls_token", PoolingType.CLS),
    ("pooling_mode_lasttoken", PoolingType.LAST),
)
_MODES: dict[str, PoolingType] = {"mean": PoolingType.MEAN, "cls": PoolingType.CLS, "lasttoken": PoolingType.LAST}


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}.", hint="Fix or re-download the sentence-transformers files.") from exc


def sentence_transformers_pooling(folder: Path | None) -> PoolingType | None:
    """The folder's pooling, or None when it is not a sentence-transformers model (no modules.json)."""
    if folder is None or not (folder / MODULES_FILE).is_file():
        return None
    modules = _read_json(folder / MODULES_FILE)
    if not isinstance(modules, list):
        raise InputError(f"{folder / MODULES_FILE} is not a list of modules.", hint="Fix or re-download modules.json.")
    pooling_dir = next((m.get("path") for m in modules
                        if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling")), None)
    if pooling_dir is None:
        return None
    config = _read_json(folder / str(pooling_dir) / "config.json")
    if not isinstance(config, dict):
        raise InputError(f"{folder / str(pooling_dir) / 'config.json'} is not a JSON object.",
                         hint="Fix or re-download the pooling config.")
    for flag, kind in _FLAGS:
        if config.get(flag):
            return kind
    if config.get("pooling_mode") in _MODES:
        return _MODES[config["pooling_mode"]]
    raise UnsupportedError(f"the pooling in {folder / str(pooling_dir)} is not mean, cls or last-token, which is all "
                           "llama.cpp can apply.", hint="Convert the model without its pooling module (remove modules.json) "
                           "and pool the token embeddings yourself.")
