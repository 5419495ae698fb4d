"""The measuring subprocess: the step run for real under `torch.profiler`.

The profiler starts before the model is built, in a fresh process, so the allocator's
running total (`total_allocated` of each memory event) counts every byte of the run.
Run as `python -m nnmem.measure.cpu` with a pickled `Job` on standard input.
"""

from __future__ import annotations

import pickle
import sys
import traceback
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils._pytree import tree_flatten, tree_map

from nnmem.categories import Phase
from nnmem.measure.job import Job, Measurement, PhaseMark, unique_bytes
from nnmem.trace.step import run_step

MARK = "nnmem::mark::"


class _Marks:
    """The step's observer in a real run: marks phases in the profile, sizes real tensors."""

    def __init__(self) -> None:
        self.gradient_bytes = 0
        self.optimizer_state_bytes = 0
        self.kv_cache_bytes = 0

    def set_phase(self, phase: Phase, step: int, micro: int = 0) -> None:
        with record_function(f"{MARK}{phase}::{step}"):
            pass

    def saw_gradients(self, params: list[torch.nn.Parameter]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        self.gradient_bytes = max(self.gradient_bytes, unique_bytes(grads))

    def saw_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        self.optimizer_state_bytes = max(self.optimizer_state_bytes, unique_bytes(state))

    def saw_kv_cache(self, tensors: list[torch.Tensor]) -> None:
        self.kv_cache_bytes = max(self.kv_cache_bytes, unique_bytes(tensors))


def _materialize(value: Any, dtype: torch.dtype | None) -> Any:
    """Meta tensors become real ones (random floats, zero integers); floats take `dtype`."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_meta:
        if value.is_floating_point():
            value = torch.randn(value.shape, dtype=value.dtype)
        else:
            value = torch.zeros(value.shape, dtype=value.dtype)
    if dtype is not None and value.is_floating_point() and value.dtype != dtype:
        value = value.to(dtype)
    return value


def _build(job: Job) -> tuple[torch.nn.Module, Any]:
    model = pickle.loads(job.model)
    if not isinstance(model, torch.nn.Module):
        model = model()
    if job.dtype is not None:
        model = model.to(job.dtype)
    inputs = tree_map(lambda v: _materialize(v, job.dtype), pickle.loads(job.inputs))
    return model, inputs


def _memory_events(prof: Any) -> tuple[list[tuple[int, int, int]], list[PhaseMark]]:
    events: list[tuple[int, int, int]] = []
    marks: list[PhaseMark] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.name == "[memory]":
            fields = node.typed[1]
            if str(fields.device) == "cpu" or getattr(fields.device, "type", None) == "cpu":
                events.append((node.start_time_ns, int(fields.alloc_size), int(fields.total_allocated)))
        elif node.name.startswith(MARK):
            phase, step = node.name[len(MARK) :].split("::")
            marks.append(PhaseMark(node.start_time_ns, phase, int(step)))
    events.sort(key=lambda e: e[0])
    marks.sort(key=lambda m: m.time_ns)
    return events, marks


def run(job: Job) -> Measurement:
    torch.set_num_threads(job.threads)
    observer = _Marks()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model, inputs = _build(job)
        params = list(model.parameters())
        buffers = list(model.buffers())
        leaves = [t for t in tree_flatten(inputs)[0] if isinstance(t, torch.Tensor)]
        sizes = (unique_bytes(params), unique_bytes(buffers), unique_bytes(leaves))
        count = sum(p.numel() for p in params)
        run_step(model, inputs, job.config, observer)
    events, marks = _memory_events(prof)
    return Measurement(
        times_ns=tuple(e[0] for e in events),
        deltas=tuple(e[1] for e in events),
        totals=tuple(e[2] for e in events),
        marks=tuple(marks),
        parameter_bytes=sizes[0],
        buffer_bytes=sizes[1],
        input_bytes=sizes[2],
        gradient_bytes=observer.gradient_bytes,
        optimizer_state_bytes=observer.optimizer_state_bytes,
        kv_cache_bytes=observer.kv_cache_bytes,
        parameters=count,
        threads=job.threads,
    )


def main() -> int:
    job: Job = pickle.loads(sys.stdin.buffer.read())
    try:
        result: Any
        if job.config.device == "cuda":
            from nnmem.measure.cuda import run_cuda

            result = run_cuda(job, *_build(job))
        else:
            result = run(job)
    except BaseException as error:  # reported to the parent, which raises MeasureError
        result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    with open(job.result_path, "wb") as file:
        pickle.dump(result, file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
