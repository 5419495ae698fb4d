"""Layers that slide a window over an image or a signal: convolutions and pooling.

One kind serves both: on an image it is the 2d layer (nn.Conv2d), on a signal the 1d one
(nn.Conv1d). A size written as one number is the same in every dimension (`3` is 3x3 on
an image); output shapes come from PyTorch, the `explain` functions only say why PyTorch
refused one.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from nnmem.frontends.spec.nodes import Args, LayerProblem, Layout, SampleShape
from nnmem.frontends.spec.registry import (
    NO_PARAMETERS,
    Built,
    Factory,
    Flag,
    Formula,
    Param,
    ValueType,
    register_layer,
)

SPATIAL = (Layout.IMAGE, Layout.SIGNAL)

KERNEL = Param("kernel", ValueType.SIZE, required=True, help="window size: 3 or 3x3")
CHANNELS = Param("channels", ValueType.COUNT, required=True, help="output channels")
STRIDE = Param("stride", ValueType.SIZE, 1, help="step of the window")
PAD = Param("pad", ValueType.PADDING, 0, help="zeros added on each side, or same / valid")
DILATION = Param("dilation", ValueType.SIZE, 1, help="spacing of the kernel's taps")
GROUPS = Param("groups", ValueType.COUNT, 1, help="channel groups (grouped convolution)")
BIAS = Param("bias", ValueType.BOOL, True, help="add a learned bias")
SAME_VALID = (Flag("same", "pad", "same"), Flag("valid", "pad", 0))
CEIL = (Flag("ceil", "ceil", True), Flag("floor", "ceil", False))


def _torch(size: str | tuple[int, ...]) -> Any:
    """A size as PyTorch's layers take it.

    PyTorch types a size by the number of dimensions (tuple[int, int] for nn.Conv2d); ours
    are tuple[int, ...] whose length `Args.size` has checked against the input already.
    """
    return size


def _written(size: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in size)


def _padding(args: Args, dims: int) -> str | tuple[int, ...]:
    """A conv's padding: "same", or zeros per side for each dimension ("valid" is 0)."""
    value = args.get("pad")
    if value == "valid":
        return (0,) * dims
    if value == "same":
        return "same"
    return args.size("pad", dims)


def _numeric_padding(args: Args, dims: int) -> tuple[int, ...]:
    """The padding of a layer that takes numbers only (pooling, a transposed conv)."""
    pad = _padding(args, dims)
    if isinstance(pad, str):
        raise LayerProblem("this layer takes pad=N, not 'same'")
    return pad


def _window_reason(args: Args, x: SampleShape, *, what: str) -> str | None:
    """Why a window does not fit the input: too big for the padded, dilated extent."""
    dims = len(x.spatial)
    kernel = args.size("kernel", dims)
    dilation = args.size("dilation", dims) if args.has("dilation") else (1,) * dims
    pad = _padding(args, dims)
    padding = (0,) * dims if isinstance(pad, str) else pad
    extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True))
    padded = tuple(n + 2 * p for n, p in zip(x.spatial, padding, strict=True))
    if all(e <= n for e, n in zip(extent, padded, strict=True)):
        return None
    reason = f"a {_written(kernel)} {what} does not fit a {_written(x.spatial)} input"
    if extent != kernel:
        reason += f" (dilated to {_written(extent)})"
    if padded != x.spatial:
        reason += f" padded to {_written(padded)}"
    return reason + "; use a smaller window, more padding, or fewer downsampling layers before"


def _explain_conv(args: Args, x: SampleShape) -> str | None:
    groups = args.count("groups")
    out = args.count("channels") if args.get("channels") is not None else x.dims[0]
    if x.dims[0] % groups:
        return f"{x.dims[0]} input channels do not split into {groups} groups"
    if out % groups:
        return f"{out} output channels do not split into {groups} groups"
    if args.get("pad") == "same" and set(args.size("stride", len(x.spatial))) != {1}:
        return "'same' padding needs stride 1 in PyTorch; give pad=N instead"
    return _window_reason(args, x, what="kernel")


def _explain_pool(args: Args, x: SampleShape) -> str | None:
    dims = len(x.spatial)
    pad = _numeric_padding(args, dims)
    kernel = args.size("kernel", dims)
    if any(2 * p > k for p, k in zip(pad, kernel, strict=True)):
        return f"pad={_written(tuple(pad))} is more than half the {_written(kernel)} window"
    return _window_reason(args, x, what="window")


