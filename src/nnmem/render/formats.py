"""Tables as data, and their plain-text formats: CSV and Markdown.

A `TableData` is what every renderer of a per-layer table starts from: named columns
(text, a count, or bytes) and rows of plain cells (strings and integers). The terminal
(`render.table`), Markdown, CSV and HTML (`render.html`) draw the same `TableData`, so a
column chosen with `--columns` means the same thing in every format.

Bytes stay integers here. CSV writes them exactly; people-facing formats write them in
binary units (KiB, MiB), or exactly with thousands separators where the table asks for
it (the hand calculation, whose point is the exact number).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from nnmem.errors import UsageError, did_you_mean
from nnmem.frontends.spec import Textbook
from nnmem.render.units import human_bytes
from nnmem.report import Peak, Report

Cell = str | int | tuple[int, ...] | None
Kind = Literal["text", "count", "bytes", "shape"]


@dataclass(frozen=True)
class Column:
    """One column: its key (for `--columns` and CSV), its title for people, what it holds."""

    key: str
    title: str
    kind: Kind = "text"
    default: bool = True  # shown unless the user chooses columns
    priority: int = 0  # narrow terminals drop the lowest priorities first; 100: never dropped


@dataclass(frozen=True)
class TableData:
    """A titled table of plain cells, with an optional total row."""

    title: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[Cell, ...], ...]
    total: tuple[Cell, ...] | None = None
    exact_bytes: bool = False  # people-facing formats write bytes as 1,234,567 rather than 1.18 MiB

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(column.key for column in self.columns)

    def select(self, keys: Sequence[str] | None) -> TableData:
        """The table with only the columns `keys`, in that order (None: the default columns)."""
        if keys is None:
            chosen = [i for i, column in enumerate(self.columns) if column.default]
        else:
            chosen = []
            for key in keys:
                if key not in self.keys:
                    raise UsageError(
                        f"no column '{key}' in the table '{self.title}'{did_you_mean(key, self.keys)}"
                        f" (columns: {', '.join(self.keys)})"
                    )
                chosen.append(self.keys.index(key))
        return self.only(chosen)

    def only(self, indices: Sequence[int]) -> TableData:
        """The table with the columns at `indices`."""
        return replace(
            self,
            columns=tuple(self.columns[i] for i in indices),
            rows=tuple(tuple(row[i] for i in indices) for row in self.rows),
            total=tuple(self.total[i] for i in indices) if self.total is not None else None,
        )


def parse_columns(text: str | None) -> tuple[str, ...] | None:
    """`"name, activation_bytes"` -> ("name", "activation_bytes"); None or "" -> None."""
    if not text:
        return None
    keys = tuple(key.strip() for key in text.split(",") if key.strip())
    return keys or None


def shape_text(shape: tuple[int, ...], times: str = "×") -> str:
    return times.join(str(n) for n in shape)


def cell_text(cell: Cell, kind: Kind, exact_bytes: bool = False) -> str:
    """A cell as people read it: counts with separators, bytes in binary units."""
    if cell is None:
        return ""
    if isinstance(cell, tuple):
        return shape_text(cell)
    if isinstance(cell, str):
        return cell
    if kind == "bytes" and not exact_bytes:
        return human_bytes(cell)
    if kind in ("count", "bytes"):
        return f"{cell:,}"
    return str(cell)


def _csv_cell(cell: Cell) -> str | int:
    if cell is None:
        return ""
    if isinstance(cell, tuple):
        return shape_text(cell, "x")
    return cell


def where(peak: Peak) -> str:
    """`during backward in 'F1' (aten.mm)`."""
    module = ""
    if peak.module and peak.module != f"({peak.phase})":  # "(optimizer)" during the optimizer says nothing
        module = f" in {peak.module}" if peak.module.startswith("(") else f" in '{peak.module}'"
    op = f" ({peak.op})" if peak.op else ""
    return f"during {peak.phase}{module}{op}"


def peak_line(report: Report) -> str:
    """One sentence: how high the peak is, in binary units and exactly, and where it is."""
    step = f"steady-state {report.mode} step" if report.first_step is not None else f"{report.mode} step"
    line = f"peak {human_bytes(report.peak_bytes)} ({report.peak_bytes:,} B) {where(report.steady)}, {step}"
    first = report.first_step
    if first is not None and first.bytes != report.peak_bytes:
        line += f"; first step {human_bytes(first.bytes)} ({first.bytes:,} B) {where(first)}"
    return line


def settings_line(report: Report) -> str:
    """What was modelled: `train on cuda; optimizer adam, dtype as built; 4,632,902 parameters`."""
    settings = ", ".join(f"{k} {v}" for k, v in report.settings if v not in ("off", "1", "none", "auto"))
    line = f"{report.source}: {report.mode} on {report.device}"
    if settings:
        line += f"; {settings}"
    return line + f"; {report.parameters:,} parameters"


# Per-layer tables -------------------------------------------------------------------------

ENGINE_COLUMNS = (
    Column("name", "layer", "text", priority=100),
    Column("kind", "kind", "text", priority=2),
    Column("output_shape", "output shape", "shape", priority=3),
    Column("parameters", "parameters", "count", priority=1),
    Column("parameter_bytes", "param bytes", "bytes", priority=6),
    Column("activation_bytes", "activations", "bytes", priority=5),
    Column("created_bytes", "alive at peak", "bytes", priority=4),
)


def engine_layers(report: Report) -> TableData:
    """The engine's rows: each module's own parameters and what it made that is alive at the peak."""
    rows = tuple(
        (
            row.name or "(model)",
            row.kind,
            row.output_shape,
            row.parameters,
            row.parameter_bytes,
            row.activation_bytes,
            row.created_bytes,
        )
        for row in report.layers
    )
    total: tuple[Cell, ...] = (
        "total",
        "",
        None,
        sum(row.parameters for row in report.layers),
        sum(row.parameter_bytes for row in report.layers),
        sum(row.activation_bytes for row in report.layers),
        sum(row.created_bytes for row in report.layers),
    )
    return TableData("Layer by layer (alive at the steady-state peak)", ENGINE_COLUMNS, rows, total)


TEXTBOOK_COLUMNS = (
    Column("name", "layer", "text", priority=100),
    Column("kind", "kind", "text", default=False, priority=1),
    Column("output_shape", "output", "shape", priority=4),
    Column("activation_elements", "values/sample", "count", priority=2),
    Column("activation_bytes", "bytes/sample", "bytes", priority=3),
    Column("batch_activation_bytes", "bytes/batch", "bytes", priority=6),
    Column("parameters", "parameters", "count", default=False, priority=1),
    Column("parameter_formula", "parameters", "text", priority=5),
    Column("parameter_bytes", "param bytes", "bytes", priority=5),
)


def textbook_layers(book: Textbook) -> TableData:
    """The hand calculation's rows, bytes written exactly (the hand calculation's point)."""
    rows = tuple(
        (
            row.name,
            row.kind,
            row.output_shape,
            row.activation_elements,
            row.activation_bytes,
            row.batch_activation_bytes,
            row.parameters,
            row.parameter_formula if row.parameters else "",
            row.parameter_bytes,
        )
        for row in book.rows
    )
    total: tuple[Cell, ...] = (
        "total",
        "",
        None,
        book.activation_elements,
        book.activation_bytes,
        book.batch_activation_bytes,
        book.parameters,
        f"{book.parameters:,}",
        book.parameter_bytes,
    )
    title = f"Layer by layer (batch {book.batch}, {book.dtype_bytes} bytes a value)"
    return TableData(title, TEXTBOOK_COLUMNS, rows, total, exact_bytes=True)


CATEGORY_COLUMNS = (
    Column("category", "category", "text", priority=100),
    Column("bytes", "bytes", "count", priority=100),
    Column("binary", "", "bytes", priority=100),
    Column("share", "share", "count", priority=100),  # a string like "20.0 %", aligned as a number
)


def categories_data(peak: Peak, title: str = "At the peak") -> TableData:
    """Bytes by category at `peak`, with each one's share."""
    rows = tuple(
        (str(category), amount, amount, f"{amount / peak.bytes * 100:.1f} %" if peak.bytes else "")
        for category, amount in peak.categories.items()
        if amount
    )
    return TableData(title, CATEGORY_COLUMNS, rows, ("total", peak.bytes, peak.bytes, ""))


