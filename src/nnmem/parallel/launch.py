"""`measure_parallel`: run a parallel step for real on N CPU ranks and report each rank's peak.

The ranks are fresh processes (`torch.multiprocessing`, spawn) joined by gloo over
127.0.0.1 on a free port; each measures its own step with the profiler
(`nnmem.parallel.worker`). The model, inputs and callables travel as pickles, so they
must be importable in a new process (as for `nnmem.measure`).
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import time
from dataclasses import replace
from typing import Any

import torch
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException, start_processes

from nnmem.categories import Mode
from nnmem.errors import MeasureError, UsageError
from nnmem.estimate import ModelLike, step_config
from nnmem.measure.api import _report as measured_report
from nnmem.options import parse_dtype
from nnmem.parallel.mesh import coordinates
from nnmem.parallel.report import ParallelReport, RankReport
from nnmem.parallel.spec import Backend, ParallelSpec, parse_parallel
from nnmem.parallel.worker import RankJob, result_path, run_rank
from nnmem.trace.optimizers import Implementation, OptimizerFactory
from nnmem.trace.step import LossFn


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def measure_parallel(
    model: ModelLike,
    inputs: Any,
    parallel: str | ParallelSpec,
    world_size: int | None = None,
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
    threads: int = 1,
    timeout: float | None = 600.0,
    tp_plan: dict[str, str] | None = None,
) -> ParallelReport:
    """Run the step on `world_size` real CPU ranks (gloo) and report each rank's memory.

    `inputs` are one rank's inputs (its share of the batch); every rank gets the same.
    """
    config = step_config(mode, optimizer, loss, "cpu", amp, accumulate, set_to_none, implementation, steps)
    spec = parse_parallel(parallel, world_size) if isinstance(parallel, str) else parallel
    spec = replace(spec, backend=Backend.GLOO)
    if spec.pipeline > 1:
        raise UsageError(
            "pp=N cannot be measured here: torch.distributed.pipelining's P2P sends and receives"
            " hang on gloo between CPU ranks in this PyTorch; pp=N is estimated only"
        )
    param_dtype = parse_dtype(dtype)
    with tempfile.TemporaryDirectory(prefix="nnmem-parallel-") as folder:
        try:
            job = RankJob(
                model=pickle.dumps(model),
                inputs=pickle.dumps(inputs),
                config=config,
                dtype=param_dtype,
                spec=spec,
                threads=threads,
                port=free_port(),
                result_folder=folder,
                tp_plan=tp_plan,
            )
            pickle.dumps(job)
        except Exception as error:
            raise MeasureError(
                f"cannot send the model to the ranks: {error}. Define the model's class or factory"
                " (and any loss or optimizer callable) in an importable module."
            ) from error
        _run_ranks(job, spec.world_size, timeout)
        results = []
        for rank in range(spec.world_size):
            path = result_path(folder, rank)
            if not os.path.exists(path):
                raise MeasureError(f"rank {rank} of the measured run died before writing its result")
            with open(path, "rb") as file:
                results.append(pickle.load(file))
    errors = [r for r in results if isinstance(r, dict)]
    if errors:
        raise MeasureError(
            f"the real parallel run failed: {errors[0]['error']}\n{errors[0]['traceback'][-1500:]}"
        )
    ranks = []
    for rank, measurement in enumerate(results):
        where = coordinates(spec, rank)
        report = measured_report(measurement, config, param_dtype)
        ranks.append(RankReport(rank, where.stage, where.data, where.tensor, report, rank))
    note = (
        f"measured on {spec.world_size} CPU ranks (gloo, 127.0.0.1), each rank's step under"
        " torch.profiler with FLAGS_caffe2_report_cpu_memory_usage set",
    )
    return ParallelReport.of(ranks, spec.describe(), spec.world_size, str(Backend.GLOO), note)


def _run_ranks(job: RankJob, world_size: int, timeout: float | None) -> None:
    context = start_processes(run_rank, args=(job,), nprocs=world_size, join=False, start_method="spawn")  # type: ignore[no-untyped-call]
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not context.join(timeout=1.0):
            if deadline is not None and time.monotonic() > deadline:
                raise MeasureError(f"the measured parallel run took longer than {timeout} s")
    except ProcessRaisedException as error:
        raise MeasureError(f"a rank of the measured run raised: {error}") from error
    except ProcessExitedException as error:
        raise MeasureError(f"a rank of the measured run exited: {error}") from error
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
