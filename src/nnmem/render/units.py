"""Bytes for people: binary units (KiB, MiB, GiB), labelled as such. Only renderers use this."""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(nbytes: int, digits: int = 2) -> str:
    """`1536` -> `'1.50 KiB'`. Bytes below 1 KiB are written exactly."""
    value = float(nbytes)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{nbytes} B" if unit == "B" else f"{value:.{digits}f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def mib(nbytes: int, digits: int = 2) -> str:
    return f"{nbytes / 2**20:,.{digits}f} MiB"


def signed_percent(estimate: int, truth: int) -> str:
    if truth == 0:
        return "n/a" if estimate == 0 else "+inf"
    return f"{(estimate - truth) / truth * 100:+.3f} %"
