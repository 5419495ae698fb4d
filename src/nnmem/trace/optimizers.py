"""The optimizers a step can use, by name, and the implementation PyTorch would pick.

Each name is registered once with `@register_optimizer`; a factory takes the trainable
parameters and the implementation flags and returns a real `torch.optim.Optimizer`.
A user may also pass any callable `params -> torch.optim.Optimizer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from nnmem.categories import StrEnum
from nnmem.errors import UsageError, did_you_mean

OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


class Implementation(StrEnum):
    """How an optimizer loops over its parameters (it changes temporaries, not state)."""

    AUTO = "auto"  # what PyTorch picks by default on the modelled device
    FOR_LOOP = "for-loop"
    FOREACH = "foreach"
    FUSED = "fused"


@dataclass(frozen=True)
class OptimizerEntry:
    """A registered optimizer: its factory and what the implementations may be."""

    name: str
    build: Callable[[list[torch.nn.Parameter], dict[str, Any]], torch.optim.Optimizer]
    description: str
    supports_fused: bool
    note: str = ""  # said in every report that uses it (e.g. what is modelled, not run)


_REGISTRY: dict[str, OptimizerEntry] = {}
NOTE_8BIT = "8-bit optimizer state modelled on bitsandbytes' layout; bitsandbytes itself cannot run here"


def register_optimizer(
    name: str, description: str, supports_fused: bool = False, note: str = ""
) -> Callable[
    [Callable[[list[torch.nn.Parameter], dict[str, Any]], torch.optim.Optimizer]],
    Callable[[list[torch.nn.Parameter], dict[str, Any]], torch.optim.Optimizer],
]:
    """Register an optimizer factory under `name`; a name is registered only once."""

    def decorate(
        build: Callable[[list[torch.nn.Parameter], dict[str, Any]], torch.optim.Optimizer],
    ) -> Callable[[list[torch.nn.Parameter], dict[str, Any]], torch.optim.Optimizer]:
        if name in _REGISTRY:
            raise ValueError(f"optimizer '{name}' is already registered")
        _REGISTRY[name] = OptimizerEntry(name, build, description, supports_fused, note)
        return build

    return decorate


@register_optimizer("sgd", "plain SGD: no state", supports_fused=True)
def _sgd(params: list[torch.nn.Parameter], flags: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=1e-3, **flags)


@register_optimizer("momentum", "SGD with momentum 0.9: one buffer per parameter", supports_fused=True)
def _momentum(params: list[torch.nn.Parameter], flags: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9, **flags)


@register_optimizer("adam", "Adam: exp_avg and exp_avg_sq per parameter, a step counter", supports_fused=True)
def _adam(params: list[torch.nn.Parameter], flags: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3, **flags)


@register_optimizer("adamw", "AdamW: as Adam, with decoupled weight decay", supports_fused=True)
def _adamw(params: list[torch.nn.Parameter], flags: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, **flags)


@register_optimizer("adagrad", "Adagrad: a sum of squares per parameter", supports_fused=True)
def _adagrad(params: list[torch.nn.Parameter], flags: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(params, lr=1e-3, **flags)


@register_optimizer("rmsprop", "RMSprop: a square average per parameter")
def _rmsprop(params: list[torch.nn.Parameter], flags: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, lr=1e-3, **flags)


@register_optimizer(
    "adam8bit",
    "Adam with 8-bit blockwise state as bitsandbytes lays it out: 2 bytes per parameter"
    " plus a float32 per 2048 elements; 32-bit state below 4096 elements",
    note=NOTE_8BIT,
)
def _adam8bit(params: list[torch.nn.Parameter], flags: dict[str, Any]) -> torch.optim.Optimizer:
    from nnmem.trace.adam8bit import Adam8bit  # one implementation whatever the flags

    return Adam8bit(params, lr=1e-3)


def optimizer_names() -> list[str]:
    """The registered names, in registration order."""
    return list(_REGISTRY)


def implementation_flags(name: str, implementation: Implementation, device: str) -> dict[str, Any]:
    """The constructor flags that select `implementation` for optimizer `name`.

    AUTO follows `torch.optim.optimizer._default_to_fused_or_foreach`: foreach on CUDA
    (when every parameter is a CUDA tensor), the for-loop everywhere else; fused is never
    a default.
    """
    if implementation is Implementation.AUTO:
        implementation = Implementation.FOREACH if device == "cuda" else Implementation.FOR_LOOP
    if implementation is Implementation.FUSED:
        if not _REGISTRY[name].supports_fused:
            raise UsageError(f"optimizer '{name}' has no fused implementation; use foreach or for-loop")
        return {"fused": True}
    return {"foreach": implementation is Implementation.FOREACH}


def make_optimizer(
    optimizer: str | OptimizerFactory,
    params: Iterable[torch.nn.Parameter],
    implementation: Implementation = Implementation.AUTO,
    device: str = "cpu",
) -> torch.optim.Optimizer:
    """Build the optimizer over the trainable `params`."""
    trainable = [p for p in params if p.requires_grad]
    if callable(optimizer):
        return optimizer(trainable)
    entry = lookup(optimizer)
    return entry.build(trainable, implementation_flags(entry.name, implementation, device))


def lookup(name: str) -> OptimizerEntry:
    """The registered optimizer called `name` (case-insensitive), or a UsageError."""
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise UsageError(
            f"unknown optimizer '{name}'{did_you_mean(key, _REGISTRY)}"
            f" (known: {', '.join(_REGISTRY)}; or pass a callable params -> torch.optim.Optimizer)"
        )
    return _REGISTRY[key]
