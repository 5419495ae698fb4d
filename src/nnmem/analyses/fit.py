"""Will it fit? The largest batch (or sequence length) whose step fits a GPU, with a margin.

The need at a size is what `torch.cuda.max_memory_reserved()` would read after the step: the
traced step replayed through the caching allocator, cuBLAS workspaces included
(`nnmem.analyses.cuda_memory`). The budget is the GPU's memory less the CUDA context, less a
safety margin: `budget = floor((total - context) * (1 - margin))`. A size fits when its
reserved bytes are at most the budget; the answer B fits and B + 1 does not, both traced.

The search (`search_largest`) uses that the live peak grows exactly affinely with the batch
while the peak stays at the same point of the step, and the reserved bytes nearly so:

1. trace the user's size; from its peak's categories (parameters, gradients and optimizer state
   do not grow with the batch, the rest does) guess the largest size;
2. trace the guess, then the size where the line through the two traced points nearest the
   boundary meets the budget (the secant), until a traced size fits and the next one, traced,
   does not; when the line stops helping (two probes in a row that do not halve the bracket,
   a need that does not grow, or too many probes), bisect.

Usually that is four traces: the start, the guess, the answer and the answer + 1. Transformers
with many identical layers are traced with a few layers and extrapolated at each size
(`estimate_repeated`). A size the model cannot take (more tokens than a model's learned
positions) counts as not fitting, and the result says why.

Known limitations: the margin is the only allowance for what the trace does not see: cuDNN
workspaces, memory other processes or libraries (NCCL) take, and allocator behaviour after the
second step. Non-monotone needs (a larger size that needs less) are not searched for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from nnmem.analyses.allocator import AllocatorConfig
from nnmem.analyses.cuda_memory import estimate_with_trace, parse_allocator, replay
from nnmem.analyses.sized import Sized, Vary
from nnmem.categories import Phase
from nnmem.errors import UsageError
from nnmem.gpus import DEFAULT_CONTEXT_BYTES, get_gpu, parse_memory_size
from nnmem.report import Report
from nnmem.trace.cuda import CudaDevice
from nnmem.trace.tracker import Trace

MiB: Final = 1024**2
DEFAULT_MARGIN: Final = 0.05
MAX_SIZE: Final = 2**20
MAX_PROBES: Final = 16


@dataclass(frozen=True)
class Budget:
    """The memory a step may take on one GPU."""

    gpu: str  # the catalogue name, or "24 GiB" for a size given directly
    total_bytes: int  # the device memory CUDA reports
    context_bytes: int  # taken by the CUDA context before the first tensor
    margin: float  # the fraction of the usable memory kept free

    @property
    def usable_bytes(self) -> int:
        return self.total_bytes - self.context_bytes

    @property
    def budget_bytes(self) -> int:
        return math.floor(self.usable_bytes * (1 - self.margin))

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "total_bytes": self.total_bytes,
            "context_bytes": self.context_bytes,
            "usable_bytes": self.usable_bytes,
            "margin": self.margin,
            "budget_bytes": self.budget_bytes,
        }


def parse_margin(value: str | float) -> float:
    """`0.05`, `"0.05"` or `"5%"` -> 0.05; a margin is in [0, 1)."""
    try:
        margin = (
            float(value[:-1]) / 100
            if isinstance(value, str) and value.strip().endswith("%")
            else float(value)
        )
    except ValueError:
        raise UsageError(f"--margin '{value}': write a fraction (0.05) or a percentage (5%)") from None
    if not 0.0 <= margin < 1.0:
        raise UsageError(f"the margin must be at least 0 and below 1 (100%), not {margin}")
    return margin


def gpu_budget(
    gpu: str | None = None, memory: str | int | None = None, margin: float = DEFAULT_MARGIN
) -> Budget:
    """The budget on catalogue GPU `gpu`, or on a device of `memory` total bytes ("24GiB").

    With both, `memory` replaces the GPU's total (a GPU shared or capped). A size given
    directly loses the same default CUDA context as the catalogue assumes (`nnmem.gpus`).
    """
    margin = parse_margin(margin)
    if gpu is None and memory is None:
        raise UsageError("say which GPU: --gpu NAME (e.g. a100-80gb) or --gpu-memory SIZE (e.g. 24GiB)")
    found = get_gpu(gpu) if gpu is not None else None
    if memory is not None:
        total = parse_memory_size(memory) if isinstance(memory, str) else int(memory)
        name = found.name if found else (memory if isinstance(memory, str) else f"{total} bytes")
        context = found.context_bytes if found else DEFAULT_CONTEXT_BYTES
    else:
        assert found is not None
        total, name, context = found.total_memory_bytes, found.name, found.context_bytes
    if total <= context:
        raise UsageError(f"{name}: {total} bytes is no more than the CUDA context ({context} bytes)")
    return Budget(name, total, context, margin)


@dataclass(frozen=True)
class Probe:
    """One traced size and what it needs."""

    size: int
    fits: bool  # the step runs within the budget (the allocator replayed with that capacity)
    need_bytes: int | None = None  # the least memory it runs in, to the search's resolution
    reserved_bytes: int | None = None  # max_memory_reserved on this GPU (unlimited, if it does not fit)
    allocated_bytes: int | None = None  # max_memory_allocated (block-rounded)
    peak_bytes: int | None = None  # live bytes at the steady-state peak
    reason: str = ""  # why the size cannot run, when it cannot

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "size": self.size, "fits": self.fits, "need_bytes": self.need_bytes,
            "reserved_bytes": self.reserved_bytes, "allocated_bytes": self.allocated_bytes,
            "peak_bytes": self.peak_bytes,
        }  # fmt: skip
        if self.reason:
            data["reason"] = self.reason
        return data


@dataclass(frozen=True)
class FitResult:
    """The largest size that fits, and the traces that show it."""

    vary: Vary
    largest: int  # 0: not even size 1 fits
    budget: Budget
    probes: tuple[Probe, ...]  # in the order traced
    describe: str
    notes: tuple[str, ...] = ()
    settings: tuple[tuple[str, str], ...] = ()  # the step modelled: optimizer, dtype, amp, ...

    def probe(self, size: int) -> Probe | None:
        return next((p for p in self.probes if p.size == size), None)

    @property
    def answer(self) -> Probe | None:
        """The trace of the answer (None when nothing fits)."""
        return self.probe(self.largest)

    @property
    def next(self) -> Probe | None:
        """The trace of the answer + 1 (None when the answer is the search's cap)."""
        return self.probe(self.largest + 1)

    def to_dict(self) -> dict[str, Any]:
        answer, following = self.answer, self.next
        return {
            f"max_{self.vary}": self.largest,
            "vary": str(self.vary),
            "reserved_bytes": answer.reserved_bytes if answer else None,
            "need_bytes": answer.need_bytes if answer else None,
            "peak_bytes": answer.peak_bytes if answer else None,
            "next_need_bytes": following.need_bytes if following else None,
            "budget": self.budget.to_dict(),
            "model": self.describe,
            "settings": dict(self.settings),
            "probes": [p.to_dict() for p in self.probes],
            "notes": list(self.notes),
        }


# size -> its probe and report (None: no first guess from it); raises UsageError if the model
# cannot take the size
Measure = Callable[[int], tuple[Probe, Report | None]]


def _growth_guess(report: Report, size: int, need: int, budget: int) -> int | None:
    """The size where the need meets `budget` if the bytes that grow with the size are those that
    are not parameters, gradients, optimizer state or buffers, at the worst point of the forward
    and backward passes (the optimizer's temporaries do not grow with the batch)."""
    fixed_names = ("parameter", "gradient", "optimizer_state", "buffer")
    passes = (Phase.FORWARD, Phase.BACKWARD)
    points = [p.categories for p in report.timeline if p.phase in passes] or [report.categories]
    growing = max(b.total - sum(b[c] for c in fixed_names) for b in points)
    if growing <= 0:
        return None
    return size + math.floor((budget - need) / (growing / size))


def _secant(values: dict[int, int], budget: int, lo: int, hi: int | None, guess: int | None) -> int:
    """Where the line through the two traced sizes nearest the boundary meets `budget`, inside
    (lo, hi); from one traced size, the first guess (or twice the size)."""
    fitting = sorted(s for s, v in values.items() if v <= budget)
    over = sorted(s for s, v in values.items() if v > budget)
    if len(values) == 1:
        candidate = guess if guess is not None else (2 * lo if lo else 1)
    else:
        s1, s2 = fitting[-2:] if not over else over[:2] if not fitting else [fitting[-1], over[0]]
        slope = (values[s2] - values[s1]) / (s2 - s1)
        if slope <= 0:
            candidate = 2 * lo if hi is None else (lo + hi) // 2
        else:
            anchor = fitting[-1] if fitting else s1
            candidate = anchor + math.floor((budget - values[anchor]) / slope)
    candidate = max(candidate, lo + 1)
    return min(candidate, hi - 1) if hi is not None else candidate


def search_largest(
    measure: Measure, budget: int, start: int = 1, max_size: int = MAX_SIZE
) -> tuple[int, tuple[Probe, ...], tuple[str, ...]]:
    """The largest size in [0, max_size] that fits `budget`, and that the next size does not.

    Each probe is the secant's (after the first: the first guess, or a doubling), until the
    secant only creeps next to an end of the bracket (the need climbs in the allocator's steps,
    flat between them): then steps of 1, 2, 4, ... from that end until one lands on the other
    side, then bisection. Two secant probes in a row that do not halve the bracket are followed
    by a bisection. A need that grows smoothly ends with the secant's answer and its neighbour.

    `measure(size)` traces one size; a `UsageError` at a size other than `start` means the
    model cannot take that size (it then counts as not fitting). Returns the answer, every
    probe in order, and notes.
    """
    if start < 1:
        raise UsageError(f"the search starts at a size of at least 1, not {start}")
    values: dict[int, int] = {}
    probes: list[Probe] = []
    notes: list[str] = []
    lo, hi = 0, None
    guess: int | None = None
    mode = "secant"  # then "gallop" (from the end `from_lo` says), then "bisect"
    from_lo, steps, slow = True, 0, 0
    while not ((hi is not None and hi <= lo + 1) or lo >= max_size):
        width = hi - lo if hi is not None and lo > 0 else None
        if not probes:
            size = start
        elif width is None:
            size = _secant(values, budget, lo, hi, guess)
        elif mode == "bisect" or len(probes) >= MAX_PROBES:
            size = lo + width // 2
        elif mode == "gallop":
            size = lo + 2**steps if from_lo else lo + width - 2**steps
            steps += 1
            if not lo < size < lo + width:
                size, mode = lo + width // 2, "bisect"
        elif slow >= 2:
            size, slow = lo + width // 2, 0
        else:
            size = _secant(values, budget, lo, hi, guess)
            if width > 2 and size in (lo + 1, lo + width - 1):  # creeping: gallop from that end
                mode, from_lo, steps = "gallop", size == lo + 1, 1
        size = min(size, max_size)
        try:
            probe, report = measure(size)
        except UsageError as error:
            if not probes:
                raise
            probe, report = Probe(size, False, reason=str(error)), None
            notes.append(f"size {size} cannot run: {error}")
        if not probes and probe.need_bytes is not None and report is not None:
            guess = _growth_guess(report, size, probe.need_bytes, budget)
        probes.append(probe)
        if probe.need_bytes is not None:
            values[size] = probe.need_bytes
        if probe.fits:
            lo = max(lo, size)
        else:
            hi = size if hi is None else min(hi, size)
        if mode == "gallop" and probe.fits != from_lo:
            mode = "bisect"  # crossed over
        if width is not None and hi is not None:
            slow = slow + 1 if 2 * (hi - lo) > width else 0
    if lo >= max_size:
        notes.append(f"fits even at {max_size}, the largest size searched")
    return lo, tuple(probes), tuple(notes)


def least_capacity(
    trace: Trace, device: CudaDevice, config: AllocatorConfig, low: int, high: int, resolution: int
) -> int:
    """The least capacity, to `resolution` bytes, in (low, high] at which the replay of `trace`
    does not run out of memory; `high` must be one at which it does not."""
    steps_low, steps_high = low // resolution, -(-high // resolution)
    while steps_high - steps_low > 1:
        middle = (steps_low + steps_high) // 2
        if replay(trace, device, config, middle * resolution).allocator.oom:
            steps_low = middle
        else:
            steps_high = middle
    return min(high, steps_high * resolution)


def capacity_probe(
    size: int, report: Report, trace: Trace, device: CudaDevice, config: AllocatorConfig, budget: int
) -> Probe:
    """Whether the step at `size` runs within `budget`: the trace replayed with that capacity,
    the allocator freeing its cache and retrying when the device is full, as PyTorch's does."""
    unlimited = report.reserved_bytes
    allocated = report.allocated_rounded_bytes
    assert unlimited is not None and allocated is not None
    resolution = 2 * MiB  # the allocator reserves whole 2 MiB pages
    within = replay(trace, device, config, budget)
    if within.allocator.oom:
        need = least_capacity(trace, device, config, budget, unlimited, resolution)
        return Probe(size, False, max(need, budget + 1), unlimited, allocated, report.peak_bytes)
    need = least_capacity(trace, device, config, allocated - 1, min(budget, unlimited), resolution)
    return Probe(size, True, need, within.reserved_bytes, allocated, report.peak_bytes)


def measure_sized(
    sized: Sized,
    budget: int,
    gpu: str | None,
    allocator: AllocatorConfig | str | None = None,
    **keywords: Any,
) -> Measure:
    """A `Measure` for `sized` on `gpu` within `budget` bytes (keywords go to `estimate`).

    A model of repeated blocks is traced with a few and extrapolated (`estimate_repeated`): it
    has no event sequence to replay under the capacity, so it fits when its (extrapolated)
    reserved bytes do, without the cache flushes a full device allows (conservative).
    """
    from nnmem.analyses.extrapolate import estimate_repeated

    config = parse_allocator(allocator)
    with_blocks, blocks = sized.with_blocks, sized.blocks

    def measure(size: int) -> tuple[Probe, Report]:
        model, inputs = sized.at(size)
        if blocks is not None and with_blocks is not None:
            report = estimate_repeated(
                lambda n: with_blocks(size, n),
                blocks,
                inputs,
                device="cuda",
                gpu=gpu,
                allocator=config,
                **keywords,
            )
            reserved = report.reserved_bytes
            assert reserved is not None
            probe = Probe(
                size,
                reserved <= budget,
                reserved,
                reserved,
                report.allocated_rounded_bytes,
                report.peak_bytes,
            )
            return probe, report
        report, trace, kernels = estimate_with_trace(model, inputs, gpu=gpu, allocator=config, **keywords)
        return capacity_probe(size, report, trace, kernels.device, config, budget), report

    return measure


def fit(
    sized: Sized,
    *,
    gpu: str | None = None,
    memory: str | int | None = None,
    margin: float | str = DEFAULT_MARGIN,
    max_size: int = MAX_SIZE,
    **keywords: Any,
) -> FitResult:
    """The largest size of `sized` whose training (or inference) step fits the GPU.

    `gpu` names a catalogue GPU (its memory, context and kernels); `memory` gives the device's
    total memory instead or as well ("24GiB"). `keywords` go to `nnmem.estimate` (mode,
    optimizer, dtype, amp, ...).
    """
    from nnmem.analyses.extrapolate import MAX_PROBE

    budget = gpu_budget(gpu, memory, parse_margin(margin))
    measure = measure_sized(sized, budget.budget_bytes, gpu, **keywords)
    settings: list[tuple[str, str]] = []

    def recorded(size: int) -> tuple[Probe, Report | None]:
        probe, report = measure(size)
        if report is not None and not settings:
            settings.extend(report.settings)
        return probe, report

    largest, probes, found = search_largest(recorded, budget.budget_bytes, sized.start, max_size)
    notes = list(found)
    if sized.blocks is not None and sized.blocks > MAX_PROBE:
        notes.append(
            f"each size traced with a few of the model's {sized.blocks} layers and extrapolated; it fits"
            " when its reserved bytes do, without the cache flushes a full device allows (conservative)"
        )
    above = [p.size for p in probes if p.fits and p.size > largest + 1]
    if above:
        notes.append(
            f"size {above[0]} fits too: the need is not monotone here (the allocator's fragmentation);"
            f" {largest} is where the search ended, with {largest + 1} not fitting"
        )
    return FitResult(sized.vary, largest, budget, probes, sized.describe, tuple(notes), tuple(settings))


# -- what if: the same model with one setting changed -------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One row of the what-if table: `keywords` changed, or another `sized` model."""

    label: str
    keywords: Mapping[str, Any] = field(default_factory=dict)
    sized: Sized | None = None
    unavailable: str = ""  # why the row cannot be computed ("HF models only")


@dataclass(frozen=True)
class WhatIfRow:
    """One setting: what the step needs at the user's size, and the largest size that fits."""

    label: str
    start: int  # the size the need is given at
    peak_bytes: int | None  # live peak at `start`
    need_bytes: int | None  # the least memory the step at `start` runs in
    largest: int | None  # None: not computed (see `note`)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "start": self.start, "peak_bytes": self.peak_bytes,
            "need_bytes": self.need_bytes, "largest": self.largest, "note": self.note,
        }  # fmt: skip


