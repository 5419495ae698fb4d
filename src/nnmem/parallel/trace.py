"""Trace one rank of a parallel step on fake tensors, under PyTorch's fake process group.

For each rank that stands for others (`representative_ranks`): a fresh fake process
group says which rank this process is, the meshes are made (outside `FakeTensorMode`),
a copy of the model with fake parameters is spread with PyTorch's own wrappers
(`nnmem.parallel.wrap`), and the very step `nnmem.estimate` traces runs on it under the
storage tracker. Nothing is communicated; no memory is allocated.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
    UnsupportedOperatorException,
)
from torch.utils._pytree import tree_flatten

from nnmem.categories import Category
from nnmem.errors import ModelError, NnmemError, TraceError
from nnmem.estimate import count_parameters, quiet_fake_tensor_log
from nnmem.parallel.collectives import collective_rule
from nnmem.parallel.mesh import coordinates, fake_process_group, make_meshes, rank_of
from nnmem.parallel.patches import no_bucket_rebuild, real_meshes, watch_storage_resizes
from nnmem.parallel.pipeline import static_shapes
from nnmem.parallel.spec import DataParallel, ParallelSpec
from nnmem.parallel.wrap import prepare
from nnmem.trace.fake import fake_inputs
from nnmem.trace.step import StepConfig, module_names
from nnmem.trace.tracker import ShortfallRule, StorageTracker, Trace, WorkspaceRule


@dataclass(frozen=True)
class RankTrace:
    """What tracing one rank gave."""

    rank: int
    trace: Trace
    output_shapes: dict[str, tuple[int, ...]]
    parameter_count: int
    notes: tuple[str, ...]


def trace_rank(
    module: torch.nn.Module,
    inputs: Any,
    config: StepConfig,
    param_dtype: torch.dtype | None,
    rule: WorkspaceRule | None,
    spec: ParallelSpec,
    rank: int,
    tp_plan: dict[str, str] | None = None,
    shortfall: ShortfallRule | None = None,
) -> RankTrace:
    """Trace `rank`'s step; `module` (real or meta) is left as it was."""
    with fake_process_group(spec.world_size, rank):
        meshes = make_meshes(spec)
        with _no_fake_cache():  # the mode reads the setting when it is made
            fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        tracker = StorageTracker(collective_rule(rule, spec.backend), shortfall)
        output_shapes: dict[str, tuple[int, ...]] = {}
        parameter_count = count_parameters(module)
        clone = fake_copy(module, fake_mode, param_dtype)
        buckets = 0

        def saw_bucket(bucket: torch.Tensor) -> None:  # DDP's buckets hold gradients
            nonlocal buckets
            buckets += 1
            tracker.register({f"(ddp buckets).{buckets}": bucket}, Category.GRADIENT)

        fake_in = fake_inputs(inputs, fake_mode, param_dtype)
        try:
            with fake_mode, _no_fake_cache(), static_shapes(), real_meshes():
                prepared = prepare(
                    clone,
                    spec,
                    meshes,
                    config.optimizer,
                    config.implementation,
                    config.device,
                    fake=True,
                    tp_plan=tp_plan,
                    on_bucket=saw_bucket,
                    inputs=fake_in,
                    stage=coordinates(spec, rank).stage,
                )
        except NnmemError:
            raise
        except Exception as error:
            raise ModelError(
                f"rank {rank}: spreading the model with {spec.describe()} failed:"
                f" {type(error).__name__}: {error}"
            ) from error
        step_config = _with_optimizer(config, prepared.optimizer)
        tracker.register(dict(prepared.inner.named_parameters()), Category.PARAMETER)
        tracker.register(dict(prepared.inner.named_buffers()), Category.BUFFER)
        leaves = [t for t in tree_flatten(fake_in)[0] if isinstance(t, torch.Tensor)]
        tracker.register({f"input{i}": t for i, t in enumerate(leaves)}, Category.INPUT)
        try:
            with (
                _no_fake_cache(),
                quiet_fake_tensor_log(),
                watch_storage_resizes(tracker),
                no_bucket_rebuild(),
                static_shapes(),
                real_meshes(),
                fake_mode,
                tracker,
                module_names(prepared.inner, tracker.module_stack, output_shapes),
            ):
                prepared.run(fake_in, step_config, tracker)
        except NnmemError:
            raise
        except (DataDependentOutputException, DynamicOutputShapeException) as error:
            raise TraceError(
                f"rank {rank}, {_where(tracker)}: the op {tracker.last_op} needs tensor values,"
                " which fake tensors do not have; measure it for real with `nnmem measure --parallel`"
            ) from error
        except UnsupportedOperatorException as error:
            raise TraceError(
                f"rank {rank}, {_where(tracker)}: the op {error.func} has no fake-tensor"
                " implementation in this PyTorch; use `nnmem measure --parallel` instead"
            ) from error
        except Exception as error:
            raise ModelError(
                f"rank {rank}, {_where(tracker)}: the {spec.describe()} step failed during"
                f" {tracker.phase}: {type(error).__name__}: {error}"
            ) from error
        finally:
            tracker.close()
    return RankTrace(rank, tracker.trace, output_shapes, parameter_count, tuple(prepared.notes))


