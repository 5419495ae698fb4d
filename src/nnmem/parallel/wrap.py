"""Spread a model over ranks with PyTorch's own wrappers, the same way for a trace and a real run.

Tensor parallel first (`parallelize_module` on the tensor mesh), then data parallel:
`DistributedDataParallel`, FSDP2 `fully_shard` (each block, then the root; ZeRO-2 is
`reshard_after_forward=False`), or `ZeroRedundancyOptimizer` over DDP for ZeRO-1.

FSDP1 (`FullyShardedDataParallel`) is not used: it decides whether a flat parameter is
allocated or resharded by comparing data pointers (`_data_ptr_allocated`, `_same_storage`
in `torch/distributed/fsdp/_flat_param.py`), and fake tensors have none, so it cannot
be traced; its SHARD_GRAD_OP is modelled by FSDP2 without resharding after forward,
which PyTorch documents as the same strategy.

Under fake tensors DDP needs three things a real run does not (`fake=True`): no
`init_sync` (its parameter-shape check and broadcast read data), a communication
hook whose future returns the bucket itself, and no bucket rebuild (it broadcasts the
new bucket order); see `nnmem.parallel.patches`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch._C._distributed_c10d import GradBucket

from nnmem.errors import UsageError
from nnmem.parallel.mesh import Meshes
from nnmem.parallel.pipeline import PipelineRank, build_stage, run_pipeline_step
from nnmem.parallel.spec import DataParallel, ParallelSpec
from nnmem.trace.optimizers import Implementation, OptimizerFactory, make_optimizer
from nnmem.trace.step import Observer, StepConfig, run_step

BucketCallback = Callable[[torch.Tensor], None]


@dataclass
class Prepared:
    """A model ready for the step on one rank."""

    model: nn.Module  # what the step calls
    inner: nn.Module  # the model inside any wrapper (its module names are the user's)
    optimizer: str | OptimizerFactory
    notes: list[str] = field(default_factory=list)
    pipeline: PipelineRank | None = None  # pp=N: this rank's stage and schedule

    def run(self, inputs: Any, config: StepConfig, observer: Observer) -> None:
        """The training (or inference) step on this rank: the pipeline's, or `run_step`."""
        if self.pipeline is not None:
            run_pipeline_step(self.pipeline, inputs, config, observer)
        else:
            run_step(self.model, inputs, config, observer)


def prepare(
    model: nn.Module,
    spec: ParallelSpec,
    meshes: Meshes,
    optimizer: str | OptimizerFactory,
    implementation: Implementation,
    device: str,
    *,
    fake: bool,
    tp_plan: dict[str, str] | None = None,
    on_bucket: BucketCallback | None = None,
    inputs: Any = None,
    stage: int = 0,
) -> Prepared:
    """Apply `spec` to `model` (in place) on the rank this process is (at pipeline `stage`)."""
    notes: list[str] = []
    if spec.pipeline > 1:
        if spec.tensor > 1 or spec.data_degree > 1:
            raise UsageError("pp=N is not combined with data or tensor parallelism here; use pp=N alone")
        rank = build_stage(model, spec, meshes, inputs, stage)
        notes.append(
            f"pipeline stage {stage} of {spec.pipeline}: {spec.schedule} over {spec.micro_batches} micro-batches"
        )
        return Prepared(rank.module, rank.module, optimizer, notes, rank)
    if spec.tensor > 1:
        assert meshes.tensor is not None
        plan = tp_plan if tp_plan is not None else default_tp_plan(model)
        apply_tensor_parallel(model, plan, meshes.tensor)
        notes.append(f"tensor parallel over {spec.tensor} ranks: {len(plan)} plan entries")
    if spec.data is DataParallel.NONE or spec.data_degree == 1:  # one data-parallel rank: no wrapper
        return Prepared(model, model, optimizer, notes)
    if spec.data in (DataParallel.DDP, DataParallel.ZERO1):
        if spec.tensor > 1:
            raise UsageError(
                "ddp with tp is not supported by DistributedDataParallel over DTensors; use fsdp,tp=N"
            )
        wrapped = _ddp(model, spec, meshes, fake=fake, on_bucket=on_bucket)
        if spec.data is DataParallel.ZERO1:
            optimizer = zero_optimizer(optimizer, implementation, device, meshes)
            notes.append("ZeRO-1: ZeroRedundancyOptimizer shards the optimizer state over the DDP ranks")
        return Prepared(wrapped, model, optimizer, notes)
    units = _fsdp2(model, spec, meshes)
    notes.append(
        f"FSDP2 over {spec.data_degree} ranks: {units} units (blocks and the root),"
        f" reshard_after_forward={spec.reshard_after_forward}"
    )
    return Prepared(model, model, optimizer, notes)


