"""The results nnmem returns: frozen values holding integers of bytes.

A `Report` is what `nnmem.estimate` and `nnmem.measure` return. Rendering lives in
`nnmem.render`; `to_dict()` gives the JSON-ready form.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from nnmem.categories import Category, Mode, Phase


@dataclass(frozen=True)
class Breakdown:
    """Bytes by memory category. Breakdowns add with `+`."""

    parameter: int = 0
    buffer: int = 0
    input: int = 0
    activation: int = 0
    gradient: int = 0
    optimizer_state: int = 0
    temporary: int = 0
    workspace: int = 0
    kv_cache: int = 0
    other: int = 0

    @classmethod
    def of(cls, amounts: dict[Category, int]) -> Breakdown:
        return cls(**{str(category): int(amount) for category, amount in amounts.items()})

    def __add__(self, other: Breakdown) -> Breakdown:
        return Breakdown(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __getitem__(self, category: Category | str) -> int:
        return int(getattr(self, str(category)))

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def items(self) -> list[tuple[Category, int]]:
        return [(Category(f.name), getattr(self, f.name)) for f in fields(self)]

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Peak:
    """The highest live memory within one step, and what was alive then."""

    bytes: int
    phase: Phase
    module: str  # the module running when the peak was reached ("" for the model itself)
    op: str  # the op whose output (or workspace) made the peak
    categories: Breakdown
    modules: tuple[tuple[str, int], ...]  # bytes alive at the peak, by the module that made them

    def to_dict(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "phase": str(self.phase),
            "module": self.module,
            "op": self.op,
            "categories": self.categories.to_dict(),
            "modules": [{"module": name, "bytes": amount} for name, amount in self.modules],
        }


@dataclass(frozen=True)
class LayerRow:
    """One module of the model: what it holds and what it made that is alive at the peak."""

    name: str
    kind: str
    output_shape: tuple[int, ...] | None
    parameters: int  # elements of its own parameters (not its children's), tied counted once
    parameter_bytes: int
    activation_bytes: int  # what it created that was alive at the steady-state peak
    created_bytes: int  # everything it created that was alive at the peak (any category)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "output_shape": list(self.output_shape) if self.output_shape is not None else None,
            "parameters": self.parameters,
            "parameter_bytes": self.parameter_bytes,
            "activation_bytes": self.activation_bytes,
            "created_bytes": self.created_bytes,
        }


@dataclass(frozen=True)
class TimelinePoint:
    """Live bytes by category just after one event of the step."""

    index: int
    step: int
    phase: Phase
    categories: Breakdown

    @property
    def total(self) -> int:
        return self.categories.total


@dataclass(frozen=True)
class Report:
    """How much memory one step of a model takes, and why."""

    peak_bytes: int  # steady-state peak: for training, the last step traced
    mode: Mode
    device: str
    source: str  # "estimate" or "measure"
    steady: Peak
    first_step: Peak | None  # training only: step 1, where optimizer state is created
    parameters: int  # elements, tied weights counted once
    layers: tuple[LayerRow, ...] = ()
    unknown_ops: tuple[tuple[str, str, int], ...] = ()  # (op, module, calls) without a workspace rule
    notes: tuple[str, ...] = ()
    settings: tuple[tuple[str, str], ...] = ()  # what was modelled: optimizer, dtype, amp, ...
    timeline: tuple[TimelinePoint, ...] = field(default=(), repr=False, compare=False)
    kv_cache_bytes: int = 0
    # device="cuda": the caching allocator's view (nnmem.analyses.cuda_memory); None elsewhere
    reserved_bytes: int | None = None  # torch.cuda.max_memory_reserved(), CUDA context excluded
    allocated_rounded_bytes: int | None = None  # torch.cuda.max_memory_allocated(): block-rounded
    fragmentation_bytes: int | None = None  # reserved at its peak but not allocated then

    @property
    def categories(self) -> Breakdown:
        """Bytes by category at the steady-state peak."""
        return self.steady.categories

    def _repr_html_(self) -> str:
        """How Jupyter shows a report: the peak, the categories and the per-layer table."""
        from nnmem.render.html import report_fragment

        return report_fragment(self)

    def to_dict(self, timeline: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = {
            "peak_bytes": self.peak_bytes,
            "mode": str(self.mode),
            "device": self.device,
            "source": self.source,
            "parameters": self.parameters,
            "settings": dict(self.settings),
            "categories": self.categories.to_dict(),
            "steady_peak": self.steady.to_dict(),
            "first_step_peak": self.first_step.to_dict() if self.first_step else None,
            "kv_cache_bytes": self.kv_cache_bytes,
            "layers": [row.to_dict() for row in self.layers],
            "unknown_ops": [
                {"op": op, "module": module, "calls": calls} for op, module, calls in self.unknown_ops
            ],
            "notes": list(self.notes),
        }
        if self.reserved_bytes is not None:
            result["reserved_bytes"] = self.reserved_bytes
            result["allocated_rounded_bytes"] = self.allocated_rounded_bytes
            result["fragmentation_bytes"] = self.fragmentation_bytes
        if timeline:
            result["timeline"] = [
                {"index": p.index, "step": p.step, "phase": str(p.phase), **p.categories.to_dict()}
                for p in self.timeline
            ]
        return result
