"""What if the batch were larger: the steady-state peak of the same step at a few batch sizes.

Each size is a full `estimate` of the same model and settings on inputs whose batch
dimension is changed: the first dimension of every input tensor that has the first
input's batch size (a spec's input, or each `--input` of the CLI). Tensors whose first
dimension differs (a shared mask, a table) are left as they are.

Known limitations: the batch is taken to be dimension 0, as in PyTorch's usual layouts; a
model that wants (T, B, ...) inputs needs its own input builder (`inputs_for`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from nnmem.errors import UsageError
from nnmem.estimate import ModelLike, estimate


def batch_of(inputs: Any) -> int:
    """The batch size of `inputs`: the first dimension of its first tensor."""
    for tensor in _tensors(inputs):
        if tensor.dim() == 0:
            raise UsageError("cannot change the batch of a 0-dimensional input")
        return int(tensor.shape[0])
    raise UsageError("the inputs hold no tensor whose batch could be changed")


def with_batch(inputs: Any, batch: int) -> Any:
    """`inputs` (a tensor, tuple, list or dict of them) with `batch` samples instead, on `meta`."""
    if batch < 1:
        raise UsageError(f"a batch size must be at least 1, not {batch}")
    base = batch_of(inputs)

    def change(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            if value.dim() > 0 and value.shape[0] == base:
                return torch.empty((batch, *value.shape[1:]), dtype=value.dtype, device="meta")
            return value
        if isinstance(value, dict):
            return {key: change(item) for key, item in value.items()}
        if isinstance(value, tuple | list):
            return type(value)(change(item) for item in value)
        return value

    return change(inputs)


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    if isinstance(value, tuple | list):
        return [t for item in value for t in _tensors(item)]
    return []


def default_batches(batch: int) -> tuple[int, ...]:
    """Four sizes around `batch`: half, itself, twice and four times (1, 2, 4, 8 from 1)."""
    sizes = sorted({max(1, batch // 2), batch, 2 * batch, 4 * batch})
    if len(sizes) < 4:
        sizes.append(8 * batch)
    return tuple(sizes)


def parse_batches(text: str) -> tuple[int, ...]:
    """`"1,8,32"` -> (1, 8, 32), sorted and without repeats."""
    try:
        sizes = sorted({int(part) for part in text.replace(" ", "").split(",") if part})
    except ValueError:
        raise UsageError(
            f"--batches '{text}': write batch sizes as integers joined by commas, e.g. 1,8,32,64"
        ) from None
    if not sizes or sizes[0] < 1:
        raise UsageError(f"--batches '{text}': give at least one batch size, each at least 1")
    return tuple(sizes)


def peaks_by_batch(
    model: ModelLike,
    inputs: Any,
    batches: Sequence[int],
    inputs_for: Callable[[int], Any] | None = None,
    **keywords: Any,
) -> tuple[tuple[int, int], ...]:
    """(batch, steady-state peak bytes) for each of `batches`; `keywords` go to `estimate`.

    `inputs_for(batch)` builds the inputs of one size; by default `with_batch(inputs, batch)`.
    """
    build = inputs_for or (lambda batch: with_batch(inputs, batch))
    return tuple((batch, estimate(model, build(batch), **keywords).peak_bytes) for batch in batches)
