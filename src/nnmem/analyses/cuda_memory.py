"""A traced step's memory as CUDA's caching allocator would hold it: allocated and reserved.

The trace gives live bytes. On a GPU every storage is a request to PyTorch's caching
allocator, which rounds it up to a block and carves blocks out of segments it keeps
(`nnmem.analyses.allocator`). `allocator_events` turns a `Trace` into the allocator's
requests, in order: the storages alive before the step (parameters, buffers, inputs), then
every birth, death and resize of the step (a resize is a new block, then the old one freed, as
`resize_bytes_cuda` does), and the fixed allocations the trace cannot see:

- **cuBLAS workspaces**: PyTorch gives each cuBLAS handle, per stream, one workspace from the
  caching allocator and keeps it (`setWorkspaceForHandle` in CublasHandlePool.cpp; cuBLASLt
  shares it by default). Handles are per thread: the forward runs on the Python thread, the
  backward on autograd's device thread, so a training step holds two workspaces, inference one.
  Each is allocated at its thread's first BLAS op (matrix multiply), and never freed.

`replay` runs them through the simulation and `with_cuda_memory` puts the result on a
`Report`: `allocated_rounded_bytes` (what `torch.cuda.max_memory_allocated()` would read),
`reserved_bytes` (`torch.cuda.max_memory_reserved()`) and `fragmentation_bytes` (reserved at
its peak but never allocated). The CUDA context (about 400 MiB, `nnmem.gpus`) is outside the
allocator and is not in these numbers; a GPU's `usable_bytes` already leaves it out.

Known limitations: cuDNN's convolution workspaces (chosen against the free memory at run
time) are not counted; scalar optimizer `step` tensors, which live on the CPU for non-fused
optimizers, are replayed as device blocks (512 bytes each); one stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

import torch

from nnmem.analyses.allocator import Alloc, AllocatorConfig, AllocatorResult, AllocEvent, Free, simulate
from nnmem.categories import Mode, Phase
from nnmem.gpus import Gpu
from nnmem.options import parse_dtype
from nnmem.report import Report
from nnmem.trace.cuda import Attention, CudaDevice, CudaKernels, cuda_device
from nnmem.trace.optimizers import Implementation, OptimizerFactory
from nnmem.trace.step import LossFn
from nnmem.trace.tracker import Trace

if TYPE_CHECKING:
    from nnmem.estimate import ModelLike

MiB: Final = 1024**2

# ops that run on a cuBLAS handle (and so make its workspace on first use)
BLAS_OPS: Final = frozenset(
    {
        "aten.mm.default",
        "aten.addmm.default",
        "aten._addmm_activation.default",
        "aten.bmm.default",
        "aten.baddbmm.default",
        "aten.addbmm.default",
        "aten.mv.default",
        "aten.addmv.default",
        "aten.addr.default",
        "aten.dot.default",
        "aten.vdot.default",
        "aten._scaled_mm.default",
    }
)


@dataclass(frozen=True)
class CudaMemory:
    """What the caching allocator would hold for one traced step."""

    allocated_bytes: int  # torch.cuda.max_memory_allocated(): block-rounded
    reserved_bytes: int  # torch.cuda.max_memory_reserved(): segments taken from the device
    fragmentation_bytes: int  # reserved at its peak but not allocated then
    blas_workspaces: int  # cuBLAS workspaces held (one per thread that ran a matrix multiply)
    blas_workspace_bytes: int  # the size of each
    allocator: AllocatorResult


def _workspace_slots(trace: Trace, at_start: bool) -> list[int]:
    """Event indices after which each thread's cuBLAS workspace is allocated (-1: at the start).

    The Python thread's first BLAS op outside backward, and autograd's first one in backward.
    """
    if not any(trace.records[e.record].op in BLAS_OPS for e in trace.events):
        return []
    forward = backward = None
    for index, event in enumerate(trace.events):
        record = trace.records[event.record]
        if record.birth != index or record.op not in BLAS_OPS:
            continue
        if event.phase is Phase.BACKWARD:
            backward = index if backward is None else backward
        else:
            forward = index if forward is None else forward
        if forward is not None and backward is not None:
            break
    slots = sorted(i for i in (forward, backward) if i is not None)
    return [-1] * len(slots) if at_start else slots


def allocator_events(
    trace: Trace, blas_workspace_bytes: int, blas_at_start: bool = False
) -> list[AllocEvent]:
    """The caching allocator's requests for a traced step (see the module docstring).

    With `blas_at_start`, the cuBLAS workspaces come before everything else, as in a process
    that warmed cuBLAS up before building the model (bench/gpu_check.py does).
    """
    slots = _workspace_slots(trace, blas_at_start)
    next_id = len(trace.records)
    events: list[AllocEvent] = []
    workspaces = [s for s in slots if s == -1]
    for _ in workspaces:
        events.append(Alloc(next_id, blas_workspace_bytes))
        next_id += 1
    pending = sorted(s for s in slots if s >= 0)
    ids: dict[int, int] = {}  # record -> its current allocation id
    sizes: dict[int, int] = {}
    for record_index in trace.baseline:
        record = trace.records[record_index]
        ids[record_index], sizes[record_index] = record_index, record.nbytes_at_start
        events.append(Alloc(record_index, record.nbytes_at_start))
    for index, event in enumerate(trace.events):
        record = trace.records[event.record]
        if event.record not in ids:  # a birth
            ids[event.record], sizes[event.record] = event.record, event.delta
            events.append(Alloc(event.record, event.delta))
        elif record.death == index:
            events.append(Free(ids.pop(event.record)))
            sizes.pop(event.record)
        else:  # a resize: the new block first, then the old one freed
            sizes[event.record] += event.delta
            events.append(Alloc(next_id, sizes[event.record]))
            events.append(Free(ids[event.record]))
            ids[event.record] = next_id
            next_id += 1
        while pending and pending[0] == index:
            events.append(Alloc(next_id, blas_workspace_bytes))
            next_id += 1
            pending.pop(0)
    return events


def replay(
    trace: Trace,
    device: CudaDevice | None = None,
    config: AllocatorConfig | None = None,
    capacity_bytes: int | None = None,
    blas_at_start: bool = False,
) -> CudaMemory:
    """Replay `trace` through the caching allocator of `device` (default: a generic sm80 GPU)."""
    device = device or CudaDevice()
    workspaces = len(_workspace_slots(trace, blas_at_start))
    events = allocator_events(trace, device.blas_workspace_bytes, blas_at_start)
    result = simulate(events, config or AllocatorConfig(), capacity_bytes)
    return CudaMemory(
        allocated_bytes=result.peak_allocated_bytes,
        reserved_bytes=result.peak_reserved_bytes,
        fragmentation_bytes=result.fragmentation_bytes,
        blas_workspaces=workspaces,
        blas_workspace_bytes=device.blas_workspace_bytes,
        allocator=result,
    )


def parse_allocator(value: str | AllocatorConfig | None) -> AllocatorConfig:
    """An `AllocatorConfig`, from `PYTORCH_CUDA_ALLOC_CONF` syntax or as given (None: defaults)."""
    if value is None:
        return AllocatorConfig()
    if isinstance(value, AllocatorConfig):
        return value
    return AllocatorConfig.from_string(value)


def with_cuda_memory(
    report: Report, trace: Trace, kernels: CudaKernels, config: AllocatorConfig | None = None
) -> Report:
    """`report` with the caching allocator's view of `trace` and notes on the CUDA choices made."""
    memory = replay(trace, kernels.device, config)
    notes = list(report.notes)
    if kernels.chosen:
        counts = ", ".join(f"{kernels.chosen[a]} {a}" for a in Attention if kernels.chosen[a])
        notes.append(f"attention on CUDA ({kernels.device.name}): {counts} (PyTorch's SDPA backend choice)")
    threads = {1: "one cuBLAS workspace", 2: "two cuBLAS workspaces (forward and autograd threads)"}
    if memory.blas_workspaces:
        notes.append(
            f"allocated and reserved include {threads[memory.blas_workspaces]}, kept after first use"
        )
    notes.append("reserved excludes the CUDA context, which a GPU's usable memory already leaves out")
    return replace(
        report,
        reserved_bytes=memory.reserved_bytes,
        allocated_rounded_bytes=memory.allocated_bytes,
        fragmentation_bytes=memory.fragmentation_bytes,
        notes=tuple(notes),
    )


