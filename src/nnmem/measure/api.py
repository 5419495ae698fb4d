"""`nnmem.measure`: run the same step for real in a fresh subprocess and report its peak.

On CPU the numbers come from `torch.profiler` memory events (see `nnmem.measure.cpu`).
The report has the same shape as an estimate's; categories a real run cannot tell
apart (activations, temporaries, workspaces) are reported together as `other`.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from typing import Any

import torch

from nnmem.categories import Category, Mode, Phase
from nnmem.errors import MeasureError, UsageError
from nnmem.estimate import ModelLike, step_config
from nnmem.measure.cuda import CudaMeasurement
from nnmem.measure.job import Job, Measurement
from nnmem.options import parse_dtype
from nnmem.report import Breakdown, Peak, Report, TimelinePoint
from nnmem.trace.optimizers import Implementation, OptimizerFactory
from nnmem.trace.step import LossFn


def measure(
    model: ModelLike,
    inputs: Any,
    mode: str | Mode = "train",
    optimizer: str | OptimizerFactory = "adam",
    loss: LossFn | None = None,
    device: str = "cpu",
    *,
    dtype: str | torch.dtype | None = None,
    amp: str | torch.dtype | None = None,
    accumulate: int = 1,
    set_to_none: bool = True,
    implementation: str | Implementation = "auto",
    steps: int | None = None,
    threads: int | None = None,
    timeout: float | None = None,
    new_tokens: int = 0,
) -> Report:
    """Run one step for real and report the memory it took (same keywords as `estimate`).

    The model (or its zero-argument factory), the inputs and any callables are pickled
    into a fresh Python process, so they must be importable there: defined in a module,
    not in `__main__` or a notebook. Meta-device inputs are filled with random floats
    and zero integers.
    """
    config = step_config(
        mode, optimizer, loss, device, amp, accumulate, set_to_none, implementation, steps, new_tokens
    )
    if config.device == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "device='cuda' needs a CUDA GPU, and this machine has none; measure with device='cpu'"
        )
    param_dtype = parse_dtype(dtype)
    threads = threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="nnmem-measure-") as folder:
        result_path = os.path.join(folder, "result.pickle")
        try:
            job = Job(
                model=pickle.dumps(model),
                inputs=pickle.dumps(inputs),
                config=config,
                dtype=param_dtype,
                threads=threads,
                result_path=result_path,
            )
            payload = pickle.dumps(job)
        except Exception as error:
            raise MeasureError(
                f"cannot send the model to the measuring process: {error}. Define the model's"
                " class or factory (and any loss or optimizer callable) in an importable module,"
                " not in __main__ or a notebook."
            ) from error
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        try:
            finished = subprocess.run(
                [sys.executable, "-m", "nnmem.measure.cpu"],
                input=payload,
                capture_output=True,
                env=env,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise MeasureError(f"the measured run took longer than {timeout} s") from error
        if not os.path.exists(result_path):
            tail = finished.stderr.decode(errors="replace")[-2000:]
            raise MeasureError(f"the measuring process died (exit {finished.returncode}):\n{tail}")
        with open(result_path, "rb") as file:
            result = pickle.load(file)
    if isinstance(result, dict):
        raise MeasureError(f"the real run failed: {result['error']}")
    if isinstance(result, CudaMeasurement):
        return _cuda_report(result, config, param_dtype)
    return _report(result, config, param_dtype)


def _report(m: Measurement, config: Any, param_dtype: torch.dtype | None) -> Report:
    phases = _phase_of_events(m)
    last = config.steps
    steady = _peak(m, phases, last, config.mode)
    first = _peak(m, phases, 1, config.mode) if config.mode is Mode.TRAIN and last > 1 else None
    timeline = tuple(
        TimelinePoint(i, step, phase, Breakdown(other=total))
        for i, (total, (phase, step)) in enumerate(zip(m.totals, phases, strict=True))
    )
    settings = config.settings(param_dtype, m.threads)
    return Report(
        peak_bytes=steady.bytes,
        mode=config.mode,
        device="cpu",
        source="measure",
        steady=steady,
        first_step=first,
        parameters=m.parameters,
        notes=(
            "measured with torch.profiler memory events; activations, temporaries and"
            " workspaces are not told apart in a real run and are shown as 'other'",
        ),
        settings=settings,
        timeline=timeline,
        kv_cache_bytes=m.kv_cache_bytes,
    )


def _cuda_report(m: CudaMeasurement, config: Any, param_dtype: torch.dtype | None) -> Report:
    """The CUDA run's report: peaks per phase of the allocator's allocated bytes."""

    def peak_of(step: int) -> Peak:
        phases = [p for p in m.peaks if p.step == step and p.phase != str(Phase.SETUP)]
        if not phases:
            raise MeasureError(f"the real run recorded nothing in step {step}")
        top = max(phases, key=lambda p: p.allocated)
        known = {
            Category.PARAMETER: m.parameter_bytes,
            Category.BUFFER: m.buffer_bytes,
            Category.INPUT: m.input_bytes,
        }
        known[Category.OTHER] = top.allocated - sum(known.values())
        return Peak(top.allocated, Phase(top.phase), "", "", Breakdown.of(known), ())

    last = config.steps
    steady = peak_of(last)
    reserved = max(p.reserved for p in m.peaks if p.step == last)
    return Report(
        peak_bytes=steady.bytes,
        mode=config.mode,
        device="cuda",
        source="measure",
        steady=steady,
        first_step=peak_of(1) if config.mode is Mode.TRAIN and last > 1 else None,
        parameters=m.parameters,
        notes=(
            f"measured on {m.device_name} with torch.cuda.max_memory_allocated per phase;"
            f" max_memory_reserved in the last step: {reserved:,} B",
        ),
        settings=config.settings(param_dtype, 0),
    )


def _phase_of_events(m: Measurement) -> list[tuple[Phase, int]]:
    result = []
    mark = -1
    for time in m.times_ns:
        while mark + 1 < len(m.marks) and m.marks[mark + 1].time_ns <= time:
            mark += 1
        if mark < 0:
            result.append((Phase.SETUP, 0))
        else:
            result.append((Phase(m.marks[mark].phase), m.marks[mark].step))
    return result


def _peak(m: Measurement, phases: list[tuple[Phase, int]], step: int, mode: Mode) -> Peak:
    best_index, best = -1, -1
    previous = 0
    for i, (phase, event_step) in enumerate(phases):
        if event_step == step and phase is not Phase.SETUP:
            if best_index < 0 and best < 0:
                best_index, best = i - 1, previous
            if m.totals[i] > best:
                best_index, best = i, m.totals[i]
        previous = m.totals[i]
    if best < 0:
        raise MeasureError(f"the real run made no allocation in step {step}; nothing to measure")
    phase = phases[best_index][0] if best_index >= 0 else Phase.SETUP
    known = {
        Category.PARAMETER: m.parameter_bytes,
        Category.BUFFER: m.buffer_bytes,
        Category.INPUT: m.input_bytes,
    }
    if mode is Mode.TRAIN and step > 1:  # state made in step 1 lives through the later steps
        known[Category.OPTIMIZER_STATE] = m.optimizer_state_bytes
    if mode is Mode.TRAIN and phase is Phase.OPTIMIZER:  # every gradient exists during the step
        known[Category.GRADIENT] = m.gradient_bytes
    known[Category.OTHER] = best - sum(known.values())
    return Peak(best, phase, "", "", Breakdown.of(known), ())
