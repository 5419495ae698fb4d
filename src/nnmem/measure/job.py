"""What a measuring subprocess is asked to do, as plain picklable data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nnmem.trace.step import StepConfig


def unique_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (tied or viewed tensors count once)."""
    storages = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}
    return int(sum(storages.values()))


@dataclass(frozen=True)
class Job:
    """One real run: the model and inputs travel as pickles, opened inside the profiler."""

    model: bytes  # pickle of an nn.Module or a zero-argument factory
    inputs: bytes  # pickle of the inputs (meta tensors are filled in the subprocess)
    config: StepConfig
    dtype: torch.dtype | None
    threads: int
    result_path: str


@dataclass(frozen=True)
class PhaseMark:
    """A point of the step, as the subprocess marks it in the profile."""

    time_ns: int
    phase: str
    step: int


@dataclass(frozen=True)
class Measurement:
    """What the subprocess found: the allocator's running total after every event."""

    times_ns: tuple[int, ...]
    totals: tuple[int, ...]  # live bytes just after each allocation or free
    deltas: tuple[int, ...]
    marks: tuple[PhaseMark, ...]
    parameter_bytes: int
    buffer_bytes: int
    input_bytes: int
    gradient_bytes: int  # all gradients, as they stand after backward
    optimizer_state_bytes: int  # all optimizer state, as it stands after the step
    parameters: int
    threads: int
    kv_cache_bytes: int = 0  # generation: the key/value cache at its largest
