"""One command's output in any format: the terminal, JSON, CSV, Markdown or HTML.

A `Document` gathers what a command shows (a report, its per-layer table, any further
tables, the JSON form) so that `render_text` can write it in the format the user asked for.
The CLI decides only where the text goes (the terminal or a file).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType

from nnmem.frontends.spec import Textbook
from nnmem.render.formats import (
    TableData,
    batch_data,
    categories_data,
    engine_layers,
    peak_line,
    settings_line,
    textbook_layers,
    textbook_totals,
    to_csv,
    to_markdown,
)
from nnmem.render.plot import LayerBar, bars_of_textbook
from nnmem.render.table import layer_table, peak_text, plain_text, terminal_report
from nnmem.report import Report

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = ("table", "json", "csv", "markdown", "html")

# How the terminal shows a document: (chosen columns or None, width) -> something rich prints.
TerminalView = Callable[[tuple[str, ...] | None, int], RenderableType]


@dataclass(frozen=True)
class Document:
    """Everything one command shows."""

    report: Report
    title: str
    layers: TableData  # the per-layer table: the engine's rows, or a spec's hand calculation
    data: dict[str, Any]  # the JSON form
    tables: tuple[TableData, ...] = ()  # further tables for Markdown and HTML
    terminal: TerminalView | None = None  # default: `terminal_report`
    bars: tuple[LayerBar, ...] | None = None  # per-layer bars; default: the engine's rows
    batch_peaks: tuple[tuple[int, int], ...] = ()  # (batch, peak bytes): the what-if
    notes: tuple[str, ...] = field(default=())


def terminal_view(document: Document, columns: tuple[str, ...] | None, width: int) -> RenderableType:
    """What the terminal shows: the peak, the per-layer table and the categories at the peak."""
    if document.terminal is not None:
        return document.terminal(columns, width)
    return terminal_report(document.report, columns, width)


def markdown(document: Document, columns: tuple[str, ...] | None) -> str:
    """A Markdown page: the peak, the categories, the per-layer table, further tables."""
    report = document.report
    parts = [
        f"# {document.title}\n",
        f"**{peak_line(report)}**\n",
        f"{settings_line(report)}\n",
        to_markdown(categories_data(report.steady)),
        to_markdown(document.layers.select(columns)),
        *(to_markdown(table) for table in document.tables),
    ]
    if document.batch_peaks:
        parts.append(to_markdown(batch_data(document.batch_peaks)))
    notes = [*document.notes, *report.notes]
    if notes:
        parts.append("\n".join(f"- note: {note}" for note in notes) + "\n")
    parts.append("Sizes in binary units: 1 KiB = 1024 B, 1 MiB = 1024 KiB.\n")
    return "\n".join(parts)


def render_text(
    document: Document, fmt: str, columns: tuple[str, ...] | None = None, width: int = 100
) -> str:
    """`document` as text in `fmt` (one of `FORMATS`). CSV holds every column unless chosen."""
    if fmt == "table":
        return plain_text(terminal_view(document, columns, width), width)
    if fmt == "json":
        data = dict(document.data)
        if document.batch_peaks:
            data["batch_peaks"] = [{"batch": b, "peak_bytes": p} for b, p in document.batch_peaks]
        return json.dumps(data, indent=2) + "\n"
    if fmt == "csv":
        return to_csv(document.layers.select(columns) if columns is not None else document.layers)
    if fmt == "markdown":
        return markdown(document, columns)
    if fmt == "html":
        from nnmem.render.html import report_page

        return report_page(
            document.report,
            title=document.title,
            layers=document.layers.select(columns),
            tables=document.tables,
            bars=document.bars,
            batch_peaks=document.batch_peaks,
            notes=document.notes,
        )
    raise ValueError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")


def engine_document(report: Report, title: str, batch_peaks: tuple[tuple[int, int], ...] = ()) -> Document:
    """A model's report: the engine's per-layer rows."""
    return Document(report, title, engine_layers(report), report.to_dict(), batch_peaks=batch_peaks)


def spec_document(
    report: Report,
    book: Textbook,
    inference: Report,
    training: Report,
    title: str,
    batch_peaks: tuple[tuple[int, int], ...] = (),
) -> Document:
    """A text spec's report: the hand calculation's rows, and the textbook beside both real peaks."""
    from nnmem.render.handcalc import explanation, handcalc_dict, totals_table

    def terminal(columns: tuple[str, ...] | None, width: int) -> RenderableType:
        """The hand calculation (`render.handcalc`), its layer table fitted to the width."""
        layers = layer_table(textbook_layers(book), columns, width)
        totals = totals_table(book, inference, training)
        return Group(peak_text(report), layers, totals, explanation(book, inference, training))

    return Document(
        report,
        title,
        textbook_layers(book),
        handcalc_dict(book, inference, training, report),
        tables=(textbook_totals(book, inference, training),),
        terminal=terminal,
        bars=tuple(bars_of_textbook(book)),
        batch_peaks=batch_peaks,
    )


PLOT_KINDS = ("timeline", "layers", "batches")


def document_figure(document: Document, kind: str) -> Figure:
    """One of the document's plots: "timeline", "layers" or "batches" (needs `batch_peaks`)."""
    from nnmem.render import plot

    if kind == "timeline":
        return plot.timeline_figure(document.report, title=f"Memory over the step: {document.title}")
    if kind == "layers":
        bars = document.bars if document.bars is not None else plot.bars_of_report(document.report)
        return plot.layers_figure(bars, title="Per layer: activations and parameters")
    if kind == "batches":
        return plot.batch_figure(document.batch_peaks, title=plot.batch_title(document.report))
    raise ValueError(f"unknown plot {kind!r}; plots: {', '.join(PLOT_KINDS)}")
