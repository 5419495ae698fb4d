"""Per-rank tables of a parallel step: one row for each group of ranks holding the same memory."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from nnmem.analyses.parallel_fit import ParallelFit
from nnmem.parallel.report import ParallelReport, RankReport
from nnmem.render.units import human_bytes, signed_percent


def _groups(ranks: tuple[RankReport, ...]) -> list[tuple[str, RankReport]]:
    """Runs of consecutive ranks with the same stage and the same peak, as "0-7" and the first."""
    rows: list[tuple[str, RankReport]] = []
    start = 0
    for i in range(1, len(ranks) + 1):
        if i == len(ranks) or (ranks[i].stage, ranks[i].peak_bytes) != (
            ranks[start].stage,
            ranks[start].peak_bytes,
        ):
            label = str(ranks[start].rank) if i - 1 == start else f"{ranks[start].rank}-{ranks[i - 1].rank}"
            rows.append((label, ranks[start]))
            start = i
    return rows


def ranks_table(report: ParallelReport, title: str | None = None) -> Table:
    staged = len(report.stage_peaks()) > 1
    table = Table(title=title or f"Per rank: {report.parallel} ({report.world_size} ranks, {report.backend})")
    table.add_column("ranks")
    if staged:
        table.add_column("stage", justify="right")
    for name in ("peak", "params", "grads", "optimizer", "activations", "other at peak", "model state"):
        table.add_column(name, justify="right")
    for label, rank in _groups(report.ranks):
        c = rank.report.categories
        rest = c.total - c.parameter - c.gradient - c.optimizer_state - c.activation
        cells = [label, *([str(rank.stage)] if staged else [])]
        cells += [
            human_bytes(rank.peak_bytes),
            human_bytes(c.parameter),
            human_bytes(c.gradient),
            human_bytes(c.optimizer_state),
            human_bytes(c.activation),
            human_bytes(rest),
            human_bytes(rank.model_state_bytes),
        ]
        table.add_row(*cells)
    return table


def parallel_summary(report: ParallelReport) -> Group:
    worst = max(report.ranks, key=lambda r: r.peak_bytes)
    head = Text(
        f"{report.source} of {report.parallel}: the highest peak is rank {worst.rank}'s,"
        f" {human_bytes(worst.peak_bytes)} ({worst.report.steady.phase})"
    )
    notes = [Text(f"note: {n}", style="dim") for n in report.notes]
    return Group(head, ranks_table(report), *notes)


def parallel_compare_table(estimate: ParallelReport, truth: ParallelReport) -> Table:
    table = Table(title=f"Estimated vs measured per rank: {estimate.parallel}")
    for name in ("rank", "estimate", "measured", "error"):
        table.add_column(name, justify="right")
    for guess, real in zip(estimate.ranks, truth.ranks, strict=True):
        table.add_row(
            str(guess.rank),
            human_bytes(guess.peak_bytes),
            human_bytes(real.peak_bytes),
            signed_percent(guess.peak_bytes, real.peak_bytes),
        )
    return table


def fit_table(result: ParallelFit) -> Group:
    budget = result.budget
    table = Table(title=f"Fitting on {budget.gpu}: budget {human_bytes(budget.budget_bytes)} per GPU")
    for name in ("strategy", "GPUs", "worst rank's peak", "its model state", "fits"):
        table.add_column(name, justify="right")
    for c in result.tried:
        table.add_row(
            c.parallel,
            str(c.gpus),
            human_bytes(c.peak_bytes),
            human_bytes(c.model_state_bytes),
            "yes" if c.fits else "no",
        )
    if result.best is None:
        verdict = Text(
            "nothing tried fits: more GPUs (--gpus), tensor parallel, or a smaller step", style="bold red"
        )
    else:
        verdict = Text(
            f"fits on {result.best.gpus} x {budget.gpu} with {result.best.parallel}"
            f" (worst rank {human_bytes(result.best.peak_bytes)})",
            style="bold green",
        )
    return Group(table, verdict)
