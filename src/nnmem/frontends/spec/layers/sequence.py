"""Layers on sequences (T, E), batch first: lstm, gru, attention, transformer, transpose.

PyTorch's recurrent and attention layers return tuples or take several inputs; the small
subclasses here keep the real layer (so its parameters and kernels are PyTorch's own)
and give it a one-tensor forward, as a layer stack needs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nnmem.frontends.spec.nodes import Args, LayerProblem, Layout, SampleShape
from nnmem.frontends.spec.registry import (
    NO_PARAMETERS,
    Built,
    Counting,
    Factory,
    Flag,
    Formula,
    Param,
    ValueType,
    register_layer,
)

HEADS = Param("heads", ValueType.COUNT, required=True, help="attention heads")
CAUSAL = Param("causal", ValueType.BOOL, False, help="each step attends only to earlier ones")
BIAS = Param("bias", ValueType.BOOL, True, help="add learned biases")


def _causal_mask(x: torch.Tensor) -> torch.Tensor:
    return nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device, dtype=x.dtype)


class _OutputOrLastStep:
    """For a batch-first recurrent layer: forward returns the output sequence, or its last step."""

    def __init__(self, *args: Any, last: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last = last

    # one tensor in, one out: the stack has no use for the final hidden states
    def forward(self, input: torch.Tensor, hx: Any = None) -> torch.Tensor:
        output, _ = super().forward(input, hx)  # type: ignore[misc]
        assert isinstance(output, torch.Tensor)
        return output[:, -1] if self.last else output


class SequenceLSTM(_OutputOrLastStep, nn.LSTM):  # type: ignore[misc]
    """nn.LSTM (batch first) whose forward returns the output sequence, or its last step."""


class SequenceGRU(_OutputOrLastStep, nn.GRU):  # type: ignore[misc]
    """nn.GRU (batch first) whose forward returns the output sequence, or its last step."""


class SelfAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention (batch first) used as self-attention: query = key = value = x."""

    def __init__(self, *args: Any, causal: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        mask = _causal_mask(x) if self.causal else None
        output, _ = super().forward(x, x, x, need_weights=False, attn_mask=mask, is_causal=self.causal)
        return output


class EncoderLayer(nn.TransformerEncoderLayer):
    """nn.TransformerEncoderLayer (batch first), optionally causal."""

    def __init__(self, *args: Any, causal: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        mask = _causal_mask(x) if self.causal else None
        return super().forward(x, src_mask=mask, is_causal=self.causal)


RECURRENT_OPTIONS = (
    Param("layers", ValueType.COUNT, 1, help="stacked recurrent layers"),
    Param("bidirectional", ValueType.BOOL, False, help="also run backwards in time"),
    Param("last", ValueType.BOOL, False, help="output only the last step, a vector"),
    Param("dropout", ValueType.FRACTION, 0.0, help="between stacked layers"),
    BIAS,
)
RECURRENT_FLAGS = (Flag("bidirectional", "bidirectional", True), Flag("last", "last", True))


def _recurrent(args: Args, x: SampleShape, factory: Factory, *, gates: int) -> Built:
    hidden, layers = args.count("hidden"), args.count("layers")
    directions = 2 if args.boolean("bidirectional") else 1
    last, bias = args.boolean("last"), args.boolean("bias")
    if args.number("dropout") and layers == 1:
        raise LayerProblem("dropout= acts between stacked layers; give layers=2 or more")
    layer = SequenceLSTM if gates == 4 else SequenceGRU
    module = layer(
        x.dims[-1],
        hidden,
        num_layers=layers,
        bias=bias,
        batch_first=True,
        dropout=args.number("dropout"),
        bidirectional=args.boolean("bidirectional"),
        last=last,
        **factory.kwargs,
    )
    # per layer and direction: gates · (in·H + H·H + two biases of H: b_ih and b_hh)
    formula = NO_PARAMETERS
    for index in range(layers):
        features_in = x.dims[-1] if index == 0 else hidden * directions
        one = Formula.product(features_in, hidden) + Formula.product(hidden, hidden)
        if bias:
            one = one + Formula.product(hidden) + Formula.product(hidden)
        if directions == 1:
            formula = formula + one.times(gates)
        else:
            text = f"{directions}·{gates}·({one.text})"
            formula = formula + Formula(text, directions * gates * one.value)
    steps = x.dims[0]
    return Built(
        module,
        formula,
        layout=Layout.VECTOR if last else Layout.SEQUENCE,
        counted_elements=steps * hidden * directions,  # the whole sequence is made, even if last
    )


@register_layer(
    "lstm",
    prefix="L",
    summary="LSTM: nn.LSTM, batch first (`last` keeps only the last step)",
    positional=(Param("hidden", ValueType.COUNT, required=True, help="hidden size"),),
    options=RECURRENT_OPTIONS,
    flags=RECURRENT_FLAGS,
    layouts=(Layout.SEQUENCE,),
)
def lstm(args: Args, x: SampleShape, factory: Factory) -> Built:
    """Four gates; a (T, E) sequence becomes (T, hidden · directions)."""
    return _recurrent(args, x, factory, gates=4)


@register_layer(
    "gru",
    prefix="G",
    summary="GRU: nn.GRU, batch first (`last` keeps only the last step)",
    positional=(Param("hidden", ValueType.COUNT, required=True, help="hidden size"),),
    options=RECURRENT_OPTIONS,
    flags=RECURRENT_FLAGS,
    layouts=(Layout.SEQUENCE,),
)
def gru(args: Args, x: SampleShape, factory: Factory) -> Built:
    """Three gates; a (T, E) sequence becomes (T, hidden · directions)."""
    return _recurrent(args, x, factory, gates=3)


def _explain_heads(args: Args, x: SampleShape) -> str | None:
    heads = args.count("heads")
    if x.dims[-1] % heads:
        return f"{x.dims[-1]} features do not split into {heads} heads"
    return None


def _attention_formula(features: int, bias: bool) -> Formula:
    # in_proj: query, key and value weights (3·E·E) and biases; out_proj: E·E and a bias
    formula = Formula.product(3, features, features)
    if bias:
        formula = formula + Formula.product(3, features)
    formula = formula + Formula.product(features, features)
    return formula + Formula.product(features) if bias else formula


@register_layer(
    "attention",
    prefix="A",
    summary="multi-head self-attention: nn.MultiheadAttention, batch first",
    positional=(HEADS,),
    options=(Param("dropout", ValueType.FRACTION, 0.0, help="on attention weights"), BIAS, CAUSAL),
    flags=(Flag("causal", "causal", True),),
    explain=_explain_heads,
    layouts=(Layout.SEQUENCE,),
)
def attention(args: Args, x: SampleShape, factory: Factory) -> Built:
    """Self-attention over a (T, E) sequence; 4·E·E weights and 4·E biases."""
    features, bias = x.dims[-1], args.boolean("bias")
    module = SelfAttention(
        features,
        args.count("heads"),
        dropout=args.number("dropout"),
        bias=bias,
        batch_first=True,
        causal=args.boolean("causal"),
        **factory.kwargs,
    )
    return Built(module, _attention_formula(features, bias))


@register_layer(
    "transformer",
    prefix="T",
    summary="transformer encoder block: nn.TransformerEncoderLayer, batch first",
    positional=(HEADS,),
    options=(
        Param("ff", ValueType.COUNT, None, help="feed-forward width (default 4 · features)"),
        Param("dropout", ValueType.FRACTION, 0.1, help="PyTorch's default"),
        Param("activation", ValueType.WORD, "relu", choices=("relu", "gelu"), help="in the ff"),
        Param("norm_first", ValueType.BOOL, False, help="pre-norm (GPT-2 style)"),
        BIAS,
        CAUSAL,
    ),
    flags=(Flag("norm_first", "norm_first", True), Flag("causal", "causal", True)),
    explain=_explain_heads,
    layouts=(Layout.SEQUENCE,),
)
def transformer(args: Args, x: SampleShape, factory: Factory) -> Built:
    """Attention, a two-layer feed-forward network and two layer norms, with residuals."""
    features, bias = x.dims[-1], args.boolean("bias")
    ff = args.count("ff") if args.get("ff") is not None else 4 * features
    module = EncoderLayer(
        features,
        args.count("heads"),
        dim_feedforward=ff,
        dropout=args.number("dropout"),
        activation=args.word("activation"),
        batch_first=True,
        norm_first=args.boolean("norm_first"),
        bias=bias,
        causal=args.boolean("causal"),
        **factory.kwargs,
    )
    formula = _attention_formula(features, bias)
    # feed-forward E → ff → E, then two layer norms of a weight (and a bias) each
    formula = formula + Formula.product(features, ff)
    formula = formula + (Formula.product(ff) if bias else NO_PARAMETERS)
    formula = formula + Formula.product(ff, features)
    formula = formula + (Formula.product(features) if bias else NO_PARAMETERS)
    formula = formula + Formula.product(4 if bias else 2, features)
    return Built(module, formula)


class Transpose(nn.Module):
    """Swap the two per-sample dimensions: a sequence (T, E) ↔ a signal (C=E, L=T)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


@register_layer(
    "transpose",
    prefix="transpose",
    summary="swap steps and channels: a sequence (T, E) ↔ a signal (C, L) (a view)",
    counting=Counting.VIEW,
    layouts=(Layout.SEQUENCE, Layout.SIGNAL),
)
def transpose(args: Args, x: SampleShape, factory: Factory) -> Built:
    """Lets a conv1d follow an embedding, or an lstm follow a conv1d."""
    swapped = Layout.SIGNAL if x.layout is Layout.SEQUENCE else Layout.SEQUENCE
    return Built(Transpose(), layout=swapped)
