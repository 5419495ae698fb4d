"""What a parsed text spec is: an input, then a tree of layers, residual blocks and repeats.

These are plain frozen values. The parser (`syntax.py`) makes them, the compiler
(`build.py`) turns them into modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nnmem.categories import StrEnum

Value = int | float | bool | str | tuple[int, ...]
"""An argument's value: a count, a fraction, a flag, a word, or a size such as 3x3."""


class Layout(StrEnum):
    """What the dimensions of one sample mean, and so how its tensor is laid out.

    A spec writes shapes channels-last, as people do (H x W x C); the tensor is in
    PyTorch's order, shown here per sample (the batch dimension comes first in front).
    """

    IMAGE = "image"  # per sample (C, H, W): nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d
    SIGNAL = "signal"  # per sample (C, L): nn.Conv1d, nn.MaxPool1d, nn.BatchNorm1d
    SEQUENCE = "sequence"  # per sample (T, E), batch first: nn.LSTM, nn.MultiheadAttention
    VECTOR = "vector"  # per sample (F,): nn.Linear
    TOKENS = "tokens"  # per sample (T,) of int64 token ids: nn.Embedding

    def described(self) -> str:
        """The layout in a sentence: "an image", "token ids"."""
        return (
            "token ids" if self is Layout.TOKENS else f"{'an' if self is Layout.IMAGE else 'a'} {self.value}"
        )


@dataclass(frozen=True)
class Position:
    """Where something is written in a spec: 1-based line and column."""

    line: int
    column: int


@dataclass(frozen=True)
class SampleShape:
    """The shape of one sample (no batch dimension) in PyTorch order, with its layout."""

    layout: Layout
    dims: tuple[int, ...]

    @property
    def elements(self) -> int:
        """How many values one sample holds."""
        return math.prod(self.dims)

    @property
    def spatial(self) -> tuple[int, ...]:
        """The spatial dimensions of an image (H, W) or a signal (L,); () for the rest."""
        return self.dims[1:] if self.layout in (Layout.IMAGE, Layout.SIGNAL) else ()

    def written(self) -> str:
        """The shape as a spec writes it, channels last: 50x50x3 for an image (3, 50, 50)."""
        if self.layout in (Layout.IMAGE, Layout.SIGNAL):
            return "x".join(str(d) for d in (*self.dims[1:], self.dims[0]))
        return "x".join(str(d) for d in self.dims)


class LayerProblem(Exception):
    """A layer cannot take this input; the compiler adds the layer's name and position."""


@dataclass(frozen=True)
class Args:
    """A layer's arguments after parsing: every parameter of its kind, defaults filled in."""

    values: tuple[tuple[str, Value | None], ...]

    def get(self, name: str) -> Value | None:
        """The value of parameter `name` (None where the kind's default is "not given")."""
        for key, value in self.values:
            if key == name:
                return value
        raise KeyError(f"no parameter {name!r} in {self.values}")

    def has(self, name: str) -> bool:
        """Whether the layer kind has a parameter called `name`."""
        return any(key == name for key, _ in self.values)

    def count(self, name: str) -> int:
        """A count such as `channels` (the parser has checked its type)."""
        value = self.get(name)
        assert isinstance(value, int) and not isinstance(value, bool), (name, value)
        return value

    def number(self, name: str) -> float:
        """A number such as a dropout probability or an epsilon."""
        value = self.get(name)
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (name, value)
        return float(value)

    def boolean(self, name: str) -> bool:
        """A true/false option such as `bias`."""
        value = self.get(name)
        assert isinstance(value, bool), (name, value)
        return value

    def word(self, name: str) -> str:
        """A word option such as `activation=gelu`."""
        value = self.get(name)
        assert isinstance(value, str), (name, value)
        return value

    def size(self, name: str, dims: int, default: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """A size such as a kernel, one number per spatial dimension.

        One number means the same size in every dimension (`3` is 3x3 on an image); a
        size written with more numbers must have exactly `dims` of them.
        """
        value = self.get(name)
        if value is None and default is not None:
            return default
        if isinstance(value, int) and not isinstance(value, bool):
            return (value,) * dims
        assert isinstance(value, tuple), (name, value)
        if len(value) != dims:
            written = "x".join(str(v) for v in value)
            example = "x".join(["3"] * dims)
            raise LayerProblem(
                f"{name} {written} has {len(value)} numbers but this input has {dims} spatial "
                f"dimension{'s' if dims > 1 else ''}; write it as {example} or as one number"
            )
        return value


@dataclass(frozen=True)
class InputNode:
    """`input SHAPE [layout]`: the one input of the network."""

    shape: SampleShape
    position: Position


@dataclass(frozen=True)
class LayerNode:
    """One layer: `[name:] kind arguments...`."""

    kind: str  # the canonical name in the layer registry
    name: str | None  # the name the user gave, if any
    args: Args
    position: Position  # of the kind word


@dataclass(frozen=True)
class ResidualNode:
    """`[name:] residual { ... }`: output = body(x) + x, or + projection(x) when shapes differ."""

    name: str | None
    body: tuple[Node, ...]
    position: Position


@dataclass(frozen=True)
class RepeatNode:
    """`repeat N { ... }`: the body written N times over."""

    count: int
    body: tuple[Node, ...]
    position: Position


Node = LayerNode | ResidualNode | RepeatNode


@dataclass(frozen=True)
class Spec:
    """A parsed text spec: its input, its layers, and where it came from (for messages)."""

    input: InputNode
    body: tuple[Node, ...]
    source: str  # a file path, or "<spec>" for inline text
    text: str

    @property
    def layout(self) -> Layout:
        """The layout of the input."""
        return self.input.shape.layout

    def input_shape(self, batch: int) -> tuple[int, ...]:
        """The input tensor's shape for `batch` samples, in PyTorch order: (N, C, H, W) etc."""
        return (batch, *self.input.shape.dims)

    def input_dtype(self, dtype: torch.dtype = torch.float32) -> torch.dtype:
        """The input tensor's dtype: int64 for token ids, else the model's float `dtype`."""
        return torch.int64 if self.layout is Layout.TOKENS else dtype
