"""Reading an aten op's arguments and outputs, for the rules that size what kernels hide."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def arg(args: Sequence[Any], kwargs: Mapping[str, Any], index: int, name: str, default: Any = None) -> Any:
    """The op's argument at position `index`, else the keyword `name`, else `default`."""
    return args[index] if index < len(args) else kwargs.get(name, default)


def tensor_arg(args: Sequence[Any], kwargs: Mapping[str, Any], index: int, name: str) -> torch.Tensor:
    """As `arg`, for an argument that must be a tensor."""
    value = arg(args, kwargs, index, name)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"argument {name} is {type(value).__name__}, expected a tensor")
    return value


def nbytes(t: torch.Tensor | None) -> int:
    """Bytes of a tensor's elements (0 for None)."""
    return 0 if t is None else t.numel() * t.element_size()


def output_tensors(outputs: Any) -> list[torch.Tensor]:
    """The tensors among an op's outputs."""
    items = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    return [t for t in items if isinstance(t, torch.Tensor)]


def output_bytes(outputs: Any) -> int:
    """Bytes of all of an op's output tensors."""
    return sum(nbytes(t) for t in output_tensors(outputs))
