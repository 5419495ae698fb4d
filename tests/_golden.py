"""Golden files for rendered output: compare, or rewrite them with NNMEM_REGEN_GOLDEN=1."""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden"


def check_golden(name: str, text: str) -> None:
    """`text` must equal tests/golden/`name`; NNMEM_REGEN_GOLDEN=1 writes it instead."""
    path = GOLDEN / name
    if os.environ.get("NNMEM_REGEN_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), f"no golden file {path}; write it with NNMEM_REGEN_GOLDEN=1 python -m pytest {name}"
    expected = path.read_text(encoding="utf-8")
    assert text == expected, (
        f"rendered output differs from {path}; if the change is intended, regenerate with "
        "NNMEM_REGEN_GOLDEN=1 python -m pytest tests/test_render_tables.py and review the diff"
    )