# -- data parallel ---------------------------------------------------------------------------
def _ddp(
    model: nn.Module, spec: ParallelSpec, meshes: Meshes, *, fake: bool, on_bucket: BucketCallback | None
) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    group = meshes.data.get_group() if meshes.data is not None else None
    ddp = DistributedDataParallel(
        model,
        process_group=group,
        bucket_cap_mb=spec.bucket_mib,
        gradient_as_bucket_view=spec.bucket_view,
        init_sync=not fake,
    )
    if fake:
        ddp.register_comm_hook(on_bucket, _bucket_itself)
    return ddp


def _bucket_itself(on_bucket: BucketCallback | None, bucket: Any) -> torch.futures.Future[torch.Tensor]:
    """A comm hook for fake tensors: the all-reduce is in place, so the bucket is the result."""
    buffer = bucket.buffer()
    if on_bucket is not None:
        on_bucket(buffer)
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    future.set_result(buffer)
    return future


# DDP checks a hook's annotations against the classes themselves, not their names as strings.
_bucket_itself.__annotations__.update(bucket=GradBucket, **{"return": torch.futures.Future[torch.Tensor]})


def block_modules(model: nn.Module) -> list[nn.Module]:
    """What FSDP shards as one unit: a transformers model's `_no_split_modules` (its decoder
    layers), else the modules of the first `nn.ModuleList`, else the root's children that
    hold parameters."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    if names:
        found = [m for m in model.modules() if type(m).__name__ in names]
        if found:
            return found
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            return list(module)
    return [child for child in model.children() if any(True for _ in child.parameters())]


def _fsdp2(model: nn.Module, spec: ParallelSpec, meshes: Meshes) -> int:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = meshes.data
    if mesh is None:
        raise UsageError("fsdp needs at least 2 data-parallel ranks")
    policy = MixedPrecisionPolicy(param_dtype=spec.param_dtype, reduce_dtype=spec.reduce_dtype)
    blocks = block_modules(model) if spec.wrap == "block" else []
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=spec.reshard_after_forward, mp_policy=policy)
    fully_shard(model, mesh=mesh, reshard_after_forward=spec.reshard_after_forward, mp_policy=policy)
    return len(blocks) + 1


def zero_optimizer(
    optimizer: str | OptimizerFactory, implementation: Implementation, device: str, meshes: Meshes
) -> OptimizerFactory:
    """An optimizer factory: ZeroRedundancyOptimizer, each rank stepping its share with `optimizer`."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    group = meshes.data.get_group() if meshes.data is not None else None

    def local(params: Any, **defaults: Any) -> torch.optim.Optimizer:
        flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
        return make_optimizer(optimizer, flat, implementation, device)

    class Zero(ZeroRedundancyOptimizer):
        """ZeroRedundancyOptimizer whose `state` is its rank's local optimizer's (what it holds)."""

        def __init__(self, params: list[nn.Parameter]) -> None:
            super().__init__(params, optimizer_class=local, process_group=group)  # type: ignore[arg-type]
            self.state = self.optim.state

    def build(params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return Zero(params)

    return build


# -- tensor parallel -------------------------------------------------------------------------
def default_tp_plan(model: nn.Module) -> dict[str, str]:
    """A plan of `colwise` / `rowwise` by module name.

    A transformers model brings its own (`config.base_model_tp_plan`: in Llama, q/k/v and
    gate/up projections column-wise, o and down projections row-wise), under its base
    model's prefix. Otherwise consecutive pairs of `nn.Linear` in one container go
    column-wise then row-wise (Megatron's MLP split); an odd one out stays replicated.
    """
    config = getattr(model, "config", None)
    base_plan = getattr(config, "base_model_tp_plan", None)
    if base_plan:
        prefix = getattr(model, "base_model_prefix", "")
        has_prefix = bool(prefix) and hasattr(model, prefix)
        return {(f"{prefix}.{k}" if has_prefix else k): v for k, v in base_plan.items()}
    plan: dict[str, str] = {}
    for name, module in model.named_modules():
        linears = [(n, c) for n, c in module.named_children() if isinstance(c, nn.Linear)]
        for i in range(0, len(linears) - 1, 2):
            plan[_join(name, linears[i][0])] = "colwise"
            plan[_join(name, linears[i + 1][0])] = "rowwise"
    if not plan:
        raise UsageError(
            "no tensor-parallel plan for this model: it has no pairs of nn.Linear and no"
            " config.base_model_tp_plan; pass tp_plan={'module.name': 'colwise' | 'rowwise'}"
        )
    return plan


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def apply_tensor_parallel(model: nn.Module, plan: dict[str, str], mesh: Any) -> None:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    styles: dict[str, Callable[[], Any]] = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    names = [name for name, _ in model.named_modules()]
    resolved: dict[str, Any] = {}
    for pattern, style in plan.items():
        if style not in styles:
            raise UsageError(
                f"tensor-parallel style '{style}' for '{pattern}': nnmem knows colwise and rowwise"
            )
        matches = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not matches:
            raise UsageError(f"tensor-parallel plan: no module matches '{pattern}'")
        for name in matches:
            resolved[name] = styles[style]()
    parallelize_module(model, mesh, resolved)
