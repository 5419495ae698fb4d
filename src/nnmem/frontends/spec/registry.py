"""The registry of layer kinds: what each word of a spec means and how it becomes a module.

Adding a layer kind is adding one function decorated with `@register_layer(...)` in
`layers/`: the decorator declares the kind's arguments (for the parser and the docs) and
the function builds the `torch.nn` module for a given input, with its parameter formula.
The decorator refuses a name or alias that is already taken.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nnmem.categories import StrEnum
from nnmem.frontends.spec.nodes import Args, Layout, SampleShape, Value


class ValueType(StrEnum):
    """The forms an argument's value can take."""

    COUNT = "count"  # a positive integer: 32
    SIZE = "size"  # a positive integer, or one per dimension: 3, 3x3
    PADDING = "padding"  # a non-negative integer or one per dimension, or same / valid
    FRACTION = "fraction"  # a number from 0 up to (not including) 1: 0.5
    NUMBER = "number"  # a positive number: 1e-5
    BOOL = "bool"  # true or false
    WORD = "word"  # one of the parameter's choices


_INTEGER = re.compile(r"[0-9]+(_[0-9]+)*")
_SIZE = re.compile(r"[0-9]+([xX×][0-9]+)*")
_NUMBER = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")
_LARGEST = 2**40  # a bound that keeps every product of sizes inside int64 territory


def _integer(text: str, *, least: int) -> int:
    if not _INTEGER.fullmatch(text):
        raise ValueError("an integer")
    value = int(text.replace("_", ""))
    if value < least:
        raise ValueError(f"an integer of at least {least}")
    if value > _LARGEST:
        raise ValueError(f"an integer of at most {_LARGEST:,}")
    return value


def _size(text: str, *, least: int) -> int | tuple[int, ...]:
    if not _SIZE.fullmatch(text):
        raise ValueError("a size such as 3 or 3x3")
    parts = tuple(_integer(part, least=least) for part in re.split("[xX×]", text))
    return parts[0] if len(parts) == 1 else parts


def convert(kind: ValueType, text: str, choices: tuple[str, ...] = ()) -> Value:
    """Read `text` as a value of `kind`; a ValueError says what was expected instead."""
    if kind is ValueType.COUNT:
        return _integer(text, least=1)
    if kind is ValueType.SIZE:
        return _size(text, least=1)
    if kind is ValueType.PADDING:
        if text in ("same", "valid"):
            return text
        return _size(text, least=0)
    if kind is ValueType.BOOL:
        if text in ("true", "false"):
            return text == "true"
        raise ValueError("true or false")
    if kind is ValueType.WORD:
        if text in choices:
            return text
        raise ValueError(" or ".join(repr(c) for c in choices))
    if not _NUMBER.fullmatch(text):
        raise ValueError("a number such as 0.5 or 1e-5")
    number = float(text)
    if kind is ValueType.FRACTION and not 0 <= number < 1:
        raise ValueError("a number from 0 up to (not including) 1")
    if kind is ValueType.NUMBER and not 0 < number < math.inf:
        raise ValueError("a positive number")
    return number


@dataclass(frozen=True)
class Param:
    """One argument of a layer kind: positional (in order) or `name=value`."""

    name: str
    type: ValueType
    default: Value | None = None  # None: required if positional, "not given" if an option
    help: str = ""
    choices: tuple[str, ...] = ()  # for ValueType.WORD
    required: bool = False


@dataclass(frozen=True)
class Flag:
    """A bare word that sets an option: `same` is `pad=same`, `ceil` is `ceil=true`."""

    word: str
    option: str
    value: Value


class Counting(StrEnum):
    """How the textbook counts a layer's output among the activations."""

    NEW = "new"  # a new tensor: conv, pool, fc, norm... counted once
    IN_PLACE = "in_place"  # relu and friends: overwrite their input, 0 new elements
    VIEW = "view"  # flatten, transpose: a view of the input, 0 new elements


@dataclass(frozen=True)
class Factory:
    """Where and in which float dtype modules are made (`meta` for shapes only)."""

    device: torch.device
    dtype: torch.dtype

    @property
    def kwargs(self) -> dict[str, Any]:
        """The `device=`, `dtype=` keywords every weighted `torch.nn` layer accepts."""
        return {"device": self.device, "dtype": self.dtype}


