"""Exact extrapolation over repeated identical layers: trace a few, compute the many.

A model made of N identical blocks (a transformer's layers) costs the same to trace per
block, and its memory at each point of the step grows by the same amount per block. So
the peak of each phase (forward, backward, optimizer step, zero_grad) is an affine
function of N as long as the peak stays at the same point of the phase. We trace the model
with three consecutive block counts (2, 3 and 4 first), check that every number we report
is affine over them (equal differences), and then extend each line to N. Where the first
blocks still move the peak to another point of a phase (a Llama-70B shape's backward peak
settles from 4 blocks on), the window slides up one block at a time, to at most
`max_probe` blocks. The overall peak is
the largest extrapolated phase peak, so a peak that moves from backward to the optimizer
step as N grows is still found.

Known limitations: the timeline, the per-module list and the layer rows are not
extrapolated (the report says so). If any number is not affine over the probes, nothing is
guessed: `ExtrapolationError` says which, and the caller traces the full model instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

from nnmem.analyses.cuda_memory import extend_cuda_memory
from nnmem.categories import Phase
from nnmem.errors import NnmemError
from nnmem.estimate import ModelLike, estimate
from nnmem.report import Breakdown, Peak, Report

FIRST_PROBE = 2
MAX_PROBE = 8


class ExtrapolationError(NnmemError):
    """The probes do not grow by equal steps: the model's blocks are not all alike."""

    exit_code = 5


def _phase_peaks(report: Report, step: int) -> dict[Phase, tuple[int, Breakdown]]:
    """The highest live total of each phase of `step`, and its categories."""
    best: dict[Phase, tuple[int, Breakdown]] = {}
    for point in report.timeline:
        if point.step != step or point.phase is Phase.SETUP:
            continue
        total = point.total
        if point.phase not in best or total > best[point.phase][0]:
            best[point.phase] = (total, point.categories)
    return best


def _line(values: list[int], probes: tuple[int, ...], what: str) -> Callable[[int], int]:
    """The affine function through (probe, value) pairs, if they lie on one with integer slope."""
    rises = {values[i + 1] - values[i] for i in range(len(values) - 1)}
    if len(rises) != 1 or any(probes[i + 1] - probes[i] != 1 for i in range(len(probes) - 1)):
        raise ExtrapolationError(
            f"{what} does not grow by equal steps over {list(probes)} blocks ({values}); trace the full model"
        )
    slope = rises.pop()
    return lambda n: values[0] + (n - probes[0]) * slope


def _extend_breakdown(parts: list[Breakdown], probes: tuple[int, ...], n: int, what: str) -> Breakdown:
    return Breakdown(
        **{
            f.name: _line([getattr(b, f.name) for b in parts], probes, f"{what} {f.name}")(n)
            for f in fields(Breakdown)
        }
    )


def _extend_step(reports: list[Report], probes: tuple[int, ...], n: int, step: int) -> Peak:
    per_probe = [_phase_peaks(r, step) for r in reports]
    phases = set(per_probe[0])
    if any(set(p) != phases for p in per_probe):
        raise ExtrapolationError("the probes do not run the same phases; trace the full model")
    best: Peak | None = None
    for phase in sorted(phases, key=str):
        total = _line([p[phase][0] for p in per_probe], probes, f"the {phase} peak of step {step}")(n)
        categories = _extend_breakdown([p[phase][1] for p in per_probe], probes, n, f"the {phase} peak")
        if best is None or total > best.bytes:
            best = Peak(total, phase, "", "", categories, ())
    if best is None:
        raise ExtrapolationError(f"step {step} made no allocation")
    return best


def estimate_repeated(
    build: Callable[[int], ModelLike],
    blocks: int,
    inputs: Any,
    max_probe: int = MAX_PROBE,
    **keywords: Any,
) -> Report:
    """Estimate a model of `blocks` identical blocks from traces with a few blocks.

    `build(n)` returns the model (or a zero-argument factory) with n blocks; every other
    keyword goes to `nnmem.estimate`. Small models (at most `max_probe` blocks) are traced whole.
    """
    if blocks <= max_probe:
        return estimate(build(blocks), inputs, **keywords)
    traced: dict[int, Report] = {}
    error: ExtrapolationError | None = None
    for last_probe in range(FIRST_PROBE + 2, max_probe + 1):
        probes = (last_probe - 2, last_probe - 1, last_probe)
        for n in probes:
            if n not in traced:
                traced[n] = estimate(build(n), inputs, **keywords)
        try:
            return _extrapolate([traced[n] for n in probes], probes, blocks)
        except ExtrapolationError as failure:
            error = failure
    assert error is not None
    raise error


def _extrapolate(reports: list[Report], probes: tuple[int, ...], blocks: int) -> Report:
    last = reports[0]
    steps = int(dict(last.settings).get("steps", "1"))
    steady = _extend_step(reports, probes, blocks, steps)
    first = _extend_step(reports, probes, blocks, 1) if last.first_step is not None else None
    parameters = _line([r.parameters for r in reports], probes, "the parameter count")(blocks)
    kv_cache = _line([r.kv_cache_bytes for r in reports], probes, "the KV cache")(blocks)
    note = (
        f"extrapolated exactly from traces with {', '.join(map(str, probes))} blocks to {blocks}"
        " (every phase peak grows by equal steps); no timeline or per-module detail"
    )
    reserved, allocated, fragmentation = extend_cuda_memory(reports, probes, blocks)
    if reserved is not None:
        note += "; the caching allocator's reserved bytes on the line through the probes (approximate)"
    return replace(
        last,
        reserved_bytes=reserved,
        allocated_rounded_bytes=allocated,
        fragmentation_bytes=fragmentation,
        peak_bytes=steady.bytes,
        steady=steady,
        first_step=first,
        parameters=parameters,
        kv_cache_bytes=kv_cache,
        layers=(),
        timeline=(),
        unknown_ops=reports[-1].unknown_ops,
        notes=(*last.notes, note),
    )