def extend_cuda_memory(
    reports: list[Report], probes: tuple[int, ...], blocks: int
) -> tuple[int | None, int | None, int | None]:
    """Reserved, allocated and fragmentation bytes for `blocks` repeated blocks, from probe
    reports with `probes` blocks (None each when the probes have none: device="cpu").

    Live bytes grow by exactly the same amount per block; what the allocator holds does so only
    on average (segments are shared between blocks), so the line goes through the first and last
    probes, and reserved is rounded up to the allocator's 2 MiB pages: approximate, to a few
    segments. Fragmentation (reserved less what was allocated when reserved peaked) jumps from
    probe to probe with the moment the last segment is taken; reserved less peak allocated
    stands in for it.
    """
    first, last = reports[0], reports[-1]
    if any(r.reserved_bytes is None or r.allocated_rounded_bytes is None for r in reports):
        return None, None, None
    assert first.reserved_bytes is not None and last.reserved_bytes is not None
    assert first.allocated_rounded_bytes is not None and last.allocated_rounded_bytes is not None
    span, ahead = probes[-1] - probes[0], blocks - probes[-1]
    reserved = last.reserved_bytes + (last.reserved_bytes - first.reserved_bytes) * ahead / span
    allocated = (
        last.allocated_rounded_bytes
        + (last.allocated_rounded_bytes - first.allocated_rounded_bytes) * ahead / span
    )
    reserved_pages = max(0, math.ceil(reserved / (2 * MiB)) * 2 * MiB)
    allocated_bytes = max(0, round(allocated))
    return reserved_pages, allocated_bytes, max(0, reserved_pages - allocated_bytes)


