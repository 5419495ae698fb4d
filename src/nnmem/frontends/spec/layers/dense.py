"""Layers on whole feature vectors and on channels: fc, embedding, flatten, dropout, norms."""

from __future__ import annotations

from torch import nn

from nnmem.frontends.spec.nodes import Args, Layout, SampleShape
from nnmem.frontends.spec.registry import (
    NO_PARAMETERS,
    Built,
    Counting,
    Factory,
    Formula,
    Param,
    ValueType,
    register_layer,
)

FLOATS = (Layout.IMAGE, Layout.SIGNAL, Layout.SEQUENCE, Layout.VECTOR)
BIAS = Param("bias", ValueType.BOOL, True, help="add a learned bias")
EPS = Param("eps", ValueType.NUMBER, 1e-5, help="added to the variance")
AFFINE = Param("affine", ValueType.BOOL, True, help="learn a scale and a shift")


@register_layer(
    "fc",
    aliases=("linear",),
    prefix="F",
    summary="fully connected: nn.Linear (an image or a signal is flattened first)",
    positional=(Param("features", ValueType.COUNT, required=True, help="output features"),),
    options=(BIAS,),
    flatten_first=True,
    layouts=(Layout.VECTOR, Layout.SEQUENCE),
)
def fc(args: Args, x: SampleShape, factory: Factory) -> Built:
    """nn.Linear on the last dimension (each step of a sequence); in · out + out."""
    features_in, features_out = x.dims[-1], args.count("features")
    module = nn.Linear(features_in, features_out, bias=args.boolean("bias"), **factory.kwargs)
    bias = Formula.product(features_out) if args.boolean("bias") else NO_PARAMETERS
    return Built(module, Formula.product(features_in, features_out) + bias)


@register_layer(
    "flatten",
    prefix="flatten",
    summary="flatten each sample to a vector: nn.Flatten (a view, no new memory)",
    counting=Counting.VIEW,
    layouts=FLOATS,
)
def flatten(args: Args, x: SampleShape, factory: Factory) -> Built:
    """(C, H, W) becomes (C·H·W,): PyTorch's order, channels outermost."""
    return Built(nn.Flatten(), layout=Layout.VECTOR)


@register_layer(
    "dropout",
    prefix="dropout",
    summary="dropout: nn.Dropout (counted in place, like an activation)",
    positional=(Param("p", ValueType.FRACTION, 0.5, help="probability of zeroing a value"),),
    counting=Counting.IN_PLACE,
    layouts=FLOATS,
)
def dropout(args: Args, x: SampleShape, factory: Factory) -> Built:
    """Zeroes values at random while training; no parameters."""
    return Built(nn.Dropout(args.number("p")))


@register_layer(
    "embedding",
    prefix="E",
    summary="token embedding: nn.Embedding (token ids in, a sequence out)",
    positional=(
        Param("vocab", ValueType.COUNT, required=True, help="number of distinct tokens"),
        Param("dim", ValueType.COUNT, required=True, help="size of each token's vector"),
    ),
    layouts=(Layout.TOKENS,),
)
def embedding(args: Args, x: SampleShape, factory: Factory) -> Built:
    """A table of vocab · dim weights; (T,) ids become a (T, dim) sequence."""
    vocab, dim = args.count("vocab"), args.count("dim")
    module = nn.Embedding(vocab, dim, **factory.kwargs)
    return Built(module, Formula.product(vocab, dim), layout=Layout.SEQUENCE)


@register_layer(
    "batchnorm",
    prefix="BN",
    summary="batch normalization over channels: nn.BatchNorm2d / nn.BatchNorm1d",
    options=(EPS, Param("momentum", ValueType.FRACTION, 0.1, help="of the running stats"), AFFINE),
    layouts=(Layout.IMAGE, Layout.SIGNAL, Layout.VECTOR),
)
def batchnorm(args: Args, x: SampleShape, factory: Factory) -> Built:
    """A scale and a shift per channel (2·C); the running mean and variance are buffers."""
    layer = nn.BatchNorm2d if x.layout is Layout.IMAGE else nn.BatchNorm1d
    channels, affine = x.dims[0], args.boolean("affine")
    module = layer(
        channels,
        eps=args.number("eps"),
        momentum=args.number("momentum"),
        affine=affine,
        **factory.kwargs,
    )
    return Built(module, Formula.product(2, channels) if affine else NO_PARAMETERS)


@register_layer(
    "layernorm",
    prefix="LN",
    summary="layer normalization: nn.LayerNorm over features (a whole image or signal)",
    options=(EPS, AFFINE),
    layouts=FLOATS,
)
def layernorm(args: Args, x: SampleShape, factory: Factory) -> Built:
    """Normalizes the last dimension of a sequence or vector, all of an image or signal."""
    shape = x.dims[-1:] if x.layout in (Layout.SEQUENCE, Layout.VECTOR) else x.dims
    affine = args.boolean("affine")
    module = nn.LayerNorm(shape, eps=args.number("eps"), elementwise_affine=affine, **factory.kwargs)
    # a weight and a bias per normalized element
    return Built(module, Formula.product(2, *shape) if affine else NO_PARAMETERS)
