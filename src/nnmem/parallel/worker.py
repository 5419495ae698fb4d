"""One real rank of a measured parallel step: gloo on 127.0.0.1, the step under the profiler.

Started by `nnmem.parallel.launch` through `torch.multiprocessing`. Before anything is
allocated, the rank sets libc10's `FLAGS_caffe2_report_cpu_memory_usage` (an exported
C++ global; PyTorch has no Python setter or environment variable for it). Without it
the CPU allocator's running total counts only frees done on a thread that the profiler
watches, and gloo frees buffers on its own worker threads: those bytes would never
leave the total. With it, every allocation and free on every thread is counted.
The process group and the meshes are made before the profiler starts; the model is
built, spread and stepped inside it, as `nnmem.measure` does for one process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from nnmem.measure.cpu import _Marks
from nnmem.measure.job import unique_bytes
from nnmem.parallel.spec import ParallelSpec
from nnmem.trace.step import StepConfig
from nnmem.trace.tracker import plain_tensors

FLAG = "FLAGS_caffe2_report_cpu_memory_usage"


@dataclass(frozen=True)
class RankJob:
    """What every rank is asked to do (the same for all; each knows its rank)."""

    model: bytes  # pickle of an nn.Module or a zero-argument factory
    inputs: bytes
    config: StepConfig
    dtype: torch.dtype | None
    spec: ParallelSpec
    threads: int
    port: int
    result_folder: str
    tp_plan: dict[str, str] | None = None


def report_all_cpu_frees() -> None:
    """Set libc10's flag so the allocator's total counts frees on every thread."""
    library = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libc10.so"))
    ctypes.c_bool.in_dll(library, FLAG).value = True


def result_path(folder: str, rank: int) -> str:
    return os.path.join(folder, f"rank{rank}.pickle")


def run_rank(rank: int, job: RankJob) -> None:
    """The body of one spawned rank: measure, and write the result (or the error) to a file."""
    report_all_cpu_frees()
    try:
        result: Any = _measure(rank, job)
    except BaseException as error:  # reported to the parent, which raises MeasureError
        result = {
            "error": f"rank {rank}: {type(error).__name__}: {error}",
            "traceback": traceback.format_exc(),
        }
    with open(result_path(job.result_folder, rank), "wb") as file:
        pickle.dump(result, file)


def _measure(rank: int, job: RankJob) -> Any:
    from torch.profiler import ProfilerActivity, profile
    from torch.utils._pytree import tree_flatten

    from nnmem.measure.cpu import _build, _memory_events
    from nnmem.measure.job import Job, Measurement
    from nnmem.parallel.mesh import coordinates, make_meshes
    from nnmem.parallel.pipeline import static_shapes
    from nnmem.parallel.wrap import prepare

    torch.set_num_threads(job.threads)
    spec = job.spec
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{job.port}", rank=rank, world_size=spec.world_size
    )
    try:
        meshes = make_meshes(spec)
        observer = _RankMarks()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            torch.manual_seed(0)
            one = Job(
                model=job.model,
                inputs=job.inputs,
                config=job.config,
                dtype=job.dtype,
                threads=job.threads,
                result_path="",
            )
            model, inputs = _build(one)
            prepared = prepare(
                model,
                spec,
                meshes,
                job.config.optimizer,
                job.config.implementation,
                job.config.device,
                fake=False,
                tp_plan=job.tp_plan,
                inputs=inputs,
                stage=coordinates(spec, rank).stage,
            )
            params = list(prepared.inner.parameters())
            local = [_local(p) for p in params]
            buffers = list(prepared.inner.buffers())
            leaves = [t for t in tree_flatten(inputs)[0] if isinstance(t, torch.Tensor)]
            sizes = (unique_bytes(local), unique_bytes(buffers), unique_bytes(leaves))
            config = job.config
            if prepared.optimizer is not config.optimizer:
                from dataclasses import replace

                config = replace(config, optimizer=prepared.optimizer)
            with synchronous_collectives(), static_shapes():
                prepared.run(inputs, config, observer)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    events, marks = _memory_events(prof)
    # With the flag set from the start, the total also counts what the process held before
    # the profiler began: measure from the level the first event starts at.
    start = events[0][2] - events[0][1] if events else 0
    return Measurement(
        times_ns=tuple(e[0] for e in events),
        deltas=tuple(e[1] for e in events),
        totals=tuple(e[2] - start for e in events),
        marks=tuple(marks),
        parameter_bytes=sizes[0],
        buffer_bytes=sizes[1],
        input_bytes=sizes[2],
        gradient_bytes=observer.gradient_bytes,
        optimizer_state_bytes=observer.optimizer_state_bytes,
        parameters=sum(p.numel() for p in params),
        threads=job.threads,
    )


# The collectives FSDP2 issues asynchronously (older PyTorch: the *_tensor names).
ASYNC_COLLECTIVES = (
    "all_gather_single",
    "reduce_scatter_single",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
)
RELEASE_PAUSE_S = 0.005


@contextlib.contextmanager
def synchronous_collectives() -> Iterator[None]:
    """Within the block, each of `ASYNC_COLLECTIVES` is waited for as soon as it is issued.

    gloo copies an all-gather's output and a reduce-scatter's input through a flat buffer
    held by the collective's work object, which its worker thread drops some time after
    the collective completes; on a busy machine that moment races with the rank's next
    kernels, and the same step's measured peak moved by up to 7 % between runs. Here each
    collective is waited for, its work object is not handed back (FSDP2 then waits on
    nothing), and the rank pauses `RELEASE_PAUSE_S` so that gloo's thread can drop it: each
    buffer lives while its collective runs, as the estimate's gloo rule counts it
    (`nnmem.parallel.collectives`).
    """
    originals = {name: getattr(dist, name) for name in ASYNC_COLLECTIVES if hasattr(dist, name)}

    def waited(collective: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, async_op: bool = False, **kwargs: Any) -> None:
            work = collective(*args, async_op=True, **kwargs)
            if work is not None:
                work.wait()
                del work
                time.sleep(RELEASE_PAUSE_S)

        return call

    for name, collective in originals.items():
        setattr(dist, name, waited(collective))
    try:
        yield
    finally:
        for name, collective in originals.items():
            setattr(dist, name, collective)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    local = getattr(tensor, "_local_tensor", None)
    return local if isinstance(local, torch.Tensor) else tensor


class _RankMarks(_Marks):
    """The measuring observer, sizing DTensor gradients and state by their local shards."""

    def saw_gradients(self, params: list[torch.nn.Parameter]) -> None:
        grads = [t for p in params if p.grad is not None for t in plain_tensors(p.grad)]
        self.gradient_bytes = max(self.gradient_bytes, unique_bytes(grads))

    def saw_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        state = [
            t
            for s in optimizer.state.values()
            for v in s.values()
            if isinstance(v, torch.Tensor)
            for t in plain_tensors(v)
        ]
        self.optimizer_state_bytes = max(self.optimizer_state_bytes, unique_bytes(state))
