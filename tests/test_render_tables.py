"""Per-layer tables in the terminal, CSV and Markdown: golden files at fixed widths, and their contents."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest
from _golden import check_golden
from _render_fixtures import INPUT, PARAMS, PEAK, MiB, small_report

from nnmem.errors import UsageError
from nnmem.frontends.spec import load_spec, textbook
from nnmem.render.document import engine_document, render_text
from nnmem.render.files import write_atomic
from nnmem.render.formats import engine_layers, parse_columns, peak_line, textbook_layers, to_csv, to_markdown
from nnmem.render.table import fit, layer_table, natural_width, plain_text, terminal_report

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CLASSIC = str(EXAMPLES / "classic_cnn.txt")


def test_terminal_report_golden_at_100_columns() -> None:
    text = plain_text(terminal_report(small_report(), None, 100), 100)
    check_golden("small_report_100.txt", text)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "17.75 MiB" in text.splitlines()[0]  # the peak line comes first: 18,612,224 B = 17.75 MiB
    for title in (
        "layer",
        "kind",
        "output shape",
        "parameters",
        "param bytes",
        "activations",
        "alive at peak",
    ):
        assert title in text


def test_a_narrow_terminal_drops_the_least_important_columns() -> None:
    text = plain_text(terminal_report(small_report(), None, 60), 60)
    check_golden("small_report_60.txt", text)
    table = fit(engine_layers(small_report()).select(None), 60)
    assert natural_width(table) <= 60
    assert table.keys == ("name", "parameter_bytes", "activation_bytes", "created_bytes")  # kept by priority
    assert "output shape" not in text and "Conv2d" not in text
    assert max(len(line) for line in text.splitlines()) <= 60


def test_chosen_columns_are_kept_in_their_order_whatever_the_width() -> None:
    columns = parse_columns("activation_bytes, name")
    text = plain_text(layer_table(engine_layers(small_report()), columns, 40), 40)
    header = next(line for line in text.splitlines() if "activations" in line)
    assert header.index("activations") < header.index("layer")
    assert "4.00 MiB" in text  # conv1's activations


def test_an_unknown_column_says_which_ones_exist() -> None:
    with pytest.raises(UsageError, match="did you mean 'activation_bytes'") as error:
        engine_layers(small_report()).select(["activation_byte"])
    assert "created_bytes" in str(error.value)


def test_csv_holds_exact_bytes_and_every_column() -> None:
    report = small_report()
    text = to_csv(engine_layers(report))
    check_golden("small_report_layers.csv", text)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["name"] for row in rows] == ["(model)", "conv1", "relu", "fc"]
    conv = rows[1]
    assert int(conv["parameter_bytes"]) == 262_144 * 4  # fp32 weights
    assert int(conv["activation_bytes"]) == 4 * MiB
    assert conv["output_shape"] == "8x16x32x32"
    assert sum(int(row["parameters"]) for row in rows) == report.parameters


def test_markdown_document_golden() -> None:
    document = engine_document(small_report(), "nnmem estimate: small")
    text = render_text(document, "markdown")
    check_golden("small_report.md", text)
    assert f"peak 17.75 MiB ({PEAK:,} B) during backward in 'fc' (aten.mm.default)" in text
    assert "| conv1 | Conv2d | 8×16×32×32 | 262,144 | 1.00 MiB | 4.00 MiB |" in text
    assert f"| input | {INPUT:,} | 256.00 KiB |" in text


def test_the_textbook_table_for_a_spec(tmp_path: Path) -> None:
    book = textbook(load_spec(CLASSIC), batch=64, dtype_bytes=4)
    table = textbook_layers(book)
    check_golden("classic_cnn_layers_100.txt", plain_text(layer_table(table, None, 100), 100))
    markdown = to_markdown(table.select(None))
    check_golden("classic_cnn_layers.md", markdown)
    # the hand calculation's numbers, written exactly
    assert "| C1 | 32×50×50 | 80,000 | 320,000 | 20,480,000 | 3·3·3·32 + 32 = 896 | 3,584 |" in markdown
    rows = {row["name"]: row for row in csv.DictReader(io.StringIO(to_csv(table)))}
    assert int(rows["C1"]["batch_activation_bytes"]) == 64 * 32 * 50 * 50 * 4  # fp32 output, batch 64
    assert int(rows["F1"]["parameters"]) == 9216 * 500 + 500


def test_peak_line_names_both_peaks_when_they_differ() -> None:
    line = peak_line(small_report())
    assert line.startswith(f"peak 17.75 MiB ({PEAK:,} B) during backward in 'fc'")
    first = PARAMS + INPUT + PARAMS + 2 * PARAMS  # step 1's optimizer step: weights, grads, two moments
    assert f"first step 12.25 MiB ({first:,} B) during optimizer (aten.add.Tensor)" in line


def test_write_atomic_replaces_whole_files_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.md"
    target.write_text("old")
    write_atomic(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert [p.name for p in tmp_path.iterdir()] == ["out.md"]


def test_write_atomic_keeps_the_old_file_when_the_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.md"
    target.write_text("old")

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.md"]


def test_write_atomic_into_a_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        write_atomic(tmp_path / "nope" / "r.html", "x")
