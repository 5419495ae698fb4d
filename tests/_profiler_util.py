"""Measure what one real op call allocates and frees inside itself, with the PyTorch profiler.

The profiler records every allocation and free the c10 CPU allocator makes while it runs. For a
single op call made under it, the running sum of those events peaks somewhere inside the op;
what is still allocated when the op returns is its outputs (kept alive here so that they are not
freed before the profiler stops). The transient is the part of the peak above the outputs:
exactly what `nnmem.analyses.workspace` rules predict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch._C._profiler import _EventType, _ProfilerEvent
from torch.profiler import ProfilerActivity, profile


@dataclass(frozen=True)
class Allocations:
    """The allocation stream of one call: sizes in order (frees negative), peak and end."""

    sizes: tuple[int, ...]
    peak_bytes: int  # highest running sum of allocations during the call
    end_bytes: int  # what the call leaves allocated: its outputs

    @property
    def transient_bytes(self) -> int:
        return max(0, self.peak_bytes - self.end_bytes)


def _allocation_events(node: _ProfilerEvent) -> list[tuple[int, int]]:
    kind, fields = node.typed
    if kind == _EventType.Allocation:
        return [(node.start_time_ns, fields.alloc_size)]
    return [event for child in node.children for event in _allocation_events(child)]


def measure(call: Callable[[], object], warmup: bool = True) -> Allocations:
    """Run ``call`` once (after one unprofiled warm-up run) and return its allocation stream."""
    if warmup:
        call()  # oneDNN builds and caches its primitives on the first call
    keep: list[object] = []
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        keep.append(call())
    events = sorted(
        event
        for root in prof.profiler.kineto_results.experimental_event_tree()
        for event in _allocation_events(root)
    )
    running = peak = 0
    for _, size in events:
        running += size
        peak = max(peak, running)
    del keep
    return Allocations(tuple(size for _, size in events), peak, running)
