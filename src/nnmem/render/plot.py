"""Plots with matplotlib (the optional extra `nnmem[plot]`): memory over the step, per-layer
bars, and the peak against batch size.

Each function returns a `matplotlib.figure.Figure` built without pyplot (no global state,
no window), so a caller can inspect it, save it with `save_figure`, or embed it with
`figure_svg`. Sizes are plotted in the binary unit that suits the largest value (KiB, MiB,
GiB), and the axis says which.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nnmem.categories import Category, Phase
from nnmem.errors import UsageError
from nnmem.frontends.spec import Textbook
from nnmem.render.files import write_atomic
from nnmem.render.units import human_bytes
from nnmem.report import Report, TimelinePoint

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INSTALL_HINT = "plots need matplotlib: pip install 'nnmem[plot]' (or pip install matplotlib)"

CATEGORY_COLORS: dict[Category, str] = {
    Category.PARAMETER: "#4C72B0",
    Category.BUFFER: "#8C8C8C",
    Category.INPUT: "#937860",
    Category.ACTIVATION: "#DD8452",
    Category.GRADIENT: "#C44E52",
    Category.OPTIMIZER_STATE: "#8172B3",
    Category.TEMPORARY: "#CCB974",
    Category.WORKSPACE: "#64B5CD",
    Category.KV_CACHE: "#55A868",
    Category.OTHER: "#BBBBBB",
}
PHASE_COLORS: dict[Phase, str] = {
    Phase.FORWARD: "#4C72B0",
    Phase.BACKWARD: "#C44E52",
    Phase.OPTIMIZER: "#55A868",
}
MAX_POINTS = 4000  # longer timelines keep the highest point of each bucket (the peak survives)


class PlotUnavailable(UsageError):
    """matplotlib is not installed."""


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable(INSTALL_HINT) from None
    return Figure(figsize=(width, height), layout="constrained")


def binary_unit(nbytes: int) -> tuple[str, int]:
    """The binary unit to plot sizes up to `nbytes` in: ("MiB", 2**20) for 88 MiB."""
    for unit, power in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 2**power:
            return unit, 2**power
    return "B", 1


# Live memory over the step -----------------------------------------------------------------


def peak_index(report: Report) -> int:
    """Where in `report.timeline` the steady-state peak is: the last step that reaches it."""
    if not report.timeline:
        raise UsageError("this report has no timeline to plot (extrapolated or measured reports keep none)")
    reaching = [i for i, point in enumerate(report.timeline) if point.total == report.peak_bytes]
    if reaching:
        last_step = report.timeline[reaching[-1]].step
        return next(i for i in reaching if report.timeline[i].step == last_step)
    return max(range(len(report.timeline)), key=lambda i: report.timeline[i].total)


def _thin(points: Sequence[TimelinePoint], keep: int) -> list[TimelinePoint]:
    if len(points) <= MAX_POINTS:
        return list(points)
    size = -(-len(points) // MAX_POINTS)
    thinned = [max(points[i : i + size], key=lambda p: p.total) for i in range(0, len(points), size)]
    if points[keep] not in thinned:
        thinned = sorted([*thinned, points[keep]], key=lambda p: p.index)
    return thinned


def _phase_spans(points: Sequence[TimelinePoint]) -> list[tuple[int, Phase, int, int]]:
    """Runs of equal (step, phase): (step, phase, first index, index after the last)."""
    spans: list[tuple[int, Phase, int, int]] = []
    for point in points:
        if spans and spans[-1][0] == point.step and spans[-1][1] == point.phase:
            step, phase, start, _ = spans[-1]
            spans[-1] = (step, phase, start, point.index + 1)
        else:
            spans.append((point.step, point.phase, point.index, point.index + 1))
    return spans


def timeline_figure(report: Report, title: str | None = None) -> Figure:
    """Live bytes after every event of the step, stacked by category; phases shaded, peak marked."""
    peak_at = peak_index(report)
    figure = _figure(10, 5)
    from matplotlib.patches import Patch

    points = _thin(report.timeline, peak_at)
    unit, scale = binary_unit(max(report.peak_bytes, 1))
    categories = [c for c in Category if any(p.categories[c] for p in points)]
    axes = figure.add_subplot()
    xs = [p.index for p in points]
    last = report.timeline[-1].index + 1
    ys = [[p.categories[c] / scale for p in points] + [points[-1].categories[c] / scale] for c in categories]
    axes.stackplot(
        [*xs, last],
        *ys,
        labels=[str(c) for c in categories],
        colors=[CATEGORY_COLORS[c] for c in categories],
        step="post",
        linewidth=0,
    )
    shaded: set[Phase] = set()
    for step, phase, start, end in _phase_spans(report.timeline):
        if phase in PHASE_COLORS:
            axes.axvspan(start, end, color=PHASE_COLORS[phase], alpha=0.10, linewidth=0, zorder=0)
            shaded.add(phase)
        if phase is Phase.FORWARD and start > 0:
            axes.axvline(start, color="#444444", linewidth=0.6, linestyle=":")
        if phase is Phase.FORWARD:
            axes.text(
                start,
                1.0,
                f" step {step}",
                transform=axes.get_xaxis_transform(),
                va="top",
                ha="left",
                fontsize=8,
                color="#444444",
            )
    peak = report.timeline[peak_at]
    y = report.peak_bytes / scale
    axes.axhline(y, color="black", linewidth=0.8, linestyle="--")
    axes.plot([peak.index], [y], marker="v", color="black", markersize=8, label="_peak")
    module = report.steady.module
    where = f"{report.steady.phase}" + (f" in {module}" if module and not module.startswith("(") else "")
    axes.annotate(
        f"peak {human_bytes(report.peak_bytes)}\n({where})",
        xy=(peak.index, y),
        xytext=(0, 10),
        textcoords="offset points",
        ha="center",
        va="bottom",
        fontsize=9,
        fontweight="bold",
    )
    axes.set_xlim(0, last)
    axes.set_ylim(0, y * 1.22)
    axes.set_xlabel("event of the step (each allocation or free, in order)")
    axes.set_ylabel(f"live memory ({unit})")
    axes.set_title(title or f"Memory over the {report.mode} step ({report.source}, {report.device})")
    handles, labels = axes.get_legend_handles_labels()
    for phase in (Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER):
        if phase in shaded:
            handles.append(Patch(color=PHASE_COLORS[phase], alpha=0.25))
            labels.append(f"{phase} (shaded)")
    axes.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return figure


# Per-layer bars ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerBar:
    """One layer's bars: its activations and its parameters, in bytes; for the engine's rows
    also everything the layer made that is alive at the peak (gradients and temporaries too)."""

    name: str
    activation_bytes: int
    parameter_bytes: int
    made_bytes: int | None = None


def bars_of_report(report: Report) -> list[LayerBar]:
    """The engine's rows that hold anything: activations and all they made alive at the peak, parameters."""
    return [
        LayerBar(row.name, row.activation_bytes, row.parameter_bytes, row.created_bytes)
        for row in report.layers
        if row.name and (row.created_bytes or row.activation_bytes or row.parameter_bytes)
    ]