# Formats ----------------------------------------------------------------------------------


def to_csv(table: TableData) -> str:
    """The table as CSV: a header of column keys, bytes as exact integers, no total row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.keys)
    for row in table.rows:
        writer.writerow([_csv_cell(cell) for cell in row])
    return out.getvalue()


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(table: TableData, heading: str = "###") -> str:
    """The table as a GitHub-flavoured Markdown table under a heading; the total row in bold."""
    lines = [f"{heading} {table.title}", ""] if heading else []
    lines.append("| " + " | ".join(_markdown_cell(c.title or c.key) for c in table.columns) + " |")
    lines.append(
        "|" + "|".join("---:" if c.kind in ("count", "bytes") else ":---" for c in table.columns) + "|"
    )

    def line(cells: tuple[Cell, ...], bold: bool) -> str:
        texts = [
            _markdown_cell(cell_text(cell, c.kind, table.exact_bytes))
            for cell, c in zip(cells, table.columns, strict=True)
        ]
        if bold:
            texts = [f"**{t}**" if t else "" for t in texts]
        return "| " + " | ".join(texts) + " |"

    lines.extend(line(row, False) for row in table.rows)
    if table.total is not None:
        lines.append(line(table.total, True))
    return "\n".join(lines) + "\n"


TOTALS_COLUMNS = (
    Column("what", "", "text", priority=100),
    Column("bytes", "bytes", "count", priority=100),
    Column("binary", "", "bytes", priority=100),
)


def textbook_totals(book: Textbook, inference: Report, training: Report) -> TableData:
    """The rules of thumb beside the real peaks of inference and training, by category."""
    rows: list[tuple[Cell, ...]] = [
        (f"textbook: {rule.name}", rule.bytes, rule.bytes) for rule in book.rules()
    ]
    optimizer = dict(training.settings).get("optimizer", "")
    for label, report in (
        ("real peak: inference", inference),
        (f"real peak: training ({optimizer})", training),
    ):
        rows.append((label, report.peak_bytes, report.peak_bytes))
        rows.extend((f"    {c}", amount, amount) for c, amount in report.categories.items() if amount)
    return TableData("Textbook beside what PyTorch really holds", TOTALS_COLUMNS, tuple(rows))


def batch_data(batch_peaks: Sequence[tuple[int, int]]) -> TableData:
    """The what-if as a table: the steady-state peak at each batch size."""
    columns = (
        Column("batch", "batch size", "count"),
        Column("peak_bytes", "peak", "count"),
        Column("peak", "", "bytes"),
    )
    return TableData("Peak against batch size", columns, tuple((b, p, p) for b, p in batch_peaks))
