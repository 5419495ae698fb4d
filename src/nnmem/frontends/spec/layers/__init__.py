"""The layer kinds of the spec language; importing this package registers them all."""

from __future__ import annotations

from nnmem.frontends.spec.layers import activations, dense, sequence, windows

__all__ = ["activations", "dense", "sequence", "windows"]
