"""Element-wise activations; the textbook counts them in place (no new elements)."""

from __future__ import annotations

from torch import nn

from nnmem.frontends.spec.nodes import Args, Layout, SampleShape
from nnmem.frontends.spec.registry import Built, Counting, Factory, register_layer

FLOATS = (Layout.IMAGE, Layout.SIGNAL, Layout.SEQUENCE, Layout.VECTOR)


@register_layer("relu", prefix="relu", summary="nn.ReLU", counting=Counting.IN_PLACE, layouts=FLOATS)
def relu(args: Args, x: SampleShape, factory: Factory) -> Built:
    """max(x, 0)."""
    return Built(nn.ReLU())


@register_layer("gelu", prefix="gelu", summary="nn.GELU", counting=Counting.IN_PLACE, layouts=FLOATS)
def gelu(args: Args, x: SampleShape, factory: Factory) -> Built:
    """x · Φ(x), the exact (erf) form."""
    return Built(nn.GELU())


@register_layer("silu", prefix="silu", summary="nn.SiLU (swish)", counting=Counting.IN_PLACE, layouts=FLOATS)
def silu(args: Args, x: SampleShape, factory: Factory) -> Built:
    """x · sigmoid(x)."""
    return Built(nn.SiLU())


@register_layer("tanh", prefix="tanh", summary="nn.Tanh", counting=Counting.IN_PLACE, layouts=FLOATS)
def tanh(args: Args, x: SampleShape, factory: Factory) -> Built:
    """The hyperbolic tangent."""
    return Built(nn.Tanh())


@register_layer("sigmoid", prefix="sigmoid", summary="nn.Sigmoid", counting=Counting.IN_PLACE, layouts=FLOATS)
def sigmoid(args: Args, x: SampleShape, factory: Factory) -> Built:
    """1 / (1 + exp(-x))."""
    return Built(nn.Sigmoid())


@register_layer(
    "softmax",
    prefix="softmax",
    summary="nn.Softmax over channels (an image or signal) or features (the last dimension)",
    counting=Counting.IN_PLACE,
    layouts=FLOATS,
)
def softmax(args: Args, x: SampleShape, factory: Factory) -> Built:
    """Normalizes to probabilities: over dim 1 (channels) of an image or signal, else the last."""
    return Built(nn.Softmax(dim=1 if x.layout in (Layout.IMAGE, Layout.SIGNAL) else -1))
