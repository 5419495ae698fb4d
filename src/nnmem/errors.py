"""The errors nnmem raises: one base class, a few kinds, each with its own exit code.

A message says where (a spec's line and column, a module's path), what went wrong,
and how to fix it. The CLI prints the message and exits with `exit_code`; it never
prints a traceback for these.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class NnmemError(Exception):
    """Base class of every error nnmem reports to a user."""

    exit_code = 1


class UsageError(NnmemError):
    """A bad option or argument: an unknown name, a malformed size or shape."""

    exit_code = 2


class SpecError(NnmemError):
    """A text spec that does not parse, or whose shapes are impossible."""

    exit_code = 3


class ModelError(NnmemError):
    """A model that cannot be imported, built, or run on the given inputs."""

    exit_code = 4


class TraceError(NnmemError):
    """The model runs but cannot be traced on fake tensors (e.g. it reads data)."""

    exit_code = 5


class MeasureError(NnmemError):
    """The real run used for measuring failed."""

    exit_code = 6


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return " — did you mean 'x'?" for the nearest valid choice, or ""."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" — did you mean '{close[0]}'?" if close else ""
