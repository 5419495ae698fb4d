"""Hugging Face configs from what a user has: a config.json, a dict, a config object or a
model type, with command-line style overrides applied before the config is built.

Nothing is downloaded: a Hub id is refused. Overrides are checked against the config's
fields (with the nearest name suggested) and applied before the config is built, so
derived fields follow them (a new `hidden_size` re-derives Llama's `head_dim`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from nnmem.errors import ModelError, UsageError, did_you_mean


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """`["hidden_size=2048", "rope_scaling=null"]` -> `{"hidden_size": 2048, "rope_scaling": None}`.

    A value is read as JSON (numbers, true/false/null, lists, objects, quoted strings),
    as a bool or None in Python's spelling, and otherwise kept as a string.
    """
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set '{pair}': write a config field as KEY=VALUE, e.g. num_hidden_layers=2")
        result[key] = parse_value(text.strip())
    return result


def parse_value(text: str) -> Any:
    """One override value from the command line: JSON if it parses, else a string."""
    spelled = {"true": True, "false": False, "none": None, "null": None}
    if text.lower() in spelled:
        return spelled[text.lower()]
    try:
        return json.loads(text)
    except ValueError:
        return text


def config_class(model_type: str) -> Any:
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        known = list(CONFIG_MAPPING.keys())
        raise UsageError(
            f"unknown model type '{model_type}'{did_you_mean(model_type, known)};"
            " transformers knows e.g. llama, mistral, gpt2, bert, vit"
        )
    return CONFIG_MAPPING[model_type]


def load_config(config: Any, overrides: dict[str, Any]) -> Any:
    from transformers import PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return _with_overrides(config.to_dict(), overrides, what="the given config")
    if isinstance(config, Mapping):
        return _with_overrides(dict(config), overrides, what="the given config dict")
    if not isinstance(config, (str, os.PathLike)):
        raise UsageError(
            f"config must be a path to config.json, a dict, a PretrainedConfig or a model type,"
            f" not {type(config).__name__}"
        )
    text = os.fspath(config)
    path = os.path.join(text, "config.json") if os.path.isdir(text) else text
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as file:
                loaded = json.load(file)
        except (OSError, ValueError) as error:
            raise UsageError(f"cannot read '{path}' as a JSON config: {error}") from error
        if not isinstance(loaded, dict):
            raise UsageError(f"'{path}' holds a JSON {type(loaded).__name__}, not a config object")
        return _with_overrides(loaded, overrides, what=f"'{path}'")
    if text.endswith(".json") or os.sep in text or "/" in text:
        raise UsageError(
            f"no such config file '{text}'. nnmem never downloads: pass a local config.json,"
            " its folder, or a model type such as llama"
        )
    cls = config_class(text)
    _check_fields(cls(), overrides, what=f"the {text} config")
    try:
        return cls(**overrides)
    except Exception as error:
        raise ModelError(
            f"the {text} config does not build with {overrides}: {type(error).__name__}: {error}"
        ) from error


def _with_overrides(values: dict[str, Any], overrides: dict[str, Any], what: str) -> Any:
    model_type = values.get("model_type")
    if not isinstance(model_type, str):
        raise UsageError(f"{what} has no 'model_type'; transformers needs it to know the architecture")
    cls = config_class(model_type)
    try:
        base = cls.from_dict(dict(values))
    except Exception as error:
        raise ModelError(
            f"{what} does not build as a {model_type} config: {type(error).__name__}: {error}"
        ) from error
    if not overrides:
        return base
    _check_fields(base, overrides, what=what)
    merged = {**values, **overrides}
    if "head_dim" not in overrides and _head_dim_is_derived(base):
        merged.pop("head_dim", None)  # recomputed from the new hidden size and head count
    try:
        return cls.from_dict(merged)
    except Exception as error:
        raise ModelError(
            f"{what} does not build with {overrides}: {type(error).__name__}: {error}"
        ) from error


def _head_dim_is_derived(config: Any) -> bool:
    head_dim = getattr(config, "head_dim", None)
    hidden = getattr(config, "hidden_size", None)
    heads = getattr(config, "num_attention_heads", None)
    if not (isinstance(head_dim, int) and isinstance(hidden, int) and isinstance(heads, int) and heads > 0):
        return False
    return head_dim == hidden // heads


def _check_fields(config: Any, overrides: Mapping[str, Any], what: str) -> None:
    known = set(config.to_dict()) | set(getattr(config, "attribute_map", {}))
    for key in overrides:
        if key not in known:
            raise UsageError(f"{what} has no field '{key}'{did_you_mean(key, known)}")
