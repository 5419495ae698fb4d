"""Process groups for one rank: PyTorch's fake process group for a trace, device meshes.

`fake_process_group` initialises `torch.distributed` with PyTorch's fake backend
(`torch.testing._internal.distributed.fake_pg`): every collective returns at once and
moves no data, so one rank of an N-rank job runs in this process alone. Meshes are
made here, outside `FakeTensorMode`: `init_device_mesh` fails inside it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from nnmem.errors import UsageError
from nnmem.parallel.spec import ParallelSpec


@dataclass(frozen=True)
class Meshes:
    """The device meshes of one rank: data parallel, tensor parallel, and the whole grid."""

    grid: DeviceMesh | None  # pp x dp x tp, the dimensions above 1 only
    data: DeviceMesh | None
    tensor: DeviceMesh | None
    pipeline: DeviceMesh | None


@dataclass(frozen=True)
class Coordinates:
    """Where a rank sits in the pp x dp x tp grid (row-major, tensor parallel innermost)."""

    stage: int
    data: int
    tensor: int


def coordinates(spec: ParallelSpec, rank: int) -> Coordinates:
    tensor = rank % spec.tensor
    data = (rank // spec.tensor) % spec.data_degree
    stage = rank // (spec.tensor * spec.data_degree)
    return Coordinates(stage, data, tensor)


def rank_of(spec: ParallelSpec, stage: int, data: int, tensor: int) -> int:
    return (stage * spec.data_degree + data) * spec.tensor + tensor


def make_meshes(spec: ParallelSpec) -> Meshes:
    """The meshes of the rank this process is, on the process group already initialised."""
    dims = [
        (name, n)
        for name, n in (("pp", spec.pipeline), ("dp", spec.data_degree), ("tp", spec.tensor))
        if n > 1
    ]
    if not dims:
        return Meshes(None, None, None, None)
    grid = init_device_mesh("cpu", tuple(n for _, n in dims), mesh_dim_names=tuple(name for name, _ in dims))
    names = {name for name, _ in dims}
    return Meshes(
        grid=grid,
        data=grid["dp"] if "dp" in names else None,
        tensor=grid["tp"] if "tp" in names else None,
        pipeline=grid["pp"] if "pp" in names else None,
    )


@contextlib.contextmanager
def fake_process_group(world_size: int, rank: int) -> Iterator[None]:
    """Within the block, this process is `rank` of `world_size` on the fake backend."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise UsageError(
            "a torch.distributed process group is already initialised in this process; nnmem"
            " traces each rank on its own fake process group. Estimate from a process without one."
        )
    excepthook = sys.excepthook  # init_process_group wraps it to prefix "[rankN]"; each time
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()
        sys.excepthook = excepthook