@dataclass(frozen=True)
class Formula:
    """A parameter count with its derivation: `3·3·3·32 + 32` is 896."""

    text: str
    value: int

    @staticmethod
    def product(*factors: int) -> Formula:
        """A product of sizes, written a·b·c."""
        return Formula("·".join(str(f) for f in factors), math.prod(factors))

    def __add__(self, other: Formula) -> Formula:
        if self.value == 0:
            return other
        if other.value == 0:
            return self
        return Formula(f"{self.text} + {other.text}", self.value + other.value)

    def times(self, k: int) -> Formula:
        """k copies of this count: k·(a + b)."""
        if k == 1 or self.value == 0:
            return self
        text = f"({self.text})" if " + " in self.text else self.text
        return Formula(f"{k}·{text}", k * self.value)

    def shown(self) -> str:
        """`3·3·3·32 + 32 = 896`, or just `896` when there is nothing to derive."""
        result = f"{self.value:,}"
        return result if self.text in (str(self.value), result) else f"{self.text} = {result}"


NO_PARAMETERS = Formula("0", 0)


@dataclass(frozen=True)
class Built:
    """What a layer kind makes for one input: the module and its parameter formula."""

    module: nn.Module
    formula: Formula = NO_PARAMETERS
    layout: Layout | None = None  # the output's layout; None: the same as the input's
    counted_elements: int | None = None  # new elements per sample; None: the output's


Builder = Callable[[Args, SampleShape, Factory], Built]
Explain = Callable[[Args, SampleShape], "str | None"]


@dataclass(frozen=True)
class LayerKind:
    """A word of the spec language that makes one layer."""

    name: str
    prefix: str  # automatic names are prefix + index: C1, P2, relu3
    summary: str
    build: Builder
    positional: tuple[Param, ...] = ()
    options: tuple[Param, ...] = ()
    flags: tuple[Flag, ...] = ()
    aliases: tuple[str, ...] = ()
    counting: Counting = Counting.NEW
    flatten_first: bool = False  # an image or signal is flattened first (fc)
    explain: Explain | None = None  # turns a PyTorch shape error into a reason
    layouts: tuple[Layout, ...] = field(default=tuple(Layout))

    def usage(self) -> str:
        """One line of syntax: `conv KERNEL CHANNELS [same|valid] [stride=SIZE] ...`."""
        words = [self.name]
        for param in self.positional:
            shown = param.name.upper()
            words.append(shown if param.required else f"[{shown}]")
        by_option: dict[str, list[str]] = {}
        for flag in self.flags:
            by_option.setdefault(flag.option, []).append(flag.word)
        words.extend("[" + "|".join(group) + "]" for group in by_option.values())
        for param in self.options:
            if param.type is ValueType.BOOL and param.name in by_option:
                continue  # the flag says it: `bidirectional` rather than `bidirectional=true`
            shown = "|".join(param.choices) if param.choices else param.type.value.upper()
            words.append(f"[{param.name}={shown}]")
        return " ".join(words)

    def param(self, name: str) -> Param | None:
        """The positional parameter or option called `name`."""
        for param in (*self.positional, *self.options):
            if param.name == name:
                return param
        return None


LAYER_KINDS: dict[str, LayerKind] = {}
"""Every layer kind by its name and by each alias."""


def register_layer(
    name: str,
    *,
    prefix: str,
    summary: str,
    positional: tuple[Param, ...] = (),
    options: tuple[Param, ...] = (),
    flags: tuple[Flag, ...] = (),
    aliases: tuple[str, ...] = (),
    counting: Counting = Counting.NEW,
    flatten_first: bool = False,
    explain: Explain | None = None,
    layouts: tuple[Layout, ...] = tuple(Layout),
) -> Callable[[Builder], Builder]:
    """Register the decorated builder as layer kind `name`; refuse a name already taken."""

    def decorate(build: Builder) -> Builder:
        kind = LayerKind(
            name=name,
            prefix=prefix,
            summary=summary,
            build=build,
            positional=positional,
            options=options,
            flags=flags,
            aliases=aliases,
            counting=counting,
            flatten_first=flatten_first,
            explain=explain,
            layouts=layouts,
        )
        for word in (name, *aliases):
            if word in LAYER_KINDS or word in BLOCK_WORDS:
                raise ValueError(f"layer kind {word!r} is registered twice")
        for word in (name, *aliases):
            LAYER_KINDS[word] = kind
        return build

    return decorate


BLOCK_WORDS = ("input", "residual", "repeat")
"""The words of the language that are not layer kinds: they are parsed by `syntax.py`."""


def layer_kinds() -> tuple[LayerKind, ...]:
    """Each registered kind once, in registration order."""
    return tuple({id(kind): kind for kind in LAYER_KINDS.values()}.values())