def what_if(
    sized: Sized,
    variants: Sequence[Variant],
    *,
    gpu: str | None = None,
    memory: str | int | None = None,
    margin: float | str = DEFAULT_MARGIN,
    **keywords: Any,
) -> tuple[WhatIfRow, ...]:
    """For each variant, the need at the user's size and the largest size that fits (a `fit` each)."""
    rows = []
    for variant in variants:
        if variant.unavailable:
            rows.append(WhatIfRow(variant.label, sized.start, None, None, None, variant.unavailable))
            continue
        target = variant.sized or sized
        try:
            result = fit(
                target, gpu=gpu, memory=memory, margin=margin, **{**keywords, **dict(variant.keywords)}
            )
        except UsageError as error:
            rows.append(WhatIfRow(variant.label, sized.start, None, None, None, str(error)))
            continue
        first = result.probes[0]
        rows.append(WhatIfRow(variant.label, first.size, first.peak_bytes, first.need_bytes, result.largest))
    return tuple(rows)


__all__ = [
    "DEFAULT_MARGIN",
    "Budget",
    "FitResult",
    "Probe",
    "Variant",
    "WhatIfRow",
    "capacity_probe",
    "fit",
    "gpu_budget",
    "least_capacity",
    "measure_sized",
    "parse_margin",
    "search_largest",
    "what_if",
]