def _conv(x: SampleShape, c_out: int, args: Args, factory: Factory, *, groups: int) -> Built:
    dims = len(x.spatial)
    kernel = args.size("kernel", dims)
    layer = nn.Conv2d if dims == 2 else nn.Conv1d
    module = layer(
        x.dims[0],
        c_out,
        _torch(kernel),
        stride=_torch(args.size("stride", dims)),
        padding=_torch(_padding(args, dims)),
        dilation=_torch(args.size("dilation", dims)),
        groups=groups,
        bias=args.boolean("bias"),
        **factory.kwargs,
    )
    # weight (c_out, c_in / groups, *kernel), written kernel · c_in/groups · c_out as by hand
    formula = Formula.product(*kernel, x.dims[0] // groups, c_out)
    return Built(module, formula + (Formula.product(c_out) if args.boolean("bias") else NO_PARAMETERS))


@register_layer(
    "conv",
    prefix="C",
    summary="convolution: nn.Conv2d on an image, nn.Conv1d on a signal",
    positional=(KERNEL, CHANNELS),
    options=(STRIDE, PAD, DILATION, GROUPS, BIAS),
    flags=SAME_VALID,
    explain=_explain_conv,
    layouts=SPATIAL,
)
def conv(args: Args, x: SampleShape, factory: Factory) -> Built:
    """A (grouped) convolution; parameters kernel · in/groups · out + out."""
    return _conv(x, args.count("channels"), args, factory, groups=args.count("groups"))


@register_layer(
    "dwconv",
    prefix="C",
    summary="depthwise convolution: one filter per channel (groups = channels)",
    positional=(KERNEL,),
    options=(
        Param("multiplier", ValueType.COUNT, 1, help="output channels per input channel"),
        STRIDE,
        PAD,
        DILATION,
        BIAS,
    ),
    flags=SAME_VALID,
    explain=lambda args, x: _window_reason(args, x, what="kernel"),
    layouts=SPATIAL,
)
def dwconv(args: Args, x: SampleShape, factory: Factory) -> Built:
    """nn.Conv2d(C, C·multiplier, groups=C); parameters kernel · 1 · C·multiplier + bias."""
    return _conv(x, x.dims[0] * args.count("multiplier"), args, factory, groups=x.dims[0])


@register_layer(
    "deconv",
    prefix="D",
    summary="transposed convolution: nn.ConvTranspose2d / nn.ConvTranspose1d",
    positional=(KERNEL, CHANNELS),
    options=(
        STRIDE,
        PAD,
        Param("output_pad", ValueType.PADDING, 0, help="extra size added on one side"),
        DILATION,
        GROUPS,
        BIAS,
    ),
    explain=_explain_conv,
    layouts=SPATIAL,
)
def deconv(args: Args, x: SampleShape, factory: Factory) -> Built:
    """Upsampling convolution; weight (in, out/groups, *kernel)."""
    dims = len(x.spatial)
    kernel = args.size("kernel", dims)
    c_in, c_out, groups = x.dims[0], args.count("channels"), args.count("groups")
    output_pad = args.get("output_pad")
    if isinstance(output_pad, str):
        raise LayerProblem("output_pad takes a number, not a word")
    layer = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose1d
    module = layer(
        c_in,
        c_out,
        _torch(kernel),
        stride=_torch(args.size("stride", dims)),
        padding=_torch(_numeric_padding(args, dims)),
        output_padding=_torch(args.size("output_pad", dims)),
        dilation=_torch(args.size("dilation", dims)),
        groups=groups,
        bias=args.boolean("bias"),
        **factory.kwargs,
    )
    formula = Formula.product(*kernel, c_in, c_out // groups)
    return Built(module, formula + (Formula.product(c_out) if args.boolean("bias") else NO_PARAMETERS))


POOL_OPTIONS = (
    Param("stride", ValueType.SIZE, None, help="step of the window (default: the window)"),
    Param("pad", ValueType.PADDING, 0, help="padding on each side, at most half the window"),
)
CEIL_OPTION = Param("ceil", ValueType.BOOL, False, help="round the output size up")


def _pool(args: Args, x: SampleShape, kind: str) -> nn.Module:
    dims = len(x.spatial)
    kernel = _torch(args.size("kernel", dims))
    stride = _torch(args.size("stride", dims, default=kernel))
    pad = _torch(_numeric_padding(args, dims))
    ceil = args.boolean("ceil")
    if kind == "max":
        dilation = _torch(args.size("dilation", dims))
        if dims == 2:
            return nn.MaxPool2d(kernel, stride, pad, dilation, ceil_mode=ceil)
        return nn.MaxPool1d(kernel, stride, pad, dilation, ceil_mode=ceil)
    if dims == 2:
        return nn.AvgPool2d(kernel, stride, pad, ceil_mode=ceil)
    return nn.AvgPool1d(kernel, stride, pad, ceil_mode=ceil)


@register_layer(
    "maxpool",
    prefix="P",
    summary="max pooling: nn.MaxPool2d / nn.MaxPool1d (stride defaults to the window)",
    positional=(KERNEL,),
    options=(*POOL_OPTIONS, DILATION, CEIL_OPTION),
    flags=CEIL,
    explain=_explain_pool,
    layouts=SPATIAL,
)
def maxpool(args: Args, x: SampleShape, factory: Factory) -> Built:
    """Max over each window; no parameters."""
    return Built(_pool(args, x, "max"))


@register_layer(
    "avgpool",
    prefix="P",
    summary="average pooling: nn.AvgPool2d / nn.AvgPool1d (stride defaults to the window)",
    positional=(KERNEL,),
    options=(*POOL_OPTIONS, CEIL_OPTION),
    flags=CEIL,
    explain=_explain_pool,
    layouts=SPATIAL,
)
def avgpool(args: Args, x: SampleShape, factory: Factory) -> Built:
    """Mean over each window; no parameters."""
    return Built(_pool(args, x, "avg"))


@register_layer(
    "globalavgpool",
    prefix="P",
    summary="global average pooling to 1x1: nn.AdaptiveAvgPool2d(1) / 1d",
    layouts=SPATIAL,
)
def globalavgpool(args: Args, x: SampleShape, factory: Factory) -> Built:
    """Mean over all positions; the output keeps its 1x1 spatial size (C, 1, 1)."""
    return Built(nn.AdaptiveAvgPool2d(1) if len(x.spatial) == 2 else nn.AdaptiveAvgPool1d(1))


@register_layer(
    "globalmaxpool",
    prefix="P",
    summary="global max pooling to 1x1: nn.AdaptiveMaxPool2d(1) / 1d",
    layouts=SPATIAL,
)
def globalmaxpool(args: Args, x: SampleShape, factory: Factory) -> Built:
    """Max over all positions; the output keeps its 1x1 spatial size (C, 1, 1)."""
    return Built(nn.AdaptiveMaxPool2d(1) if len(x.spatial) == 2 else nn.AdaptiveMaxPool1d(1))