def bars_of_textbook(book: Textbook) -> list[LayerBar]:
    """The hand calculation's rows: each output for the whole batch, and the parameters."""
    return [LayerBar(row.name, row.batch_activation_bytes, row.parameter_bytes) for row in book.rows]


def layers_figure(
    bars: Sequence[LayerBar], title: str = "Per layer", activation_label: str = "activations", limit: int = 60
) -> Figure:
    """Horizontal bars, one pair a layer (first layer on top); the `limit` largest layers if more."""
    shown = list(bars)
    if len(shown) > limit:
        size = lambda b: max(b.activation_bytes, b.made_bytes or 0) + b.parameter_bytes  # noqa: E731
        largest = sorted(shown, key=size, reverse=True)[:limit]
        keep = {id(b) for b in largest}
        shown = [b for b in shown if id(b) in keep]
        title += f" (the {limit} largest of {len(bars)})"
    series: list[tuple[str, str, list[int]]] = [
        (activation_label, CATEGORY_COLORS[Category.ACTIVATION], [b.activation_bytes for b in shown])
    ]
    if any(b.made_bytes is not None for b in shown):
        made = [b.made_bytes or 0 for b in shown]
        series.append(("all it made, alive at the peak", CATEGORY_COLORS[Category.TEMPORARY], made))
    series.append(("parameters", CATEGORY_COLORS[Category.PARAMETER], [b.parameter_bytes for b in shown]))
    unit, scale = binary_unit(max([1, *(v for _, _, values in series for v in values)]))
    figure = _figure(9, max(2.5, 0.16 * len(series) * len(shown) + 1.4))
    axes = figure.add_subplot()
    positions = list(range(len(shown)))
    height = 0.8 / len(series)
    for k, (label, color, values) in enumerate(series):
        offset = (k - (len(series) - 1) / 2) * height
        axes.barh(
            [p + offset for p in positions], [v / scale for v in values], height, label=label, color=color
        )
    axes.set_yticks(positions, [b.name for b in shown], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel(f"bytes ({unit})")
    axes.set_ylabel("layer")
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize=8)
    return figure


