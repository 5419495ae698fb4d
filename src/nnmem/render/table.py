"""Terminal tables with `rich`: a `TableData` that fits the width it is given.

When the user has not chosen columns, a table wider than the terminal drops its
least important columns (lowest `Column.priority`) until it fits, rather than squeezing
every cell into an ellipsis. Colour follows rich, which honours `NO_COLOR`.
"""

from __future__ import annotations

import io

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from nnmem.render.formats import (
    Cell,
    TableData,
    categories_data,
    cell_text,
    engine_layers,
    peak_line,
    settings_line,
)
from nnmem.render.units import human_bytes
from nnmem.report import Report

_PADDING = 3  # rich's separator and padding around each column (show_edge=False)


def natural_width(table: TableData) -> int:
    """How wide `table` is when no cell is wrapped."""
    rows: list[tuple[Cell, ...]] = [*table.rows, *([table.total] if table.total is not None else [])]
    width = 0
    for i, column in enumerate(table.columns):
        cells = [len(cell_text(row[i], column.kind, table.exact_bytes)) for row in rows]
        width += max([len(column.title), *cells]) + _PADDING
    return width


def fit(table: TableData, width: int) -> TableData:
    """Drop the lowest-priority columns of `table` until it fits in `width` characters."""
    kept = list(range(len(table.columns)))
    while natural_width(table.only(kept)) > width:
        droppable = [i for i in kept if table.columns[i].priority < 100]
        if not droppable:
            break
        kept.remove(min(droppable, key=lambda i: (table.columns[i].priority, -i)))
    return table.only(kept)


def rich_table(table: TableData) -> Table:
    """`table` as a rich Table; numbers right-aligned, the total row in bold."""
    out = Table(title=table.title, title_justify="left", show_edge=False)
    for column in table.columns:
        numeric = column.kind in ("count", "bytes")
        out.add_column(column.title, justify="right" if numeric else "left", no_wrap=numeric)
    for row in table.rows:
        out.add_row(
            *(cell_text(cell, c.kind, table.exact_bytes) for cell, c in zip(row, table.columns, strict=True))
        )
    if table.total is not None:
        cells = (
            cell_text(cell, c.kind, table.exact_bytes)
            for cell, c in zip(table.total, table.columns, strict=True)
        )
        out.add_row(*cells, style="bold")
    return out


def layer_table(table: TableData, columns: tuple[str, ...] | None, width: int) -> Table:
    """The chosen columns of a per-layer table, or its default ones fitted to `width`."""
    return rich_table(table.select(columns) if columns is not None else fit(table.select(None), width))


def peak_text(report: Report) -> Text:
    """The short lines on top: where the peak is and how high, then what was modelled."""
    line = peak_line(report)
    amount = human_bytes(report.peak_bytes)
    head = Text(line, style="bold")
    start = line.index(amount)
    head.stylize("cyan", start, start + len(amount))
    head.append("\n" + settings_line(report), style="dim")
    return head


def terminal_report(report: Report, columns: tuple[str, ...] | None = None, width: int = 100) -> Group:
    """Where the peak is, the per-layer table, and the categories at the peak."""
    parts: list[RenderableType] = [peak_text(report)]
    if report.layers:
        parts.append(layer_table(engine_layers(report), columns, width))
    parts.append(rich_table(categories_data(report.steady)))
    if report.unknown_ops:
        ops = ", ".join(f"{op} ×{n}" for op, _, n in report.unknown_ops[:6])
        more = f" and {len(report.unknown_ops) - 6} more" if len(report.unknown_ops) > 6 else ""
        parts.append(Text(f"ops without a workspace rule (counted as none): {ops}{more}", style="yellow"))
    parts.extend(Text(f"note: {note}", style="dim") for note in report.notes)
    return Group(*parts)


def plain_text(renderable: RenderableType, width: int) -> str:
    """`renderable` as plain text at a fixed width: no colour, no terminal codes (files, goldens)."""
    out = io.StringIO()
    console = Console(
        file=out,
        width=width,
        color_system=None,
        force_terminal=False,
        legacy_windows=False,
        no_color=True,
        highlight=False,
        emoji=False,
    )
    console.print(renderable)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"
