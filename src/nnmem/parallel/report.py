"""Per-rank results of a parallel step: one `Report` per rank, the worst one on top.

A `ParallelReport` is a `Report` (the rank with the highest peak, so everything that
renders a report renders it) that also carries every rank's report. Ranks whose memory
is the same by construction (the same shard sizes, the same stage) share the report
of the one rank traced or measured for them (`RankReport.traced_as`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from nnmem.categories import Phase
from nnmem.report import Breakdown, Report


@dataclass(frozen=True)
class RankReport:
    """One rank's memory."""

    rank: int
    stage: int  # pipeline stage (0 without pipeline parallelism)
    data: int  # data-parallel index
    tensor: int  # tensor-parallel index
    report: Report
    traced_as: int  # the rank whose trace (or run) this report is
    model_state: Breakdown = field(default_factory=Breakdown)  # its parameters, gradients, optimizer state

    @property
    def model_state_bytes(self) -> int:
        """Parameters + gradients + optimizer state this rank holds (its shards, under FSDP)."""
        return self.model_state.total

    @property
    def peak_bytes(self) -> int:
        return self.report.peak_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "stage": self.stage,
            "data": self.data,
            "tensor": self.tensor,
            "traced_as": self.traced_as,
            "peak_bytes": self.peak_bytes,
            "model_state_bytes": self.model_state_bytes,
            "model_state": self.model_state.to_dict(),
            "categories": self.report.categories.to_dict(),
        }


@dataclass(frozen=True)
class ParallelReport(Report):
    """The worst rank's report, with every rank's (`ranks`) and how the step was spread."""

    parallel: str = ""  # the spec, as `ParallelSpec.describe` writes it
    world_size: int = 1
    backend: str = "nccl"
    ranks: tuple[RankReport, ...] = ()

    @classmethod
    def of(
        cls, ranks: list[RankReport], parallel: str, world_size: int, backend: str, notes: tuple[str, ...]
    ) -> ParallelReport:
        worst = max(ranks, key=lambda r: (r.peak_bytes, -r.rank))
        base = {f.name: getattr(worst.report, f.name) for f in fields(Report)}
        base["notes"] = (*worst.report.notes, *notes)
        return cls(**base, parallel=parallel, world_size=world_size, backend=backend, ranks=tuple(ranks))

    def rank(self, rank: int) -> RankReport:
        return self.ranks[rank]

    def stage_peaks(self) -> dict[int, int]:
        """The highest peak of each pipeline stage."""
        peaks: dict[int, int] = {}
        for r in self.ranks:
            peaks[r.stage] = max(peaks.get(r.stage, 0), r.peak_bytes)
        return peaks

    def to_dict(self, timeline: bool = False) -> dict[str, Any]:
        result = super().to_dict(timeline)
        result["parallel"] = {
            "spec": self.parallel,
            "world_size": self.world_size,
            "backend": self.backend,
            "stage_peaks": {str(k): v for k, v in self.stage_peaks().items()},
            "ranks": [r.to_dict() for r in self.ranks],
        }
        return result


def model_state(report: Report) -> Breakdown:
    """Parameters, gradients and optimizer state as the last optimizer step leaves them
    (for inference: the parameters before the step), from the report's timeline."""
    points = [p for p in report.timeline if p.phase is Phase.OPTIMIZER]
    if not points:
        first = report.timeline[0].categories if report.timeline else report.categories
        return Breakdown(parameter=first.parameter)
    last = points[-1].categories
    return Breakdown(parameter=last.parameter, gradient=last.gradient, optimizer_state=last.optimizer_state)
