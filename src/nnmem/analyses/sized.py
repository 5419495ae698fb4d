"""A model whose batch or sequence length can be set: what `nnmem.analyses.fit` searches over.

`Sized.at(size)` gives the model (or its factory) and inputs at `size`. Three makers, one per
front end:

- `sized_spec`: a text spec; the batch is the spec's input batch.
- `sized_inputs`: a model and example inputs; the batch is dimension 0 of every input tensor
  that has the first input's batch size, the sequence dimension 1 of every tensor that has its
  sequence length (`nnmem.analyses.whatif.with_batch` rules).
- `sized_hf`: a Hugging Face config (`nnmem.frontends.hf.from_hf_config`); it also knows the
  number of repeated layers, so that a large model is traced with a few layers and extrapolated
  (`nnmem.analyses.extrapolate.estimate_repeated`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from nnmem.categories import StrEnum
from nnmem.errors import UsageError
from nnmem.estimate import ModelLike


class Vary(StrEnum):
    """Which size `fit` searches."""

    BATCH = "batch"
    SEQ = "seq"


@dataclass(frozen=True)
class Sized:
    """A model and inputs at any size of `vary`, starting from `start`."""

    at: Callable[[int], tuple[ModelLike, Any]]  # size -> (model or zero-argument factory, inputs)
    vary: Vary
    start: int  # the size the user gave (where the search starts)
    describe: str
    blocks: int | None = None  # repeated layers (transformers): traced few, extrapolated
    with_blocks: Callable[[int, int], ModelLike] | None = field(default=None, repr=False)  # (size, n)


def parse_vary(value: str | Vary) -> Vary:
    try:
        return Vary(str(value).strip().lower())
    except ValueError:
        raise UsageError(f"--vary takes batch or seq, not '{value}'") from None


def sized_spec(spec: str, dtype: torch.dtype | None = None, batch: int = 1) -> Sized:
    """A text spec (file or inline text) at any batch size."""
    from nnmem.frontends.spec import load_spec
    from nnmem.zoo import FromSpec

    loaded = load_spec(spec)
    input_dtype = loaded.input_dtype(dtype or torch.float32)

    def at(size: int) -> tuple[ModelLike, Any]:
        return FromSpec(spec), torch.empty(loaded.input_shape(size), dtype=input_dtype, device="meta")

    return Sized(at, Vary.BATCH, batch, spec if "\n" not in spec and len(spec) < 80 else "text spec")


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, tuple | list) else ()
    return next((t for t in map(_first_tensor, items) if t is not None), None)


def _resize(inputs: Any, dim: int, size: int) -> Any:
    """`inputs` with dimension `dim` set to `size` in every tensor that shares the first one's."""
    first = _first_tensor(inputs)
    assert first is not None
    base = int(first.shape[dim])

    def change(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            if value.dim() > dim and value.shape[dim] == base:
                shape = (*value.shape[:dim], size, *value.shape[dim + 1 :])
                return torch.empty(shape, dtype=value.dtype, device="meta")
            return value
        if isinstance(value, dict):
            return {key: change(item) for key, item in value.items()}
        if isinstance(value, tuple | list):
            return type(value)(change(item) for item in value)
        return value

    return change(inputs)


def sized_inputs(
    model: ModelLike, inputs: Any, vary: Vary | str = Vary.BATCH, describe: str = "model"
) -> Sized:
    """`model` on `inputs` resized in dimension 0 (batch) or 1 (sequence)."""
    vary = parse_vary(vary)
    dim = 0 if vary is Vary.BATCH else 1
    first = _first_tensor(inputs)
    if first is None or first.dim() <= dim:
        raise UsageError(f"the inputs have no dimension {dim} to vary the {vary} in")
    return Sized(lambda size: (model, _resize(inputs, dim, size)), vary, int(first.shape[dim]), describe)


def sized_hf(
    config: Any,
    *,
    vary: Vary | str = Vary.BATCH,
    batch: int = 1,
    seq: int = 128,
    overrides: Mapping[str, Any] | None = None,
    **options: Any,
) -> Sized:
    """A Hugging Face model (`from_hf_config(config, ...)`) at any batch or sequence length.

    `options` go to `from_hf_config` (task, lora, gradient_checkpointing, attn, image_size).
    """
    from nnmem.frontends.hf import from_hf_config

    vary = parse_vary(vary)
    base = dict(overrides or {})
    first = from_hf_config(config, overrides=base, batch=batch, seq=seq, **options)
    layers = _layers_field(first.model.config)
    blocks = first.model.config.get(layers) if layers else None
    start = batch if vary is Vary.BATCH else seq

    def at(size: int) -> tuple[ModelLike, Any]:
        if size == start:
            return first.model, first.inputs
        batch_at, seq_at = (size, seq) if vary is Vary.BATCH else (batch, size)
        one_layer = {**base, layers: 1} if layers else base  # only the inputs are needed
        return first.model, from_hf_config(
            config, overrides=one_layer, batch=batch_at, seq=seq_at, **options
        ).inputs

    @functools.cache
    def factory(count: int) -> ModelLike:
        return from_hf_config(
            config, overrides={**base, layers: count}, batch=batch, seq=seq, **options
        ).model

    repeated = isinstance(blocks, int) and blocks > 1
    return Sized(
        at, vary, start, first.describe,
        blocks=blocks if repeated else None,
        with_blocks=(lambda size, count: factory(count)) if repeated else None,
    )  # fmt: skip


_LAYER_FIELDS = ("num_hidden_layers", "n_layer", "num_layers")


def _layers_field(config: Mapping[str, Any]) -> str:
    return next((name for name in _LAYER_FIELDS if isinstance(config.get(name), int)), "")


__all__ = ["Sized", "Vary", "parse_vary", "sized_hf", "sized_inputs", "sized_spec"]
