"""From a trace's events to live bytes over time: the peak, where it is, what is alive.

Categories are settled here, once the whole step is known (see `nnmem.trace.tracker`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from nnmem.categories import Category, Phase
from nnmem.report import Breakdown, Peak, TimelinePoint
from nnmem.trace.tracker import StorageRecord, Trace


def settle_categories(trace: Trace) -> list[Category]:
    """The category of each record, by what its storage turned out to be."""
    forward_of: list[tuple[int, int]] = sorted(trace.forward_ends)
    settled: list[Category] = []
    for record in trace.records:
        if record.category is not None:
            settled.append(record.category)
        elif record.index in trace.gradient_records:
            settled.append(Category.GRADIENT)
        elif record.index in trace.optimizer_records:
            settled.append(Category.OPTIMIZER_STATE)
        elif record.index in trace.kv_cache_records:
            settled.append(Category.KV_CACHE)
        elif record.phase is Phase.FORWARD and _outlives_forward(record, forward_of):
            settled.append(Category.ACTIVATION)
        else:
            settled.append(Category.TEMPORARY)
    return settled


def _outlives_forward(record: StorageRecord, forwards: list[tuple[int, int]]) -> bool:
    for start, end in forwards:
        if start <= record.birth < end:
            return record.death is None or record.death >= end
    return record.death is None


@dataclass(frozen=True)
class Levels:
    """Live bytes after each event, and the settled category of each record."""

    totals: list[int]  # totals[i]: live bytes just after event i
    initial: int  # live bytes before the first event
    categories: list[Category]


def levels(trace: Trace) -> Levels:
    initial = sum(trace.records[i].nbytes_at_start for i in trace.baseline)
    totals: list[int] = []
    level = initial
    for event in trace.events:
        level += event.delta
        totals.append(level)
    return Levels(totals, initial, settle_categories(trace))


def peak_index(trace: Trace, lv: Levels, in_window: Callable[[int], bool]) -> tuple[int, int] | None:
    """(event index, live bytes) of the highest level over the events where `in_window(i)`.

    The level on entering the window counts too (index i - 1, maybe -1: before any event).
    """
    best: tuple[int, int] | None = None
    previous_level = lv.initial
    for i in range(len(trace.events)):
        if in_window(i):
            if best is None:
                best = (i - 1, previous_level)
            if lv.totals[i] > best[1]:
                best = (i, lv.totals[i])
        previous_level = lv.totals[i]
    return best


def describe_peak(trace: Trace, lv: Levels, index: int, level: int, top_modules: int = 10) -> Peak:
    """What was alive at event `index`, by category and by module."""
    by_category: dict[Category, int] = defaultdict(int)
    by_module: dict[str, int] = defaultdict(int)
    for record, nbytes in alive_at(trace, index).items():
        by_category[lv.categories[record]] += nbytes
        by_module[trace.records[record].module] += nbytes
    event = trace.events[index] if index >= 0 else None
    modules = sorted(by_module.items(), key=lambda item: -item[1])[:top_modules]
    return Peak(
        bytes=level,
        phase=event.phase if event else Phase.SETUP,
        module=event.module if event else "",
        op=trace.records[event.record].op if event else "",
        categories=Breakdown.of(by_category),
        modules=tuple(modules),
    )


def alive_at(trace: Trace, index: int) -> dict[int, int]:
    """Bytes of each record alive just after event `index` (-1: before the first event)."""
    alive = {i: trace.records[i].nbytes_at_start for i in trace.baseline}
    for event in trace.events[: index + 1]:
        alive[event.record] = alive.get(event.record, 0) + event.delta
        if alive[event.record] == 0 and trace.records[event.record].death is not None:
            del alive[event.record]
    return {i: n for i, n in alive.items() if n}


def timeline_points(trace: Trace, lv: Levels) -> tuple[TimelinePoint, ...]:
    """Live bytes by category after every event (the data of the timeline plot)."""
    current: dict[Category, int] = defaultdict(int)
    for i in trace.baseline:
        current[lv.categories[i]] += trace.records[i].nbytes_at_start
    points = []
    for i, event in enumerate(trace.events):
        current[lv.categories[event.record]] += event.delta
        points.append(TimelinePoint(i, event.step, event.phase, Breakdown.of(current)))
    return tuple(points)
