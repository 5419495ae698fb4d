"""A self-contained HTML report: one file, no scripts, no network; the plots inline as SVG.

`html_page` writes the whole page (the summary, the categories at the peak, the per-layer
table, any further tables, and the plots); `report_fragment` is the part a notebook shows
for a `Report` (`Report._repr_html_`). Everything the page shows is escaped text or SVG
made by matplotlib, so it opens from disk in any browser.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING

from nnmem.render.formats import (
    Cell,
    TableData,
    batch_data,
    categories_data,
    cell_text,
    engine_layers,
    peak_line,
    settings_line,
)
from nnmem.render.units import human_bytes
from nnmem.report import Report

if TYPE_CHECKING:
    from nnmem.render.plot import LayerBar

STYLE = """
.nnmem { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
         line-height: 1.4; }
.nnmem h1 { font-size: 1.5em; margin: 0 0 .3em; }
.nnmem h2 { font-size: 1.15em; margin: 1.6em 0 .4em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
.nnmem .peak { font-size: 1.2em; }
.nnmem .peak strong { color: #0b5cad; }
.nnmem .settings, .nnmem .note { color: #555; }
.nnmem table { border-collapse: collapse; font-size: .9em; margin: .4em 0; }
.nnmem caption { text-align: left; font-weight: 600; padding: .3em 0; }
.nnmem th, .nnmem td { padding: .25em .7em; border-bottom: 1px solid #e5e5e5; white-space: nowrap; }
.nnmem th { background: #f4f4f6; text-align: left; }
.nnmem td.num, .nnmem th.num { text-align: right; font-variant-numeric: tabular-nums; }
.nnmem tr.total td { font-weight: 700; border-top: 2px solid #999; }
.nnmem .bar { display: inline-block; height: .7em; background: #8172b3; border-radius: 2px; }
.nnmem figure { margin: 1em 0; }
.nnmem figure svg { max-width: 100%; height: auto; }
.nnmem .scroll { overflow-x: auto; }
"""


@dataclass(frozen=True)
class Section:
    """One part of the page: a heading and its HTML."""

    heading: str
    body: str


def html_table(table: TableData, bars: bool = False, caption: bool = True) -> str:
    """`table` as an HTML table; numbers right-aligned, the total row in bold. With `bars`, a
    last column draws each row's share of the total (for the categories at the peak)."""
    numeric = [c.kind in ("count", "bytes") for c in table.columns]
    head = "".join(
        f'<th scope="col"{" class=num" if n else ""}>{escape(c.title or c.key)}</th>'
        for c, n in zip(table.columns, numeric, strict=True)
    )
    if bars:
        head += "<th></th>"

    def row_html(cells: tuple[Cell, ...], total: bool) -> str:
        tds = "".join(
            f"<td{' class=num' if n else ''}>{_cell(cell_text(cell, c.kind, table.exact_bytes))}</td>"
            for cell, c, n in zip(cells, table.columns, numeric, strict=True)
        )
        if bars:
            tds += f"<td>{_bar(cells, table) if not total else ''}</td>"
        return f"<tr{' class=total' if total else ''}>{tds}</tr>"

    title = f"<caption>{escape(table.title)}</caption>" if caption else ""
    body = "".join(row_html(row, False) for row in table.rows)
    if table.total is not None:
        body += row_html(table.total, True)
    return (
        f'<div class="scroll"><table>{title}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    )


def _cell(text: str) -> str:
    """Escaped, with its leading spaces kept (the indented rows of a breakdown)."""
    stripped = text.lstrip(" ")
    return "&nbsp;" * (len(text) - len(stripped)) + escape(stripped)


def _bar(cells: tuple[Cell, ...], table: TableData) -> str:
    if table.total is None or "bytes" not in table.keys:
        return ""
    i = table.keys.index("bytes")
    amount, whole = cells[i], table.total[i]
    if not isinstance(amount, int) or not isinstance(whole, int) or whole <= 0:
        return ""
    return f'<span class="bar" style="width:{amount / whole * 12:.2f}em"></span>'


def _summary(report: Report) -> str:
    line = peak_line(report)
    peak = human_bytes(report.peak_bytes)
    shown = escape(line).replace(escape(peak), f"<strong>{escape(peak)}</strong>", 1)
    parts = [
        f'<p class="peak" id="peak" data-peak-bytes="{report.peak_bytes}">{shown}</p>',
        f'<p class="settings">{escape(settings_line(report))}</p>',
    ]
    if report.kv_cache_bytes:
        parts.append(
            f"<p>KV cache: {escape(human_bytes(report.kv_cache_bytes))} ({report.kv_cache_bytes:,} B)</p>"
        )
    return "".join(parts)


def _notes(report: Report, notes: Sequence[str]) -> str:
    lines = [*notes, *report.notes]
    if report.unknown_ops:
        ops = ", ".join(f"{op} ×{n}" for op, _, n in report.unknown_ops)
        lines.append(f"ops without a workspace rule (counted as none): {ops}")
    return "".join(f'<p class="note">note: {escape(line)}</p>' for line in lines)


def report_fragment(report: Report, layers: TableData | None = None) -> str:
    """The summary, the categories at the peak and the per-layer table, as one `<div>`."""
    table = layers if layers is not None else (engine_layers(report).select(None) if report.layers else None)
    parts = [
        f"<style>{STYLE}</style>",
        '<div class="nnmem">',
        _summary(report),
        html_table(categories_data(report.steady), bars=True),
        html_table(table) if table is not None else "",
        _notes(report, ()),
        "</div>",
    ]
    return "".join(parts)


def html_page(
    report: Report, sections: Sequence[Section], title: str = "nnmem report", notes: Sequence[str] = ()
) -> str:
    """One HTML document, readable without a network or scripts: the title, the peak, the
    `sections` in order, and the notes."""
    parts = [f"<h1>{escape(title)}</h1>", _summary(report)]
    parts.extend(f"<section><h2>{escape(s.heading)}</h2>{s.body}</section>" for s in sections)
    parts.append(_notes(report, notes))
    parts.append('<p class="note">Sizes in binary units: 1 KiB = 1024 B, 1 MiB = 1024 KiB.</p>')
    head = (
        '<meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}: peak {escape(human_bytes(report.peak_bytes))}</title>"
        f"<style>body {{ margin: 2em auto; max-width: 1100px; padding: 0 1em; }}{STYLE}</style>"
    )
    body = '<main class="nnmem">' + "\n".join(parts) + "</main>"
    return f'<!DOCTYPE html>\n<html lang="en">\n<head>{head}</head>\n<body>{body}</body>\n</html>\n'


def report_page(
    report: Report,
    *,
    title: str = "nnmem report",
    layers: TableData | None = None,
    tables: Sequence[TableData] = (),
    bars: Sequence[LayerBar] | None = None,
    batch_peaks: Sequence[tuple[int, int]] = (),
    notes: Sequence[str] = (),
) -> str:
    """The whole report as a page: the categories at the peak, memory over the step, the
    per-layer table (`layers`, default: the engine's rows) and its bars, further `tables`, and
    with `batch_peaks` the peak against batch size. Without matplotlib the page is still
    written, without plots, and says how to get them."""
    from nnmem.render import plot

    notes = list(notes)
    svgs: dict[str, str] = {}
    try:
        if report.timeline:
            svgs["timeline"] = plot.figure_svg(plot.timeline_figure(report), "timeline")
        shown = list(bars) if bars is not None else plot.bars_of_report(report)
        if shown:
            figure = plot.layers_figure(shown, title="Per layer: activations and parameters")
            svgs["layers"] = plot.figure_svg(figure, "layers")
        if batch_peaks:
            svgs["batches"] = plot.figure_svg(
                plot.batch_figure(batch_peaks, plot.batch_title(report)), "batches"
            )
    except plot.PlotUnavailable as error:
        notes.append(f"no plots: {error}")
    if layers is None and report.layers:
        layers = engine_layers(report).select(None)
    sections = [Section("At the peak", html_table(categories_data(report.steady), bars=True, caption=False))]
    if "timeline" in svgs:
        sections.append(Section("Memory over the step", _figure(svgs["timeline"])))
    if layers is not None:
        sections.append(Section("Layer by layer", html_table(layers) + _figure(svgs.get("layers"))))
    sections.extend(Section(table.title, html_table(table, caption=False)) for table in tables)
    if batch_peaks:
        body = html_table(batch_data(batch_peaks), caption=False) + _figure(svgs.get("batches"))
        sections.append(Section("Peak against batch size", body))
    return html_page(report, sections, title=title, notes=notes)


def _figure(svg: str | None) -> str:
    return f"<figure>{svg}</figure>" if svg else ""
