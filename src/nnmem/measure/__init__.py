"""Measured truth: run the very step `nnmem.estimate` traces, for real, and report its memory."""

from nnmem.measure.api import measure

__all__ = ["measure"]
