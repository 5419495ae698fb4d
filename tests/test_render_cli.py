"""The CLI's report flags: --format, --output, --columns, --plot*, --batches; colour and width."""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

import nnmem
from nnmem.cli import main
from nnmem.zoo import mlp

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CLASSIC = str(EXAMPLES / "classic_cnn.txt")
MLP = ["--model", "nnmem.zoo:mlp", "--input", "4x784", "--device", "cpu"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def svg_text(path: Path) -> str:
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return "".join(root.itertext())


def test_spec_markdown_with_plots_and_the_what_if(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    timeline, layers, batches = tmp_path / "t.svg", tmp_path / "l.png", tmp_path / "b.svg"
    args = [
        "estimate",
        CLASSIC,
        "--format",
        "markdown",
        "--plot",
        str(timeline),
        "--plot-layers",
        str(layers),
        "--batches",
        "1,4",
        "--plot-batches",
        str(batches),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    # the per-layer table of a spec is the hand calculation's
    assert "| F1 | 500 | 500 | 2,000 | 2,000 | 9216·500 + 500 = 4,608,500 | 18,434,000 |" in out
    peak = int(re.search(r"\*\*peak [\d.]+ MiB \(([\d,]+) B\)", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    # the what-if at batch 1 is the report itself, and a larger batch needs more
    what_if = dict(re.findall(r"^\| (\d+) \| ([\d,]+) \|", out, flags=re.MULTILINE))
    assert int(what_if["1"].replace(",", "")) == peak
    assert int(what_if["4"].replace(",", "")) > peak
    assert "live memory (MiB)" in svg_text(timeline) and "peak 88.39 MiB" in svg_text(timeline)
    assert layers.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "batch size" in svg_text(batches) and "peak (MiB)" in svg_text(batches)


def test_spec_csv_to_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "layers.csv"
    assert main(["estimate", CLASSIC, "--batch", "64", "--format", "csv", "--output", str(out)]) == 0
    assert capsys.readouterr().out == ""
    rows = {row["name"]: row for row in csv.DictReader(io.StringIO(out.read_text()))}
    assert list(rows) == ["input", "C1", "P1", "C2", "P2", "flatten1", "F1", "F2"]
    assert int(rows["C1"]["batch_activation_bytes"]) == 64 * 32 * 50 * 50 * 4  # fp32 output, batch 64
    assert rows["P2"]["output_shape"] == "64x12x12"  # 25 -> 12, floor
    assert [p.name for p in tmp_path.iterdir()] == ["layers.csv"]  # no temporary left behind


def test_model_csv_with_chosen_columns(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", *MLP, "--format", "csv", "--columns", "name,parameters"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "name,parameters"
    assert lines[1:] == [
        "(model),0",
        f"0,{784 * 2048 + 2048}",
        "1,0",
        f"2,{2048 * 2048 + 2048}",
        "3,0",
        f"4,{2048 * 10 + 10}",
    ]


def test_model_what_if_matches_estimates_at_those_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["estimate", *MLP, "--format", "json", "--batches", "2,8"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = [
        {
            "batch": b,
            "peak_bytes": nnmem.estimate(mlp, torch.empty(b, 784, device="meta"), device="cpu").peak_bytes,
        }
        for b in (2, 8)
    ]
    assert data["batch_peaks"] == expected


def test_an_unknown_column_fails_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.md"
    code = main(
        ["estimate", *MLP, "--format", "markdown", "--columns", "name,activation", "--output", str(out)]
    )
    assert code == 2
    assert "no column 'activation'" in capsys.readouterr().err
    assert not out.exists()


def test_the_terminal_table_respects_width_and_no_color(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # as if on a terminal
    monkeypatch.setenv("COLUMNS", "60")
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert main(["estimate", *MLP]) == 0
    coloured = capsys.readouterr().out
    assert re.search(r"\x1b\[[0-9;]*3[0-9]m|\x1b\[[0-9;]*38;", coloured)  # the control: colour is on
    monkeypatch.setenv("NO_COLOR", "1")
    assert main(["estimate", *MLP]) == 0
    plain = capsys.readouterr().out
    assert not re.search(r"\x1b\[[0-9;]*3[0-9]m|\x1b\[[0-9;]*38;", plain)
    lines = ANSI.sub("", plain).splitlines()
    assert max(len(line) for line in lines) <= 60
    assert lines[0].startswith("peak ") and any("optimizer_state" in line for line in lines)
    assert any(line.startswith(" layer ") for line in lines)  # the per-layer table, fitted
