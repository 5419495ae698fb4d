"""Per-rank estimates of models with many identical blocks, from traces of a few blocks.

A Llama-2-70B shape has 80 decoder layers; tracing every layer of every step is slow
and, layer after layer, the same. `estimate_parallel_repeated` traces the parallel step
with 2, 3 and 4 blocks (sliding up to `max_probe` while the first blocks still move a
peak) and extends each traced rank's numbers to the full count with
`nnmem.analyses.extrapolate`, which refuses to guess when they do not grow by equal steps.
Each rank's model state (its parameter, gradient and optimizer-state shards) is
extended the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from nnmem.analyses.extrapolate import (
    FIRST_PROBE,
    MAX_PROBE,
    ExtrapolationError,
    _extend_breakdown,
    _extrapolate,
)
from nnmem.estimate import ModelLike
from nnmem.parallel.api import estimate_parallel
from nnmem.parallel.report import ParallelReport
from nnmem.parallel.spec import ParallelSpec
from nnmem.report import Report


def estimate_parallel_repeated(
    build: Callable[[int], ModelLike],
    blocks: int,
    inputs: Any,
    parallel: str | ParallelSpec,
    world_size: int | None = None,
    max_probe: int = MAX_PROBE,
    **keywords: Any,
) -> ParallelReport:
    """`estimate_parallel` of `build(blocks)`, extrapolated exactly from a few blocks.

    `build(n)` returns the model (or a zero-argument factory) with n blocks; every other
    keyword goes to `estimate_parallel`. Models of at most `max_probe` blocks are traced whole.
    """
    if blocks <= max_probe:
        return estimate_parallel(build(blocks), inputs, parallel, world_size, **keywords)
    traced: dict[int, ParallelReport] = {}
    error: ExtrapolationError | None = None
    for last_probe in range(FIRST_PROBE + 2, max_probe + 1):
        probes = (last_probe - 2, last_probe - 1, last_probe)
        for n in probes:
            if n not in traced:
                traced[n] = estimate_parallel(build(n), inputs, parallel, world_size, **keywords)
        try:
            return _extend([traced[n] for n in probes], probes, blocks)
        except ExtrapolationError as failure:
            error = failure
    assert error is not None
    raise error


def _extend(reports: list[ParallelReport], probes: tuple[int, ...], blocks: int) -> ParallelReport:
    layouts = {tuple(r.traced_as for r in report.ranks) for report in reports}
    if len(layouts) != 1:
        raise ExtrapolationError("the probes trace different ranks; trace the full model")
    extended: dict[int, tuple[Report, Any]] = {}
    ranks = []
    for rank in reports[-1].ranks:
        source = rank.traced_as
        if source not in extended:
            per_probe = [report.ranks[source] for report in reports]
            report = _extrapolate([r.report for r in per_probe], probes, blocks)
            state = _extend_breakdown(
                [r.model_state for r in per_probe], probes, blocks, f"rank {source}'s model state"
            )
            extended[source] = (report, state)
        report, state = extended[source]
        ranks.append(replace(rank, report=report, model_state=state))
    last = reports[-1]
    notes = tuple(n for n in last.notes if n not in last.ranks[0].report.notes)
    return ParallelReport.of(ranks, last.parallel, last.world_size, last.backend, notes)
