"""The generation step: a prefill of the prompt, then one token at a time with a KV cache.

It is the greedy loop of `transformers`' `generate(max_new_tokens=new_tokens)`, written
out so the same program runs on fake tensors (the estimate) and on real ones (the
measurement):

- a `DynamicCache` made from the model's config, as `generate` makes one;
- one forward pass over the whole prompt (the prefill), then `new_tokens - 1` forward
  passes over the one token chosen last, so the cache ends holding
  `seq + new_tokens - 1` tokens (the last token chosen is never fed back);
- `logits_to_keep=1` when the model takes it, as `generate` passes it: only the last
  position's logits are computed, not a `seq x vocab` tensor;
- the chosen token is the argmax of a float32 copy of the last logits, appended to the
  running sequence with `torch.cat`, as greedy search does. On fake tensors the argmax
  has no value, but its shape is all the next step needs.

`DynamicCache` grows each layer's keys and values with `torch.cat`: every decoded token
reallocates them, so for a moment the old and the new copy of one layer's keys (or
values) are both alive. That is real memory and shows in the peak.

Every storage that has been a cache tensor is marked as KV cache after each forward
pass, so the peak's breakdown shows the cache as such; what is left at the end is
the final cache (`Report.kv_cache_bytes`).

Known limitations: greedy search only (beam search keeps `num_beams` caches and
reorders them; sampling adds a softmax over the vocabulary), no attention mask
(an all-ones mask changes nothing but its own bytes), decoder-only models only.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch

from nnmem.categories import Phase
from nnmem.errors import ModelError, UsageError
from nnmem.trace.step import Observer, StepConfig


def run_generate(model: torch.nn.Module, inputs: Any, config: StepConfig, observer: Observer) -> None:
    """Prefill `inputs` (the prompt's token ids), then decode `config.new_tokens - 1` more."""
    if config.new_tokens < 0:
        raise UsageError(f"new_tokens must be 0 or more, not {config.new_tokens}")
    prompt = _prompt_ids(inputs)
    base = _base_model(model)
    cache_keyword, logits_keyword = _keywords(base)
    cache = _new_cache(base)
    autocast: contextlib.AbstractContextManager[Any] = (
        torch.autocast(device_type="cpu", dtype=config.amp)
        if config.amp is not None
        else contextlib.nullcontext()
    )
    extra = {logits_keyword: 1} if logits_keyword else {}
    model.eval()
    with torch.no_grad(), autocast:
        observer.set_phase(Phase.FORWARD, 1)
        sequence = prompt
        step_input = prompt
        for _ in range(max(config.new_tokens, 1)):
            outputs = model(input_ids=step_input, use_cache=True, **{cache_keyword: cache}, **extra)
            observer.saw_kv_cache(cache_tensors(cache))
            logits = _logits(outputs)
            next_logits = logits[:, -1, :].to(copy=True, dtype=torch.float32)
            del outputs, logits
            next_tokens = torch.argmax(next_logits, dim=-1)
            sequence = torch.cat([sequence, next_tokens[:, None]], dim=-1)
            step_input = next_tokens[:, None]
            del next_logits, next_tokens
        observer.set_phase(Phase.SETUP, 2)
        del cache, sequence, step_input


def cache_tensors(cache: Any) -> list[torch.Tensor]:
    """The key and value tensors a transformers cache holds now."""
    found: list[torch.Tensor] = []
    for layer in getattr(cache, "layers", ()):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                found.append(tensor)
    return found


def _prompt_ids(inputs: Any) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor):
        ids = inputs
    elif isinstance(inputs, dict) and set(inputs) == {"input_ids"}:
        ids = inputs["input_ids"]
    else:
        what = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
        raise UsageError(
            f"mode=generate takes the prompt's token ids only (a tensor, or a dict with just"
            f" 'input_ids'), not {what}"
        )
    if ids.dim() != 2 or ids.is_floating_point():
        raise UsageError(
            f"the prompt must be integer token ids of shape (batch, seq), not {tuple(ids.shape)}"
        )
    return ids


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (whose forward takes **kwargs)."""
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    return base if isinstance(base, torch.nn.Module) else model


def _keywords(model: torch.nn.Module) -> tuple[str, str | None]:
    """The forward keywords for the cache and for keeping only the last logits."""
    parameters = inspect.signature(model.forward).parameters
    if "cache" in parameters:  # transformers >= 5.x
        cache_keyword = "cache"
    elif "past_key_values" in parameters:
        cache_keyword = "past_key_values"
    else:
        raise UsageError(
            f"mode=generate needs a transformers causal language model that takes a KV cache;"
            f" {type(model).__name__}.forward takes neither 'cache' nor 'past_key_values'"
        )
    logits_keyword = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in parameters), None)
    return cache_keyword, logits_keyword


def _new_cache(model: torch.nn.Module) -> Any:
    try:
        from transformers import DynamicCache
    except ImportError as error:  # pragma: no cover - transformers is a dependency of this mode
        raise UsageError("mode=generate needs the transformers package") from error
    model_config = getattr(model, "config", None)
    if model_config is None:
        raise UsageError(
            f"mode=generate needs a transformers model with a config; {type(model).__name__} has none"
        )
    if getattr(model_config, "is_encoder_decoder", False):
        raise UsageError(
            "mode=generate models decoder-only language models; encoder-decoder models are not supported"
        )
    try:
        return DynamicCache(config=model_config.get_text_config(decoder=True))
    except Exception as error:
        raise ModelError(
            f"cannot make a DynamicCache for {type(model).__name__}: {type(error).__name__}: {error}"
        ) from error


def _logits(outputs: Any) -> torch.Tensor:
    logits = getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, (tuple, list)) and outputs:
        logits = outputs[0]
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ModelError("mode=generate needs a model that returns logits of shape (batch, seq, vocab)")
    return logits
