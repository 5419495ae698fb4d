"""The text-spec front end: a small language for layer stacks, compiled to `torch.nn`.

    spec = load_spec("examples/classic_cnn.txt")        # or inline: "input 50x50x3 / ..."
    model = build_model(spec)                            # an nn.Module named C1, P1, ...
    book = textbook(spec, batch=64, dtype_bytes=4)       # the hand calculation

The language is described in docs/spec.md; `LAYER_KINDS` holds every layer word.
"""

from __future__ import annotations

from nnmem.frontends.spec.build import (
    CompiledLayer,
    CompiledSpec,
    Residual,
    SpecModel,
    build_model,
    compile_spec,
)
from nnmem.frontends.spec.load import load_spec
from nnmem.frontends.spec.nodes import Layout, Spec
from nnmem.frontends.spec.registry import LAYER_KINDS, LayerKind, register_layer
from nnmem.frontends.spec.syntax import parse_spec
from nnmem.frontends.spec.textbook import RuleOfThumb, Textbook, TextbookRow, textbook

__all__ = [
    "LAYER_KINDS",
    "CompiledLayer",
    "CompiledSpec",
    "LayerKind",
    "Layout",
    "Residual",
    "RuleOfThumb",
    "Spec",
    "SpecModel",
    "Textbook",
    "TextbookRow",
    "build_model",
    "compile_spec",
    "load_spec",
    "parse_spec",
    "register_layer",
    "textbook",
]
