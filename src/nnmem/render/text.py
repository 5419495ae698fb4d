"""Terminal rendering of reports with `rich`: the summary, categories, top modules, layers."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from nnmem.render.units import human_bytes, signed_percent
from nnmem.report import Peak, Report


def _where(peak: Peak) -> str:
    module = f" in '{peak.module}'" if peak.module else ""
    op = f" ({peak.op})" if peak.op else ""
    return f"during {peak.phase}{module}{op}"


def categories_table(peak: Peak, title: str = "At the peak") -> Table:
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column("category")
    table.add_column("bytes", justify="right")
    table.add_column("", justify="right")
    table.add_column("share", justify="right")
    for category, amount in peak.categories.items():
        if amount:
            share = f"{amount / peak.bytes * 100:.1f} %" if peak.bytes else ""
            table.add_row(str(category), f"{amount:,}", human_bytes(amount), share)
    table.add_row("total", f"{peak.bytes:,}", human_bytes(peak.bytes), "", style="bold")
    return table


def modules_table(peak: Peak, top: int = 8) -> Table:
    table = Table(title="Made by module, alive at the peak", title_justify="left", show_edge=False)
    table.add_column("module")
    table.add_column("bytes", justify="right")
    table.add_column("", justify="right")
    for name, amount in peak.modules[:top]:
        table.add_row(name or "(model)", f"{amount:,}", human_bytes(amount))
    return table


def summary(report: Report) -> Group:
    """The peak, where it is, the categories at the peak and the top modules."""
    settings = ", ".join(f"{k} {v}" for k, v in report.settings if v not in ("off", "1", "none", "auto"))
    head = Text()
    head.append(f"nnmem {report.source}: {report.mode}", style="bold")
    head.append(f" on {report.device}; {settings}\n")
    head.append(f"parameters: {report.parameters:,}\n")
    step = "steady-state step" if report.first_step is not None else "step"
    head.append(f"peak ({step}): ", style="bold")
    head.append(f"{human_bytes(report.peak_bytes)} ({report.peak_bytes:,} B) ", style="bold cyan")
    head.append(_where(report.steady))
    if report.first_step is not None:
        head.append(f"\nfirst step peak: {human_bytes(report.first_step.bytes)} ")
        head.append(f"({report.first_step.bytes:,} B) {_where(report.first_step)}")
    if report.kv_cache_bytes:
        head.append(f"\nKV cache: {human_bytes(report.kv_cache_bytes)} ({report.kv_cache_bytes:,} B)")
    parts: list[Text | Table] = [head, categories_table(report.steady)]
    if report.steady.modules:
        parts.append(modules_table(report.steady))
    if report.unknown_ops:
        ops = ", ".join(f"{op} ×{n}" for op, _, n in report.unknown_ops[:6])
        more = f" and {len(report.unknown_ops) - 6} more" if len(report.unknown_ops) > 6 else ""
        parts.append(Text(f"ops without a workspace rule (counted as none): {ops}{more}", style="yellow"))
    for note in report.notes:
        parts.append(Text(f"note: {note}", style="dim"))
    return Group(*parts)


def compare_table(estimate: Report, truth: Report) -> Table:
    """Estimate beside measurement, with the error wherever both know the number."""
    table = Table(title="estimate vs measured", title_justify="left", show_edge=False)
    table.add_column("")
    table.add_column("estimate", justify="right")
    table.add_column("measured", justify="right")
    table.add_column("error", justify="right")
    table.add_row(
        "steady peak",
        human_bytes(estimate.peak_bytes),
        human_bytes(truth.peak_bytes),
        signed_percent(estimate.peak_bytes, truth.peak_bytes),
        style="bold",
    )
    if estimate.first_step is not None and truth.first_step is not None:
        table.add_row(
            "first step peak",
            human_bytes(estimate.first_step.bytes),
            human_bytes(truth.first_step.bytes),
            signed_percent(estimate.first_step.bytes, truth.first_step.bytes),
        )
    for category, measured in truth.categories.items():
        if str(category) == "other" or not measured:
            continue
        estimated = estimate.categories[category]
        table.add_row(
            f"  {category}",
            human_bytes(estimated),
            human_bytes(measured),
            signed_percent(estimated, measured),
        )
    return table
