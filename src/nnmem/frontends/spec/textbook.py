"""The hand calculation, done right: per-layer outputs and parameters, and rules of thumb.

The textbook counts each value once, where it is made: the input, and the output of each
layer that makes a new tensor (conv, pool, fc, embedding, recurrent, attention,
transformer, norm, the sum of a residual block, a projection). Activations (relu, gelu,
silu, tanh, sigmoid, softmax) and dropout are counted in place: 0 new elements, since
they may overwrite the layer before them; except right after the input or at the start
of a residual block, whose value is still needed, where they count their output. Views
(flatten, transpose) count 0. A layer's internals (an LSTM's gates, attention scores) are
not counted: that is what the engine's trace is for.

The rules of thumb, all in the textbook's dtype (4 bytes for fp32):
- ×3 activations: a training step needs about 3 × the forward activations of the batch
  (the activations kept for backward, a gradient of the same size for each, and about as
  much again in temporaries).
- ×3 parameters: weights + gradients + one optimizer state (SGD with momentum), i.e.
  "training ≈ parameters × 3 × 4 bytes" in fp32.
- ×4 parameters: weights + gradients + two optimizer states (Adam's two moments).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nnmem.errors import UsageError
from nnmem.frontends.spec.build import compile_spec
from nnmem.frontends.spec.nodes import Layout, Spec

TOKEN_BYTES = 8  # token ids are int64, whatever the model's dtype


@dataclass(frozen=True)
class TextbookRow:
    """One line of the hand calculation."""

    name: str  # C1, P1, F1, B1.C3, or the user's name; "input" for the input
    kind: str  # conv, maxpool, fc, ..., "input", "residual"
    line: int  # where the spec writes it
    output_shape: tuple[int, ...]  # per sample, PyTorch order: (C, H, W) for an image
    layout: Layout
    activation_elements: int  # new values per sample (0: in place, or a view)
    activation_bytes: int  # per sample
    batch_activation_bytes: int  # for the whole batch
    parameters: int
    parameter_formula: str  # "3·3·3·32 + 32 = 896"
    parameter_bytes: int


@dataclass(frozen=True)
class RuleOfThumb:
    """A rule of thumb: its name, what it stands for, and its value."""

    name: str
    meaning: str
    bytes: int


@dataclass(frozen=True)
class Textbook:
    """The hand calculation of a spec for one batch size and one element size."""

    rows: tuple[TextbookRow, ...]
    batch: int
    dtype_bytes: int
    activation_elements: int  # per sample, the input included
    activation_bytes: int  # per sample
    batch_activation_bytes: int
    parameters: int
    parameter_bytes: int
    backward_activation_bytes: int  # ×3: 3 · batch_activation_bytes
    sgd_parameter_bytes: int  # ×3: weights + gradients + one optimizer state
    adam_parameter_bytes: int  # ×4: weights + gradients + two optimizer states

    def rules(self) -> tuple[RuleOfThumb, ...]:
        """The rules of thumb, each with the sentence that defines it."""
        return (
            RuleOfThumb(
                "×3 activations",
                "backward needs about 3 × the forward activations: the activations kept, "
                "a gradient of the same size for each, and as much again in temporaries",
                self.backward_activation_bytes,
            ),
            RuleOfThumb(
                "×3 parameters",
                "training with SGD and momentum: weights + gradients + one state per parameter",
                self.sgd_parameter_bytes,
            ),
            RuleOfThumb(
                "×4 parameters",
                "training with Adam: weights + gradients + two states per parameter",
                self.adam_parameter_bytes,
            ),
        )

    def row(self, name: str) -> TextbookRow:
        """The row called `name`."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no row {name!r}; rows: {', '.join(r.name for r in self.rows)}")


def textbook(spec: Spec, batch: int = 1, dtype_bytes: int = 4) -> Textbook:
    """The hand calculation of `spec` for `batch` samples of `dtype_bytes`-byte values.

    Shapes come from PyTorch (the model is made on the `meta` device, so this costs no
    memory); a spec with impossible shapes raises SpecError naming the layer.
    """
    if batch < 1:
        raise UsageError(f"batch must be at least 1, not {batch}")
    if dtype_bytes < 1:
        raise UsageError(f"dtype_bytes must be at least 1, not {dtype_bytes}")
    compiled = compile_spec(spec, torch.float32, "meta")
    first = spec.input.shape
    input_bytes = TOKEN_BYTES if first.layout is Layout.TOKENS else dtype_bytes
    rows = [
        TextbookRow(
            name="input",
            kind="input",
            line=spec.input.position.line,
            output_shape=first.dims,
            layout=first.layout,
            activation_elements=first.elements,
            activation_bytes=first.elements * input_bytes,
            batch_activation_bytes=first.elements * input_bytes * batch,
            parameters=0,
            parameter_formula="0",
            parameter_bytes=0,
        )
    ]
    for layer in compiled.layers:
        rows.append(
            TextbookRow(
                name=layer.name,
                kind=layer.kind,
                line=layer.position.line,
                output_shape=layer.output.dims,
                layout=layer.output.layout,
                activation_elements=layer.new_elements,
                activation_bytes=layer.new_elements * dtype_bytes,
                batch_activation_bytes=layer.new_elements * dtype_bytes * batch,
                parameters=layer.formula.value,
                parameter_formula=layer.formula.shown(),
                parameter_bytes=layer.formula.value * dtype_bytes,
            )
        )
    activation_bytes = sum(row.activation_bytes for row in rows)
    parameters = sum(row.parameters for row in rows)
    return Textbook(
        rows=tuple(rows),
        batch=batch,
        dtype_bytes=dtype_bytes,
        activation_elements=sum(row.activation_elements for row in rows),
        activation_bytes=activation_bytes,
        batch_activation_bytes=activation_bytes * batch,
        parameters=parameters,
        parameter_bytes=parameters * dtype_bytes,
        backward_activation_bytes=3 * activation_bytes * batch,
        sgd_parameter_bytes=3 * parameters * dtype_bytes,
        adam_parameter_bytes=4 * parameters * dtype_bytes,
    )
