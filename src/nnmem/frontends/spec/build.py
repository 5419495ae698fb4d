"""Compiling a parsed spec into a `torch.nn` module, one named submodule per spec layer.

Shapes come from PyTorch itself: each layer is made once on the `meta` device (no memory)
and run on a meta tensor of the incoming shape; its output shape feeds the next layer.
When PyTorch refuses, the layer kind's `explain` says why in words, and the error names
the layer and its line. Only then is the layer made on the real device.

Names: a layer is called what the user wrote before `:`, else its kind's prefix and a
running index (C1, P1, F1, relu1), counted in forward order over the whole spec with
repeats unrolled. A residual block is a module (B1) holding its layers (B1.C3) and, when
the body changes the shape, a projection B1.proj. A name given inside a repeat gets the
repetition's number: `down: ...` in `repeat 2 { }` makes down_1 and down_2.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from nnmem.categories import StrEnum
from nnmem.errors import ModelError, SpecError
from nnmem.frontends.spec.nodes import (
    Args,
    LayerNode,
    LayerProblem,
    Layout,
    Node,
    Position,
    RepeatNode,
    SampleShape,
    Spec,
)
from nnmem.frontends.spec.registry import (
    LAYER_KINDS,
    NO_PARAMETERS,
    Built,
    Counting,
    Factory,
    Formula,
    LayerKind,
)
from nnmem.frontends.spec.syntax import locate


class SpecModel(nn.Sequential):
    """The module a spec compiles to: its layers in order, named as in the spec.

    `forward` takes one tensor in PyTorch's layout, batch first: (N, C, H, W) for an
    image written H x W x C, (N, C, L) for a signal, (N, T, E) for a sequence, (N, F) for
    a vector, and (N, T) int64 token ids for an embedding; `example_input` makes one.
    """

    def __init__(self, spec: Spec, layers: list[tuple[str, nn.Module]], dtype: torch.dtype) -> None:
        super().__init__(OrderedDict(layers))
        self._nnmem_spec = spec
        self._nnmem_dtype = dtype

    @property
    def spec(self) -> Spec:
        """The spec this model was compiled from."""
        return self._nnmem_spec

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype of the input: int64 token ids, or the float dtype of the model."""
        return self.spec.input_dtype(self._nnmem_dtype)

    def input_shape(self, batch: int) -> tuple[int, ...]:
        """The input tensor's shape for `batch` samples, in PyTorch order."""
        return self.spec.input_shape(batch)

    def example_input(self, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Zeros (token id 0) of the input's shape and dtype."""
        return torch.zeros(self.input_shape(batch), dtype=self.input_dtype, device=device)


class Residual(nn.Module):
    """body(x) + x, or body(x) + proj(x) when the body changes the shape."""

    def __init__(self, body: list[tuple[str, nn.Module]], projection: nn.Module | None) -> None:
        super().__init__()
        self.body_names = tuple(name for name, _ in body)
        for name, module in body:
            self.add_module(name, module)
        if projection is not None:
            self.add_module("proj", projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for name in self.body_names:
            y = self.get_submodule(name)(y)
        skip = self.get_submodule("proj")(x) if "proj" in self._modules else x
        return y + skip


@dataclass(frozen=True)
class CompiledLayer:
    """One row of a compiled spec, in forward order."""

    name: str  # the module path: C1, B1.C3, B1.proj, B1
    kind: str
    position: Position
    output: SampleShape
    new_elements: int  # per sample, as the textbook counts them (0: in place or a view)
    formula: Formula


@dataclass(frozen=True)
class CompiledSpec:
    """A spec made into a module, with the per-layer facts the textbook needs."""

    spec: Spec
    model: SpecModel
    layers: tuple[CompiledLayer, ...]


def build_model(
    spec: Spec, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> SpecModel:
    """The `torch.nn` module of `spec`, with its parameters in `dtype` on `device`.

    `device=None` is PyTorch's current default device, so `with torch.device("meta"):`
    around the call (as a model factory) makes a model that costs no memory.
    """
    return compile_spec(spec, dtype, device).model


def compile_spec(
    spec: Spec, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> CompiledSpec:
    """Make the model and the per-layer rows; `device="meta"` costs no memory."""
    target = torch.device(device) if device is not None else torch.get_default_device()
    compiler = _Compiler(spec, Factory(target, dtype))
    layers, _ = compiler.sequence(spec.body, spec.input.shape, _Scope("", SpecModel, ""))
    return CompiledSpec(spec, SpecModel(spec, layers, dtype), tuple(compiler.rows))


class _Owner(StrEnum):
    """Whether the current tensor may be overwritten in place (the textbook's convention)."""

    KEEP = "keep"  # the spec's input, or a residual block's input still needed for the skip
    LAYER = "layer"  # a layer's own output: an activation may overwrite it


@dataclass(frozen=True)
class _Scope:
    """Where layers are being compiled: the path prefix, the container, the repeat suffix."""

    path: str  # "" at the top, "B1." inside block B1
    container: type[nn.Module]
    suffix: str  # "_2" in the second repetition of a repeat


_SPATIAL = (Layout.IMAGE, Layout.SIGNAL)
_FIXES = {
    (Layout.SEQUENCE, Layout.SIGNAL): "add 'transpose' first to make the sequence (T, E) a signal (E, T)",
    (Layout.SIGNAL, Layout.SEQUENCE): "add 'transpose' first to make the signal (C, L) a sequence (L, C)",
    (Layout.TOKENS, Layout.SEQUENCE): "add 'embedding VOCAB DIM' first",
}


def _layout_fix(have: Layout, accepted: tuple[Layout, ...]) -> str:
    for want in accepted:
        fix = _FIXES.get((have, want))
        if fix:
            return fix
    if Layout.TOKENS in accepted:
        return "token ids come only from the input: write it as 'input T tokens'"
    if have is Layout.TOKENS:
        return "token ids must go through 'embedding VOCAB DIM' first"
    if have is Layout.VECTOR:
        return "a vector has no positions left: put this layer before the flatten or fc"
    return "docs/spec.md lists what each layer takes"


class _Compiler:
    """Walks the spec in forward order, naming, shaping and making each layer."""

    def __init__(self, spec: Spec, target: Factory) -> None:
        self.spec = spec
        self.target = target
        self.meta = Factory(torch.device("meta"), target.dtype)
        self.counters: dict[str, int] = {}
        self.taken: dict[str, Position] = {}
        self.rows: list[CompiledLayer] = []
        self.owner = _Owner.KEEP  # of the tensor the next layer takes

    def error(self, position: Position, message: str) -> SpecError:
        return SpecError(locate(self.spec.source, self.spec.text, position, message))

    def name(self, given: str | None, prefix: str, scope: _Scope, position: Position) -> str:
        """The layer's name in its container; refuses duplicates and names nn.Module uses."""
        # every layer counts, named or not: C3 is always the third conv
        self.counters[prefix] = self.counters.get(prefix, 0) + 1
        name = f"{prefix}{self.counters[prefix]}" if given is None else given + scope.suffix
        path = scope.path + name
        if path in self.taken:
            other = self.taken[path]
            made = "is named" if given is not None else "gets the automatic name"
            raise self.error(
                position,
                f"this layer {made} '{path}', which line {other.line} already uses; names must be unique",
            )
        reserved = name in dir(scope.container) or (scope.container is Residual and name == "proj")
        if reserved:
            raise self.error(
                position, f"'{name}' is taken by {scope.container.__name__}; choose another name"
            )
        self.taken[path] = position
        return name

    def sequence(
        self, nodes: tuple[Node, ...], x: SampleShape, scope: _Scope
    ) -> tuple[list[tuple[str, nn.Module]], SampleShape]:
        """Compile `nodes` in order, starting from `x`; returns the modules and the output."""
        modules: list[tuple[str, nn.Module]] = []
        for node in nodes:
            if isinstance(node, RepeatNode):
                for repetition in range(1, node.count + 1):
                    inner = _Scope(scope.path, scope.container, f"{scope.suffix}_{repetition}")
                    made, x = self.sequence(node.body, x, inner)
                    modules.extend(made)
                continue
            if isinstance(node, LayerNode):
                made, x = self.layer(node, x, scope)
            else:
                made, x = self.residual(node.name, node.body, node.position, x, scope)
            modules.extend(made)
        return modules, x

    def layer(
        self, node: LayerNode, x: SampleShape, scope: _Scope
    ) -> tuple[list[tuple[str, nn.Module]], SampleShape]:
        kind = LAYER_KINDS[node.kind]
        modules: list[tuple[str, nn.Module]] = []
        if kind.flatten_first and x.layout in _SPATIAL:
            # `fc` after an image or a signal: the documented implicit flatten, a row of its own
            flatten = LayerNode("flatten", None, Args(()), node.position)
            modules, x = self.layer(flatten, x, scope)
        name = self.name(node.name, kind.prefix, scope, node.position)
        path = scope.path + name
        if x.layout not in kind.layouts:
            accepted = " or ".join(layout.described() for layout in kind.layouts)
            raise self.error(
                node.position,
                f"{path}: {kind.name} takes {accepted}, but gets {x.layout.described()} {x.dims}; "
                + _layout_fix(x.layout, kind.layouts),
            )
        built, output = self.shape(kind, node.args, x, path, node.position)
        module = built.module if self.target.device.type == "meta" else self.make(kind, node, x, path)
        if kind.counting is Counting.NEW:
            counted = output.elements if built.counted_elements is None else built.counted_elements
            self.owner = _Owner.LAYER
        elif kind.counting is Counting.IN_PLACE and self.owner is _Owner.LAYER:
            counted = 0
        elif kind.counting is Counting.IN_PLACE:
            counted = output.elements  # overwriting the input (or a block's input) is not allowed
            self.owner = _Owner.LAYER
        else:
            counted = 0  # a view: whoever owned the input owns it
        self.rows.append(CompiledLayer(path, kind.name, node.position, output, counted, built.formula))
        return [*modules, (name, module)], output

    def shape(
        self, kind: LayerKind, args: Args, x: SampleShape, path: str, position: Position
    ) -> tuple[Built, SampleShape]:
        """Make the layer on `meta` and run it: PyTorch's own shape rules give the output."""
        try:
            built = kind.build(args, x, self.meta)
            dtype = torch.int64 if x.layout is Layout.TOKENS else self.meta.dtype
            # two samples: batch norm refuses to train on one value per channel
            sample = torch.empty((2, *x.dims), dtype=dtype, device="meta")
            # PyTorch's performance warnings are about running, which this probe is not
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y = built.module(sample)
        except LayerProblem as problem:
            raise self.error(position, f"{path}: {problem}") from None
        except Exception as failure:  # PyTorch refused the shapes: say why, in words
            said = str(failure).strip().split("\n")[0] or type(failure).__name__
            reason = _explain(kind, args, x) or f"{kind.name} cannot take {x.layout.described()} {x.dims}"
            if "overflow" in said:
                reason = f"{kind.name} on {x.layout.described()} {x.dims} needs more elements than PyTorch can hold"
            raise self.error(position, f"{path}: {reason} (PyTorch: {said})") from failure
        assert isinstance(y, torch.Tensor), (kind.name, type(y))
        return built, SampleShape(built.layout or x.layout, tuple(y.shape[1:]))

    def make(self, kind: LayerKind, node: LayerNode, x: SampleShape, path: str) -> nn.Module:
        """Make the layer for real, on the target device (its shapes are known to work)."""
        try:
            return kind.build(node.args, x, self.target).module
        except Exception as failure:
            message = f"{path}: could not make this {kind.name} on {self.target.device}: {failure}"
            raise ModelError(locate(self.spec.source, self.spec.text, node.position, message)) from failure

    def residual(
        self,
        given: str | None,
        body: tuple[Node, ...],
        position: Position,
        x: SampleShape,
        scope: _Scope,
    ) -> tuple[list[tuple[str, nn.Module]], SampleShape]:
        name = self.name(given, "B", scope, position)
        path = scope.path + name
        self.owner = _Owner.KEEP  # the block's input is needed again for the skip
        modules, y = self.sequence(body, x, _Scope(f"{path}.", Residual, scope.suffix))
        projection: nn.Module | None = None
        if y != x:
            projection = self.projection(x, y, path, position)
        self.rows.append(CompiledLayer(path, "residual", position, y, y.elements, NO_PARAMETERS))
        self.owner = _Owner.LAYER  # the sum is a new tensor
        return [(name, Residual(modules, projection))], y

    def projection(self, x: SampleShape, y: SampleShape, block: str, position: Position) -> nn.Module:
        """A 1x1 conv (image, signal) or a linear layer (sequence, vector) from x's shape to y's."""
        if x.layout is not y.layout:
            raise self.error(
                position,
                f"{block}: the block turns {x.layout.described()} into {y.layout.described()}; "
                "a residual block must keep the layout",
            )
        try:
            module, formula, made = self._projection(x, y)
        except Exception as failure:  # sizes PyTorch cannot hold
            said = str(failure).strip().split("\n")[0] or type(failure).__name__
            raise self.error(
                position, f"{block}: no projection from {x.dims} to {y.dims} (PyTorch: {said})"
            ) from failure
        if made != y.dims:
            raise self.error(
                position,
                f"{block}: no 1x1 projection turns {x.dims} into {y.dims}; make the block keep "
                "the size, or shrink it by a whole factor",
            )
        kind = "conv" if x.layout in _SPATIAL else "fc"
        self.rows.append(CompiledLayer(f"{block}.proj", kind, position, y, y.elements, formula))
        return module

    def _projection(self, x: SampleShape, y: SampleShape) -> tuple[nn.Module, Formula, tuple[int, ...]]:
        """Make the projection; the output shape it gives x on meta tells whether it fits y."""
        factory = self.meta if self.target.device.type == "meta" else self.target
        probe: nn.Module
        module: nn.Module
        if x.layout in _SPATIAL:
            # stride = the factor by which the body shrank each spatial dimension
            stride = tuple(math.ceil(a / b) for a, b in zip(x.spatial, y.spatial, strict=True))
            layer = nn.Conv2d if x.layout is Layout.IMAGE else nn.Conv1d
            c_in, c_out = x.dims[0], y.dims[0]
            probe = layer(c_in, c_out, 1, stride=stride, device="meta")  # type: ignore[arg-type]
            formula = Formula.product(*([1] * len(stride)), c_in, c_out) + Formula.product(c_out)
            with torch.no_grad():
                made = tuple(probe(torch.empty((2, *x.dims), device="meta")).shape[1:])
            module = layer(c_in, c_out, 1, stride=stride, **factory.kwargs)  # type: ignore[arg-type]
        else:
            probe = nn.Linear(x.dims[-1], y.dims[-1], device="meta")
            formula = Formula.product(x.dims[-1], y.dims[-1]) + Formula.product(y.dims[-1])
            with torch.no_grad():
                made = tuple(probe(torch.empty((2, *x.dims), device="meta")).shape[1:])
            module = nn.Linear(x.dims[-1], y.dims[-1], **factory.kwargs)
        return module, formula, made


def _explain(kind: LayerKind, args: Args, x: SampleShape) -> str | None:
    if kind.explain is None:
        return None
    try:
        return kind.explain(args, x)
    except (LayerProblem, ValueError, AssertionError):
        return None
