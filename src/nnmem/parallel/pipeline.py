"""Pipeline parallel: one stage of an `nn.Sequential` per rank, run by torch.distributed.pipelining.

`stage_modules` cuts the model's children into `pp` contiguous stages of about equal
parameter counts. `build_stage` makes the rank's `PipelineStage` (with example input and
output micro-batches, so no shapes travel between ranks) and its schedule (`ScheduleGPipe`
or `Schedule1F1B`, `micro` micro-batches of the rank's batch). `run_pipeline_step` is the
training step, the same for a trace and a real run: for each step, `schedule.step(...)`
(forward and backward of every micro-batch, in the schedule's order), then the optimizer
step and zero_grad; the observer is told each micro-batch's forward and backward.

Under fake tensors the schedules' first call votes over P2P whether shapes are static and
reads the vote with `.item()`; `static_shapes` skips the vote (the stage was given its
example inputs and outputs, which is what the vote establishes).

Known limitations: models other than `nn.Sequential` need their own stage split (a
transformers model's embedding, layers and head) and are refused; pipeline parallel is
not combined with data or tensor parallelism here; the loss on the last stage is the
step's default loss of each micro-batch's output (its sum, or its `.loss`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nnmem.categories import Mode, Phase
from nnmem.errors import UsageError
from nnmem.parallel.mesh import Meshes
from nnmem.parallel.spec import ParallelSpec, Schedule
from nnmem.trace.optimizers import make_optimizer
from nnmem.trace.step import Observer, StepConfig, default_loss


def stage_modules(model: nn.Module, stages: int) -> list[nn.Sequential]:
    """The model's children cut into `stages` contiguous runs, the largest as small as can be."""
    if not isinstance(model, nn.Sequential):
        raise UsageError(
            f"pp=N splits an nn.Sequential into stages; {type(model).__name__} is not one. Build"
            " the model as nn.Sequential(stage layers...) to estimate it pipelined."
        )
    children = list(model.children())
    if len(children) < stages:
        raise UsageError(
            f"pp={stages}: the model has only {len(children)} layers to share among {stages} stages"
        )
    sizes = [sum(p.numel() for p in c.parameters()) for c in children]
    cuts = _balanced_cuts(sizes, stages)
    bounds = [0, *cuts, len(children)]
    return [nn.Sequential(*children[bounds[k] : bounds[k + 1]]) for k in range(stages)]


