"""`estimate_parallel`: each rank's memory for a step spread over ranks, traced, not run.

`nnmem.estimate(..., parallel=...)` lands here. The ranks that stand for the others
(`nnmem.parallel.trace.representative_ranks`) are traced one at a time, each on its own
fake process group; every rank gets the report of the rank traced for it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from nnmem.categories import Mode
from nnmem.errors import UsageError
from nnmem.estimate import ModelLike, build_model, make_report, shortfall_rule, step_config, workspace_rule
from nnmem.options import parse_dtype
from nnmem.parallel.mesh import coordinates
from nnmem.parallel.report import ParallelReport, RankReport, model_state
from nnmem.parallel.spec import Backend, ParallelSpec, parse_parallel
from nnmem.parallel.trace import representative_ranks, trace_rank
from nnmem.report import Report
from nnmem.trace.optimizers import Implementation, OptimizerFactory
from nnmem.trace.step import LossFn


def estimate_parallel(
    model: ModelLike,
    inputs: Any,
    parallel: str | ParallelSpec,
    world_size: int | None = None,
    mode: str | Mode = "train",
    optimizer: str | OptimizerFactory = "adam",
    loss: LossFn | None = None,
    device: str = "cuda",
    *,
    dtype: str | torch.dtype | None = None,
    amp: str | torch.dtype | None = None,
    accumulate: int = 1,
    set_to_none: bool = True,
    implementation: str | Implementation = "auto",
    steps: int | None = None,
    threads: int | None = None,
    workspace: bool = True,
    backend: str | None = None,
    tp_plan: dict[str, str] | None = None,
) -> ParallelReport:
    """Trace the step of each distinct rank of `parallel` on fake tensors; nothing is allocated.

    `inputs` are one rank's inputs (its share of the global batch). `backend` ("nccl",
    the default, or "gloo") says whose collective buffers to count.
    """
    config = step_config(mode, optimizer, loss, device, amp, accumulate, set_to_none, implementation, steps)
    spec = parse_parallel(parallel, world_size) if isinstance(parallel, str) else parallel
    if world_size is not None and spec.world_size != world_size:
        raise UsageError(
            f"--parallel {spec.describe()} uses {spec.world_size} ranks, not --world-size {world_size}"
        )
    if backend is not None:
        try:
            spec = replace(spec, backend=Backend(backend.strip().lower()))
        except ValueError:
            raise UsageError(f"unknown backend '{backend}' (known: nccl, gloo)") from None
    param_dtype = parse_dtype(dtype)
    module = build_model(model)
    threads = threads or torch.get_num_threads()
    rule = workspace_rule(config.device, threads) if workspace else None
    shortfall = shortfall_rule(config.device) if workspace else None
    stand_for = representative_ranks(module, spec)
    traced: dict[int, Report] = {}
    notes: list[str] = []
    for rank in sorted(set(stand_for.values())):
        result = trace_rank(module, inputs, config, param_dtype, rule, spec, rank, tp_plan, shortfall)
        traced[rank] = make_report(
            result.trace, module, config, param_dtype, result.output_shapes, result.parameter_count, threads
        )
        notes.extend(n for n in result.notes if n not in notes)
    ranks = []
    for rank in range(spec.world_size):
        where = coordinates(spec, rank)
        source = stand_for[rank]
        report = traced[source]
        ranks.append(
            RankReport(rank, where.stage, where.data, where.tensor, report, source, model_state(report))
        )
    notes.append(_backend_note(spec))
    notes.append(
        f"traced ranks {sorted(traced)} of {spec.world_size}; each other rank holds what the traced"
        " rank of its pipeline stage with shards of the same sizes holds"
    )
    return ParallelReport.of(ranks, spec.describe(), spec.world_size, str(spec.backend), tuple(notes))


def _backend_note(spec: ParallelSpec) -> str:
    if spec.backend is Backend.GLOO:
        return "backend gloo: each all-gather also holds a flat buffer of its whole output"
    return "backend nccl: collectives work in place or into their outputs (no extra buffers)"
