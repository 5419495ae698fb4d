"""The JSON report against its schema (docs/report.schema.json), checked by a small validator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from _jsonschema_lite import errors
from _render_fixtures import small_report

import nnmem
from nnmem.categories import Category, Phase
from nnmem.cli import main
from nnmem.render.document import engine_document, render_text
from nnmem.zoo import mlp

ROOT = Path(__file__).resolve().parent.parent
SCHEMA: dict[str, Any] = json.loads((ROOT / "docs" / "report.schema.json").read_text())


def assert_valid(data: Any) -> None:
    found = errors(data, SCHEMA)
    assert not found, "\n".join(found[:20])
    try:
        import jsonschema
    except ImportError:
        return
    jsonschema.validate(data, SCHEMA)  # the reference implementation agrees, where it is installed


def test_the_schema_names_every_category_and_phase() -> None:
    categories = SCHEMA["$defs"]["categories"]
    assert set(categories["required"]) == set(categories["properties"]) == {str(c) for c in Category}
    assert set(SCHEMA["$defs"]["phase"]["enum"]) == {str(p) for p in Phase}


def test_a_traced_report_with_its_timeline_is_valid() -> None:
    report = nnmem.estimate(mlp, torch.empty(4, 784, device="meta"), device="cpu")
    data = json.loads(json.dumps(report.to_dict(timeline=True)))
    assert_valid(data)
    assert len(data["timeline"]) == len(report.timeline) > 0


def test_the_cli_json_with_the_what_if_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    document = engine_document(small_report(), "small", batch_peaks=((1, 10), (2, 20)))
    data = json.loads(render_text(document, "json"))
    assert_valid(data)
    assert data["batch_peaks"] == [{"batch": 1, "peak_bytes": 10}, {"batch": 2, "peak_bytes": 20}]


def test_a_spec_report_with_the_hand_calculation_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    spec = "input 8x8x3 / conv 3x3 4 / relu / fc 10"
    assert main(["estimate", spec, "--batch", "2", "--device", "cpu", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert_valid(data)
    assert data["textbook"]["parameters"] == (3 * 3 * 3 * 4 + 4) + (6 * 6 * 4 * 10 + 10)  # valid conv: 8 -> 6
    assert data["layers"][0]["name"] == "input"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("peak_bytes"), "missing 'peak_bytes'"),
        (lambda d: d.update(peak_bytes="big"), "$.peak_bytes: str is not integer"),
        (lambda d: d.update(peak_bytes=-1), "$.peak_bytes: -1 < 0"),
        (lambda d: d["categories"].update(vram=1), "$.categories: unexpected 'vram'"),
        (lambda d: d["steady_peak"].update(phase="sideways"), "'sideways' is not one of"),
        (lambda d: d["layers"].append({"name": "x"}), "$.layers[4]: matches none of anyOf"),
        (lambda d: d.update(textbook={}), "'textbook' needs 'engine_layers'"),
    ],
)
def test_the_validator_finds_what_is_wrong(change: Any, message: str) -> None:
    data = json.loads(json.dumps(small_report().to_dict()))
    assert_valid(data)
    change(data)
    assert any(message in error for error in errors(data, SCHEMA)), errors(data, SCHEMA)
