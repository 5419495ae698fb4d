"""How many GPUs, and which sharding: the fewest GPUs of a kind on which a step fits.

For each data-parallel strategy (least sharded first: ddp, zero1, zero2, fsdp) the
worst rank's traced peak (`nnmem.parallel.estimate_parallel`) is compared with one GPU's
budget (`nnmem.analyses.fit.gpu_budget`: its memory less the CUDA context, less a margin).
Given `gpus`, each strategy is tried on that many GPUs. Searching (`gpus=None`), a
strategy is tried on 1, 2, 4, ... GPUs up to `max_gpus`: DDP holds everything on every
rank, so its need does not shrink with more ranks and one try with 2 says all; a sharded
strategy's need falls as ranks grow, so the first power of two that fits is its answer.
The answer is the fewest GPUs, and among strategies that fit on as many, the least sharded
(least communication).

Known limitations: the need is the live peak, not the CUDA caching allocator's reserved
bytes (the margin has to cover fragmentation, NCCL's own buffers and the CUDA kernels'
workspaces); GPU counts are powers of two when searching; tensor and pipeline parallelism
are tried only when asked for by name (`strategies=("fsdp,tp=2",)`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nnmem.analyses.fit import DEFAULT_MARGIN, Budget, gpu_budget
from nnmem.errors import UsageError
from nnmem.estimate import ModelLike
from nnmem.parallel.report import ParallelReport, model_state
from nnmem.parallel.spec import DataParallel, parse_parallel
from nnmem.report import Report

DEFAULT_STRATEGIES = ("ddp", "zero1", "zero2", "fsdp")
MAX_GPUS = 1024


@dataclass(frozen=True)
class Candidate:
    """One strategy on one number of GPUs, traced."""

    parallel: str  # as written, e.g. "fsdp"
    gpus: int
    peak_bytes: int  # the worst rank's live peak
    model_state_bytes: int  # that rank's parameters + gradients + optimizer state
    fits: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "parallel": self.parallel,
            "gpus": self.gpus,
            "peak_bytes": self.peak_bytes,
            "model_state_bytes": self.model_state_bytes,
            "fits": self.fits,
        }


@dataclass(frozen=True)
class ParallelFit:
    """The fewest GPUs that fit, the strategy chosen, and every candidate traced."""

    budget: Budget
    best: Candidate | None  # None: nothing tried fits
    tried: tuple[Candidate, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget.to_dict(),
            "best": self.best.to_dict() if self.best else None,
            "tried": [c.to_dict() for c in self.tried],
        }


Estimator = Callable[[str, int], "ParallelReport | Report"]
SINGLE = "single GPU"


def fit_gpus(
    model: ModelLike,
    inputs: Any,
    gpu: str | None = None,
    gpus: int | None = None,
    strategies: tuple[str, ...] | None = None,
    *,
    memory: str | int | None = None,
    margin: float = DEFAULT_MARGIN,
    max_gpus: int = MAX_GPUS,
    repeated: tuple[Callable[[int], ModelLike], int] | None = None,
    **keywords: Any,
) -> ParallelFit:
    """The fewest `gpu`s (or, with `gpus`, that many) on which the step fits, and how to shard.

    `inputs` are one rank's inputs. `repeated=(build, blocks)` traces models of many
    identical blocks with a few and extrapolates (`estimate_parallel_repeated`). Other
    keywords go to `estimate_parallel` (mode, optimizer, dtype, device, ...).
    """
    budget = gpu_budget(gpu, memory, margin)
    names = strategies or DEFAULT_STRATEGIES
    for name in names:
        parse_parallel(name, 2 * _fixed_degree(name))  # a bad name fails before any trace
    if gpus is not None and gpus < 1:
        raise UsageError(f"gpus must be at least 1, not {gpus}")

    def estimator(parallel: str, world_size: int) -> ParallelReport | Report:
        from nnmem.analyses.extrapolate import estimate_repeated
        from nnmem.estimate import estimate
        from nnmem.parallel.api import estimate_parallel
        from nnmem.parallel.repeated import estimate_parallel_repeated

        if world_size == 1:  # one GPU, nothing spread
            if repeated is not None:
                return estimate_repeated(repeated[0], repeated[1], inputs, **keywords)
            return estimate(model, inputs, **keywords)
        if repeated is not None:
            build, blocks = repeated
            return estimate_parallel_repeated(build, blocks, inputs, parallel, world_size, **keywords)
        return estimate_parallel(model, inputs, parallel, world_size, **keywords)

    return search(estimator, budget, names, gpus, max_gpus)


def _fixed_degree(name: str) -> int:
    """The ranks that a strategy's tensor and pipeline degrees take (1 without them)."""
    degree = 1
    for term in name.split(","):
        key, _, value = term.strip().partition("=")
        if key.strip() in ("tp", "pp") and value.strip().isdigit():
            degree *= int(value)
    return degree


def search(
    estimate: Estimator, budget: Budget, strategies: tuple[str, ...], gpus: int | None, max_gpus: int
) -> ParallelFit:
    """Try each strategy (on `gpus`, or on growing powers of two) against `budget`."""
    tried: list[Candidate] = []

    def attempt(name: str, n: int) -> Candidate:
        report = estimate(name, n)
        if isinstance(report, ParallelReport):
            worst = max(report.ranks, key=lambda r: r.peak_bytes)
            peak, state = worst.peak_bytes, worst.model_state_bytes
        else:
            peak, state = report.peak_bytes, model_state(report).total
        candidate = Candidate(name, n, peak, state, peak <= budget.budget_bytes)
        tried.append(candidate)
        return candidate

    found: list[Candidate] = []
    if gpus in (None, 1):
        single = attempt(SINGLE, 1)
        if single.fits or gpus == 1:
            return ParallelFit(budget, single if single.fits else None, tuple(tried))
    for name in strategies:
        fixed = _fixed_degree(name)
        data = parse_parallel(name, 2 * fixed).data
        if gpus is not None:
            if gpus % fixed:
                continue
            candidate = attempt(name, gpus)
            if candidate.fits:
                found.append(candidate)
            continue
        n = 2 * fixed
        bound = min([max_gpus, *(c.gpus for c in found)])  # no need to look past an answer
        while n <= bound:
            candidate = attempt(name, n)
            if candidate.fits:
                found.append(candidate)
                break
            if data in (DataParallel.DDP, DataParallel.NONE):  # more replicas hold no less each
                break
            n *= 2
    best = min(found, key=lambda c: (c.gpus, strategies.index(c.parallel))) if found else None
    return ParallelFit(budget, best, tuple(tried))
