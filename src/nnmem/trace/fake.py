"""Give a model fake parameters and fake inputs: the shapes without the memory.

`fake_parameters` swaps every parameter and buffer of a model (real or on the meta
device) for a fake CPU tensor of the same shape, stride and requires_grad, keeping
tied weights tied, and puts the originals back afterwards, so a user's model is left
as it was. Floating tensors take `dtype` when one is given, as `model.to(dtype)` would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map


def _fake_like(tensor: torch.Tensor, mode: FakeTensorMode, dtype: torch.dtype | None) -> torch.Tensor:
    target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
    with mode:
        return torch.empty_strided(tensor.shape, tensor.stride(), dtype=target, device="cpu")


@contextlib.contextmanager
def fake_parameters(
    model: torch.nn.Module, mode: FakeTensorMode, dtype: torch.dtype | None = None
) -> Iterator[None]:
    """Within the block, `model` holds fake parameters and buffers."""
    made: dict[int, torch.Tensor] = {}
    saved: list[tuple[dict[str, Any], str, Any]] = []
    for module in model.modules():
        tables: tuple[tuple[dict[str, Any], bool], ...] = (
            (module._parameters, True),
            (module._buffers, False),
        )
        for table, is_parameter in tables:
            for name, tensor in list(table.items()):
                if tensor is None:
                    continue
                if id(tensor) not in made:
                    fake = _fake_like(tensor, mode, dtype)
                    if is_parameter:
                        fake = torch.nn.Parameter(fake, requires_grad=tensor.requires_grad)
                    made[id(tensor)] = fake
                saved.append((table, name, tensor))
                table[name] = made[id(tensor)]
    _refresh_flat_weights(model)
    try:
        yield
    finally:
        for table, name, tensor in saved:
            table[name] = tensor
        _refresh_flat_weights(model)


def _refresh_flat_weights(model: torch.nn.Module) -> None:
    """RNN modules cache their weights in a flat list; rebuild it after a swap."""
    for module in model.modules():
        if isinstance(module, torch.nn.RNNBase):
            module._init_flat_weights()


def fake_inputs(inputs: Any, mode: FakeTensorMode, dtype: torch.dtype | None = None) -> Any:
    """The same structure of inputs, each tensor replaced by a fake of its shape."""

    def convert(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return _fake_like(value, mode, dtype)
        return value

    return tree_map(convert, inputs)
