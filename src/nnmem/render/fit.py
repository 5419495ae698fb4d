"""Terminal rendering of a fit: the budget, the answer, the traces that show it, the what-if."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group
from rich.table import Table
from rich.text import Text

from nnmem.analyses.fit import FitResult, WhatIfRow
from nnmem.render.units import human_bytes


def _bytes(value: int | None) -> str:
    return human_bytes(value) if value is not None else "-"


def budget_text(result: FitResult) -> Text:
    b = result.budget
    return Text(
        f"{b.gpu}: {human_bytes(b.total_bytes)} on the device, less the CUDA context"
        f" {human_bytes(b.context_bytes)} = {human_bytes(b.usable_bytes)} usable; with a"
        f" {b.margin * 100:g} % margin the step may take {human_bytes(b.budget_bytes)}"
        f" ({b.budget_bytes:,} bytes)"
    )


def _exact(value: int | None) -> str:
    return f"{human_bytes(value)}, {value:,} bytes" if value is not None else "-"


def answer_text(result: FitResult) -> Text:
    what = str(result.vary)
    answer, following = result.answer, result.next
    if result.largest == 0:
        first = result.probes[0] if result.probes else None
        need = f": {what} 1 needs {_exact(first.need_bytes)}" if first and first.size == 1 else ""
        return Text(f"Nothing fits, not even {what} 1{need}", style="bold red")
    line = f"Largest {what}: {result.largest}"
    if answer is not None:
        line += f" (needs {_exact(answer.need_bytes)}; reserves {human_bytes(answer.reserved_bytes or 0)})"
    if following is not None:
        why = following.reason or f"needs {_exact(following.need_bytes)}"
        line += f"; {what} {following.size} does not fit ({why})"
    return Text(line, style="bold")


def probes_table(result: FitResult) -> Table:
    table = Table(title="Traced sizes, in order", title_justify="left", show_edge=False)
    for name, justify in (
        (str(result.vary), "right"), ("fits", "center"), ("needs", "right"), ("reserved", "right"),
        ("allocated", "right"), ("live peak", "right"),
    ):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for p in result.probes:
        table.add_row(
            str(p.size), "yes" if p.fits else "no", _bytes(p.need_bytes), _bytes(p.reserved_bytes),
            _bytes(p.allocated_bytes), _bytes(p.peak_bytes) if not p.reason else p.reason,
        )  # fmt: skip
    return table


def what_if_table(rows: Sequence[WhatIfRow], vary: str) -> Table:
    table = Table(title="What if", title_justify="left", show_edge=False)
    table.add_column("setting")
    table.add_column(f"needs at {vary} {rows[0].start}" if rows else "needs", justify="right")
    table.add_column(f"largest {vary}", justify="right")
    table.add_column("note")
    for row in rows:
        largest = str(row.largest) if row.largest is not None else "-"
        table.add_row(row.label, _bytes(row.need_bytes), largest, row.note)
    return table


def fit_view(result: FitResult, title: str, what_if: Sequence[WhatIfRow] = ()) -> Group:
    parts: list[Text | Table] = [Text(title, style="bold")]
    if result.settings:
        parts.append(Text("step: " + ", ".join(f"{k} {v}" for k, v in result.settings), style="dim"))
    parts += [budget_text(result), answer_text(result)]
    parts.append(probes_table(result))
    parts.extend(Text(f"note: {note}", style="dim") for note in result.notes)
    if what_if:
        parts.append(what_if_table(what_if, str(result.vary)))
    return Group(*parts)