# What if the batch were larger ---------------------------------------------------------------


def batch_title(report: Report) -> str:
    """`Peak against batch size (train; optimizer adam, dtype as built)`: the settings it holds to."""
    settings = dict(report.settings)
    chosen = ", ".join(f"{k} {settings[k]}" for k in ("optimizer", "dtype", "amp") if k in settings)
    return f"Peak against batch size ({report.mode}" + (f"; {chosen})" if chosen else ")")


def batch_figure(points: Sequence[tuple[int, int]], title: str = "Peak against batch size") -> Figure:
    """Peak bytes at each batch size, each point labelled with its value."""
    if not points:
        raise UsageError("no batch sizes to plot")
    batches = [b for b, _ in points]
    unit, scale = binary_unit(max(peak for _, peak in points))
    figure = _figure(7, 4.2)
    axes = figure.add_subplot()
    axes.plot(
        batches, [peak / scale for _, peak in points], marker="o", color=CATEGORY_COLORS[Category.PARAMETER]
    )
    for batch, peak in points:
        axes.annotate(
            human_bytes(peak),
            xy=(batch, peak / scale),
            xytext=(0, 7),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    axes.set_xticks(batches, [str(b) for b in batches])
    axes.set_ylim(0, max(peak for _, peak in points) / scale * 1.15)
    axes.set_xlabel("batch size")
    axes.set_ylabel(f"peak ({unit})")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    return figure


# Output ------------------------------------------------------------------------------------

FORMATS = ("png", "svg")


def figure_bytes(figure: Figure, fmt: str, salt: str = "nnmem") -> bytes:
    """`figure` as PNG or SVG bytes. SVG keeps text as text; its ids are hashed with `salt`,
    so figures with different salts can share one HTML page."""
    from matplotlib import rc_context

    out = io.BytesIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        figure.savefig(out, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else None)
    return out.getvalue()


def figure_svg(figure: Figure, salt: str = "nnmem") -> str:
    """`figure` as an `<svg>` element to put inside an HTML page (no XML prolog or doctype)."""
    text = figure_bytes(figure, "svg", salt).decode("utf-8")
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.DOTALL)  # RDF about the file
    return text[text.index("<svg") :]


def save_figure(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Write `figure` to `path` (.png or .svg, from the suffix) atomically."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UsageError(f"cannot tell the plot format from '{path}': name it .png or .svg")
    return write_atomic(path, figure_bytes(figure, fmt))


def check_plot_paths(paths: Sequence[str | os.PathLike[str]]) -> None:
    """Fail early, before any output is written: a plot file that is not .png or .svg, or no matplotlib."""
    for path in paths:
        if Path(path).suffix.lower().lstrip(".") not in FORMATS:
            raise UsageError(f"cannot tell the plot format from '{path}': name it .png or .svg")
    if paths:
        _figure(1, 1)