def fake_copy(module: torch.nn.Module, mode: FakeTensorMode, dtype: torch.dtype | None) -> torch.nn.Module:
    """A copy of `module` whose parameters and buffers are new fakes of `mode` (tied ones
    stay tied); floating ones take `dtype` if given. The wrappers change the copy, not `module`."""
    memo: dict[int, Any] = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if id(tensor) in memo:
            continue
        target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        with mode:
            fake = torch.empty_strided(tensor.shape, tensor.stride(), dtype=target, device="cpu")
        if isinstance(tensor, torch.nn.Parameter):
            fake = torch.nn.Parameter(fake, requires_grad=tensor.requires_grad)
        memo[id(tensor)] = fake
    return copy.deepcopy(module, memo)


def _where(tracker: StorageTracker) -> str:
    module = tracker.failed_in or tracker.module
    return f"in module '{module}'" if not module.startswith("(") else f"in {module.strip('()')}"


def _with_optimizer(config: StepConfig, optimizer: Any) -> StepConfig:
    return config if optimizer is config.optimizer else replace(config, optimizer=optimizer)


@contextlib.contextmanager
def _no_fake_cache() -> Iterator[None]:
    # The fake-tensor dispatch cache costs more than it saves here (see nnmem.estimate).
    with torch._dynamo.config.patch(fake_tensor_cache_enabled=False):
        yield


def representative_ranks(module: torch.nn.Module, spec: ParallelSpec) -> dict[int, int]:
    """Each rank -> the rank traced for it.

    Ranks hold the same memory when they are at the same pipeline stage and hold shards
    of the same sizes. Tensor-parallel shards are even (the plans split dimensions that
    the head counts divide); FSDP's `torch.chunk` shards can differ at the last ranks, and
    ZeroRedundancyOptimizer gives each rank different parameters: those ranks are traced
    one by one where their shares differ.
    """
    signatures: dict[int, tuple[Any, ...]] = {}
    shapes = [tuple(p.shape) for p in module.parameters()]
    for data in range(spec.data_degree):
        if spec.sharded:
            signatures[data] = tuple(
                _chunk_size(shape[0], spec.data_degree, data) if shape else 0 for shape in shapes
            )
        elif spec.data is DataParallel.ZERO1:
            signatures[data] = (data,)
        else:
            signatures[data] = ()
    mapping: dict[int, int] = {}
    first_of: dict[tuple[int, tuple[Any, ...]], int] = {}
    for rank in range(spec.world_size):
        where = coordinates(spec, rank)
        key = (where.stage, signatures[where.data])
        if key not in first_of:
            first_of[key] = rank_of(spec, where.stage, where.data, 0)
        mapping[rank] = first_of[key]
    return mapping


def _chunk_size(length: int, chunks: int, index: int) -> int:
    """The size of `torch.chunk(range(length), chunks)[index]` (0 past the last chunk)."""
    each = -(-length // chunks)
    return max(0, min(each, length - each * index))
