"""Plots: the figures' contents (labels, the peak, the stacks, the bars), and valid PNG and SVG files."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from _render_fixtures import PEAK, MiB, small_report

import nnmem
from nnmem.categories import Category, Phase
from nnmem.cli import main
from nnmem.errors import UsageError
from nnmem.render import plot
from nnmem.report import Breakdown, TimelinePoint
from nnmem.zoo import mlp

pytest.importorskip("matplotlib")
from matplotlib.text import Annotation


def annotations(figure: object) -> list[Annotation]:
    return [text for text in figure.axes[0].texts if isinstance(text, Annotation)]  # type: ignore[attr-defined]


def test_timeline_labels_stacks_phases_and_the_peak() -> None:
    report = small_report()
    figure = plot.timeline_figure(report)
    axes = figure.axes[0]
    assert axes.get_ylabel() == "live memory (MiB)"
    assert axes.get_xlabel().startswith("event of the step")
    # one stack a category that is ever alive, in the order of Category
    stacked = [c.get_label() for c in axes.collections]
    assert stacked == ["parameter", "input", "activation", "gradient", "optimizer_state", "temporary"]
    legend = [t.get_text() for t in axes.get_legend().get_texts()]
    assert {"forward (shaded)", "backward (shaded)", "optimizer (shaded)"} <= set(legend)
    assert {"step 1", "step 2"} <= {t.get_text().strip() for t in axes.texts}
    # the peak: step 2's first backward point (index 8), at 17.75 MiB = 18,612,224 B
    assert plot.peak_index(report) == 8
    (peak,) = annotations(figure)
    assert peak.get_text().startswith("peak 17.75 MiB")
    assert "backward in fc" in peak.get_text()
    assert peak.xy == (8, PEAK / MiB)


def test_the_stacks_add_up_to_the_live_total() -> None:
    report = small_report()
    axes = plot.timeline_figure(report).axes[0]
    top = axes.collections[-1].get_paths()[0].vertices[:, 1].max()
    assert top == pytest.approx(PEAK / MiB)


def test_a_traced_timeline_marks_the_steady_state_peak() -> None:
    report = nnmem.estimate(mlp, torch.empty(4, 784, device="meta"), device="cpu")
    index = plot.peak_index(report)
    point = report.timeline[index]
    assert point.total == report.peak_bytes
    assert point.step == max(p.step for p in report.timeline if p.total == report.peak_bytes)  # not step 1
    (peak,) = annotations(plot.timeline_figure(report))
    _, scale = plot.binary_unit(report.peak_bytes)
    assert peak.xy == (point.index, report.peak_bytes / scale)


def test_a_long_timeline_is_thinned_but_keeps_its_peak() -> None:
    points = tuple(
        TimelinePoint(
            i,
            1,
            Phase.FORWARD,
            Breakdown.of({Category.ACTIVATION: (i % 97) * 1024 + (10**7 if i == 12_345 else 0)}),
        )
        for i in range(20_000)
    )
    report = replace(small_report(), timeline=points, peak_bytes=points[12_345].total)
    axes = plot.timeline_figure(report).axes[0]
    xs = axes.collections[0].get_paths()[0].vertices[:, 0]
    assert len(set(xs)) <= plot.MAX_POINTS + 2
    assert annotations(axes.figure)[0].xy[0] == 12_345


def test_layer_bars_name_each_layer_and_hold_its_bytes() -> None:
    bars = plot.bars_of_report(small_report())
    assert [b.name for b in bars] == ["conv1", "fc"]  # the model itself and relu hold nothing
    axes = plot.layers_figure(bars, title="Per layer").axes[0]
    assert [t.get_text() for t in axes.get_yticklabels()] == ["conv1", "fc"]
    assert axes.get_xlabel() == "bytes (MiB)"
    series = {c.get_label(): [bar.get_width() for bar in c] for c in axes.containers}
    assert series["activations"] == [4.0, 2.0]  # conv1 4 MiB, fc 2 MiB
    assert series["parameters"] == [1.0, 2.0]
    assert series["all it made, alive at the peak"] == [5.0, 4.5]


def test_the_what_if_plots_each_batch_and_its_peak() -> None:
    points = [(1, 10 * MiB), (8, 30 * MiB), (32, 100 * MiB), (64, 2 * 1024 * MiB)]
    axes = plot.batch_figure(points, title="what if").axes[0]
    assert axes.get_xlabel() == "batch size"
    assert axes.get_ylabel() == "peak (GiB)"
    (line,) = axes.get_lines()
    assert list(line.get_xdata()) == [1, 8, 32, 64]
    assert list(line.get_ydata()) == pytest.approx([10 / 1024, 30 / 1024, 100 / 1024, 2.0])
    assert [a.get_text() for a in annotations(axes.figure)] == [
        "10.00 MiB",
        "30.00 MiB",
        "100.00 MiB",
        "2.00 GiB",
    ]


def test_png_and_svg_files_are_valid(tmp_path: Path) -> None:
    figure = plot.timeline_figure(small_report())
    png = plot.save_figure(figure, tmp_path / "t.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    svg = plot.save_figure(figure, tmp_path / "t.svg")
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = "".join(root.itertext())
    assert "live memory (MiB)" in texts and "peak 17.75 MiB" in texts  # text stays text


def test_an_unknown_plot_format_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"name it \.png or \.svg"):
        plot.save_figure(plot.timeline_figure(small_report()), tmp_path / "t.jpg")


def test_a_report_without_timeline_says_so() -> None:
    with pytest.raises(UsageError, match="no timeline"):
        plot.timeline_figure(replace(small_report(), timeline=()))


def test_without_matplotlib_plot_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    with pytest.raises(plot.PlotUnavailable, match=r"pip install 'nnmem\[plot\]'"):
        plot.timeline_figure(small_report())
    spec = "input 8x8x3 / conv 3x3 4 / fc 10"
    code = main(["estimate", spec, "--device", "cpu", "--plot", str(tmp_path / "t.png")])
    assert code == UsageError.exit_code
    assert "pip install 'nnmem[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "t.png").exists()
