"""Reading a spec from a file path or from inline text."""

from __future__ import annotations

import os
from pathlib import Path

from nnmem.errors import SpecError
from nnmem.frontends.spec.nodes import Spec
from nnmem.frontends.spec.syntax import parse_spec


def load_spec(path_or_text: str | os.PathLike[str]) -> Spec:
    """Parse a spec file, or inline spec text.

    The rule: a path object, or a string naming an existing file, is read as a file
    (UTF-8). Any other string is inline text ("input 50x50x3 / conv 3x3 32 same / ..."),
    unless it looks like a path: no spaces and no line breaks, or ending in ".txt"
    without starting with `input`. Such a string is refused: "no spec file '...'".
    """
    if isinstance(path_or_text, str) and not os.path.isfile(path_or_text):
        text = path_or_text
        stripped = text.strip()
        looks_like_path = stripped.endswith(".txt") or not any(c.isspace() for c in stripped)
        if not stripped or "\n" in text or stripped.startswith("input") or not looks_like_path:
            return parse_spec(text, "<spec>")
        if os.path.isdir(text):
            raise SpecError(f"'{text}' is a directory, not a spec file")
        raise SpecError(
            f"no spec file '{text}'; inline spec text starts with 'input', "
            "e.g. 'input 50x50x3 / conv 3x3 32 same / fc 10'"
        )
    path = Path(path_or_text)
    try:
        contents = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as problem:
        raise SpecError(f"{path}: not UTF-8 text ({problem.reason} at byte {problem.start})") from None
    except OSError as problem:
        raise SpecError(f"cannot read spec file '{path}': {problem.strerror or problem}") from None
    return parse_spec(contents, str(path))