def _balanced_cuts(sizes: list[int], stages: int) -> list[int]:
    """Where to cut `sizes` into `stages` non-empty runs so that the largest run's sum is least
    (the linear partition problem, by dynamic programming over prefixes)."""
    n = len(sizes)
    prefix = [0]
    for size in sizes:
        prefix.append(prefix[-1] + size)
    inf = float("inf")
    # best[k][i]: the least largest run over the first i sizes cut into k runs; cut[k][i]: where
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0
    for k in range(1, stages + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    cuts, i = [], n
    for k in range(stages, 0, -1):
        i = cut[k][i]
        cuts.append(i)
    return sorted(cuts)[1:]  # the first run starts at 0


@dataclass
class PipelineRank:
    """One rank's stage of the pipeline, and the schedule that runs it."""

    stage: Any  # torch.distributed.pipelining.PipelineStage
    schedule: Any  # ScheduleGPipe or Schedule1F1B
    module: nn.Module
    index: int
    stages: int
    batch: int


def _example_shapes(
    stages: list[nn.Sequential], micro: torch.Tensor, index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage `index`'s input and output for one micro-batch, on the meta device."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        x = torch.empty(micro.shape, dtype=micro.dtype)
        for k in range(index):
            x = stages[k](x)
        y = stages[index](x)
    return (
        torch.empty(x.shape, dtype=x.dtype, device="meta"),
        torch.empty(y.shape, dtype=y.dtype, device="meta"),
    )


def build_stage(
    model: nn.Module, spec: ParallelSpec, meshes: Meshes, inputs: Any, index: int
) -> PipelineRank:
    """This rank's stage of `model` and its schedule, for `inputs` (one rank's batch)."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    if not isinstance(inputs, torch.Tensor):
        raise UsageError("pp=N takes a single input tensor (the first stage's), split into micro-batches")
    batch = inputs.shape[0]
    if batch % spec.micro_batches:
        raise UsageError(
            f"pp: the batch of {batch} does not split into micro={spec.micro_batches} equal micro-batches"
        )
    stages = stage_modules(model, spec.pipeline)
    micro = inputs[: batch // spec.micro_batches]
    example_in, example_out = _example_shapes(stages, micro, index)
    stage = PipelineStage(
        stages[index],
        index,
        spec.pipeline,
        torch.device("cpu"),
        input_args=(torch.empty(example_in.shape, dtype=example_in.dtype),),
        output_args=(torch.empty(example_out.shape, dtype=example_out.dtype).requires_grad_(),),
        group=meshes.pipeline.get_group() if meshes.pipeline is not None else None,
    )
    kind = ScheduleGPipe if spec.schedule is Schedule.GPIPE else Schedule1F1B
    schedule = kind(stage, spec.micro_batches, loss_fn=_loss)
    return PipelineRank(stage, schedule, stages[index], index, spec.pipeline, batch)


def _loss(output: Any, target: Any) -> torch.Tensor:
    return default_loss(output)


@contextlib.contextmanager
def static_shapes() -> Iterator[None]:
    """Within the block, schedules skip their P2P vote on shapes (it reads tensor values)."""
    from torch.distributed.pipelining import schedules
    from torch.distributed.pipelining.stage import InferenceMode  # type: ignore[attr-defined]

    original = schedules._PipelineSchedule._warmup_p2p

    def warmup(self: Any, stages: list[Any], has_backward: bool, p2p_done: bool) -> None:
        for stage in stages:
            stage._inference_mode = InferenceMode.STATIC

    schedules._PipelineSchedule._warmup_p2p = warmup  # type: ignore[method-assign]
    try:
        yield
    finally:
        schedules._PipelineSchedule._warmup_p2p = original  # type: ignore[method-assign]


def run_pipeline_step(
    rank: PipelineRank, inputs: torch.Tensor, config: StepConfig, observer: Observer
) -> None:
    """`config.steps` training steps of this rank's stage, telling `observer` where it is."""
    if config.mode is not Mode.TRAIN or config.accumulate != 1:
        raise UsageError("pp=N is estimated for training with accumulate=1 (the micro-batches accumulate)")
    stage, schedule = rank.stage, rank.schedule
    params = [p for p in rank.module.parameters() if p.requires_grad]
    optimizer = make_optimizer(config.optimizer, params, config.implementation, config.device)
    current = {"step": 1, "forward": 0, "backward": 0}
    forward, backward = stage.forward_one_chunk, stage.backward_one_chunk

    def forward_one_chunk(*args: Any, **kwargs: Any) -> Any:
        current["forward"] += 1
        observer.set_phase(Phase.FORWARD, current["step"], current["forward"])
        return forward(*args, **kwargs)

    def backward_one_chunk(*args: Any, **kwargs: Any) -> Any:
        current["backward"] += 1
        observer.set_phase(Phase.BACKWARD, current["step"], current["backward"])
        return backward(*args, **kwargs)

    stage.forward_one_chunk, stage.backward_one_chunk = forward_one_chunk, backward_one_chunk
    target = torch.zeros(rank.batch)
    try:
        for step in range(1, config.steps + 1):
            current.update(step=step, forward=0, backward=0)
            observer.set_phase(Phase.FORWARD, step, 1)
            if rank.index == 0:
                schedule.step(inputs)
            elif rank.index == rank.stages - 1:
                schedule.step(target=target, losses=[])
            else:
                schedule.step()
            observer.saw_gradients(params)
            observer.set_phase(Phase.OPTIMIZER, step)
            optimizer.step()
            observer.saw_optimizer_state(optimizer)
            observer.set_phase(Phase.ZERO_GRAD, step)
            optimizer.zero_grad(set_to_none=config.set_to_none)
            observer.saw_gradients(params)
        observer.set_phase(Phase.SETUP, config.steps + 1)
    finally:
        del stage.forward_one_chunk, stage.backward_one_chunk