__all__ = [
    "BLAS_OPS",
    "CudaMemory",
    "allocator_events",
    "estimate_with_trace",
    "extend_cuda_memory",
    "parse_allocator",
    "replay",
    "with_cuda_memory",
]


def estimate_with_trace(
    model: ModelLike,
    inputs: Any,
    mode: str | Mode = "train",
    optimizer: str | OptimizerFactory = "adam",
    loss: LossFn | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    amp: str | torch.dtype | None = None,
    accumulate: int = 1,
    set_to_none: bool = True,
    implementation: str | Implementation = "auto",
    steps: int | None = None,
    threads: int | None = None,
    workspace: bool = True,
    gpu: CudaDevice | Gpu | str | None = None,
    allocator: AllocatorConfig | str | None = None,
) -> tuple[Report, Trace, CudaKernels]:
    """`nnmem.estimate(..., device="cuda")`, also returning the trace and the kernel choices,
    for analyses that replay the trace again (under a capacity, in `nnmem.analyses.fit`)."""
    from nnmem.estimate import (
        build_model,
        make_report,
        run_trace,
        shortfall_rule,
        step_config,
        workspace_rule,
    )

    config = step_config(mode, optimizer, loss, "cuda", amp, accumulate, set_to_none, implementation, steps)
    param_dtype = parse_dtype(dtype)
    module = build_model(model)
    threads = threads or torch.get_num_threads()
    rule = workspace_rule(config.device, threads) if workspace else None
    kernels = CudaKernels(cuda_device(gpu))
    shortfall = shortfall_rule(config.device) if workspace else None
    trace, shapes, count = run_trace(module, inputs, config, param_dtype, rule, shortfall, kernels)
    report = make_report(trace, module, config, param_dtype, shapes, count, threads)
    return with_cuda_memory(report, trace, kernels, parse_allocator(allocator)), trace, kernels
