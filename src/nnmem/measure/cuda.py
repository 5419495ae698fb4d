"""The measuring subprocess on a CUDA device: the step run for real, peaks from torch.cuda.

At each phase boundary the device is synchronised and the allocator's peak since the last
boundary is read (`max_memory_allocated`, `max_memory_reserved`), then reset
(`reset_peak_memory_stats`). The first step warms up what CUDA libraries keep for good:
cuBLAS and cuBLASLt workspaces are allocated through the caching allocator at the first
matmul of a stream and stay allocated, so they are in every later peak; the steady-state
(last) step is the one to compare. Not yet run on a GPU in this project's CI.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils._pytree import tree_flatten, tree_map

from nnmem.categories import Phase
from nnmem.measure.job import Job, unique_bytes
from nnmem.trace.step import run_step


@dataclass(frozen=True)
class PhasePeak:
    phase: str
    step: int
    allocated: int
    reserved: int


@dataclass(frozen=True)
class CudaMeasurement:
    """Per-phase peaks of the real run on the device, and the model's sizes."""

    peaks: tuple[PhasePeak, ...]
    parameter_bytes: int
    buffer_bytes: int
    input_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int
    parameters: int
    device_name: str


class _PhasePeaks:
    def __init__(self) -> None:
        self.peaks: list[PhasePeak] = []
        self.phase, self.step = Phase.SETUP, 0
        self.gradient_bytes = 0
        self.optimizer_state_bytes = 0

    def set_phase(self, phase: Phase, step: int, micro: int = 0) -> None:
        torch.cuda.synchronize()
        self.peaks.append(
            PhasePeak(
                str(self.phase),
                self.step,
                torch.cuda.max_memory_allocated(),
                torch.cuda.max_memory_reserved(),
            )
        )
        torch.cuda.reset_peak_memory_stats()
        self.phase, self.step = phase, step

    def saw_gradients(self, params: list[torch.nn.Parameter]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        self.gradient_bytes = max(self.gradient_bytes, unique_bytes(grads))

    def saw_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        self.optimizer_state_bytes = max(self.optimizer_state_bytes, unique_bytes(state))

    def saw_kv_cache(self, tensors: list[torch.Tensor]) -> None:
        pass


def run_cuda(job: Job, model: torch.nn.Module, inputs: object) -> CudaMeasurement:
    """Move the built model and inputs to the device and run the step there."""
    device = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats()
    model = model.to(device)
    inputs = tree_map(lambda v: v.to(device) if isinstance(v, torch.Tensor) else v, inputs)
    observer = _PhasePeaks()
    run_step(model, inputs, job.config, observer)
    observer.set_phase(Phase.SETUP, job.config.steps + 1)
    params = list(model.parameters())
    leaves = [v for v in tree_flatten(inputs)[0] if isinstance(v, torch.Tensor)]
    return CudaMeasurement(
        peaks=tuple(observer.peaks),
        parameter_bytes=unique_bytes(params),
        buffer_bytes=unique_bytes(list(model.buffers())),
        input_bytes=unique_bytes(leaves),
        gradient_bytes=observer.gradient_bytes,
        optimizer_state_bytes=observer.optimizer_state_bytes,
        parameters=sum(p.numel() for p in params),
        device_name=torch.cuda.get_device_name(),
    )
