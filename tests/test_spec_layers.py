"""Every layer kind builds a real `torch.nn` module that runs, with honest counts and shapes.

Each documented kind appears in a tiny spec below; for each the test runs a real forward
pass, and checks every row's parameter formula against `sum(p.numel())` of the module of
that name, and every row's shape against the shape the real forward produced.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from torch import nn

import nnmem.frontends.spec as spec_api
from nnmem.frontends.spec import LAYER_KINDS, Layout, build_model, parse_spec, textbook
from nnmem.frontends.spec.registry import layer_kinds

TINY = {
    "conv2d": "input 8x8x3 / conv 3x3 4 same / conv 3 6 stride=2 pad=1 dilation=1 bias=false",
    "conv1d": "input 16x2 signal / conv 3 4 / conv 5 4 valid dilation=2",
    "grouped": "input 8x8x4 / conv 3x3 8 groups=2 same / conv 1x1 8 groups=8",
    "dwconv": "input 8x8x4 / dwconv 3x3 same / dwconv 3 multiplier=2 stride=2",
    "deconv": "input 4x4x3 / deconv 2x2 5 stride=2 / deconv 3 2 stride=2 pad=1 output_pad=1 groups=1",
    "deconv1d": "input 8x3 signal / deconv 4 2 stride=2",
    "maxpool": "input 9x9x2 / maxpool 2 / maxpool 3 stride=1 pad=1 ceil / maxpool 2 dilation=2",
    "avgpool": "input 9x9x2 / avgpool 2 ceil / avgpool 3 stride=2 pad=1 floor",
    "pool1d": "input 12x3 signal / maxpool 2 / avgpool 3",
    "global": "input 6x6x3 / globalavgpool / fc 2",
    "globalmax": "input 6x3 signal / globalmaxpool / flatten / fc 2",
    "fc": "input 12 / fc 8 / linear 4 bias=false / dropout / dropout 0.1",
    "embedding": "input 7 tokens / embedding 50 6 / fc 3",
    "lstm": "input 5 tokens / embedding 20 6 / lstm 8 layers=2 bidirectional dropout=0.1 / lstm 4 last",
    "gru": "input 5x6 sequence / gru 8 bidirectional / gru 3 bias=false last",
    "attention": "input 5x8 sequence / attention 2 / attention 4 causal bias=false dropout=0.1",
    "transformer": "input 5x8 sequence / transformer 2 ff=16 "
    "/ transformer 4 norm_first causal activation=gelu",
    "transformer_nobias": "input 5x8 sequence / transformer 2 bias=false",
    "norms": "input 6x6x3 / batchnorm / layernorm / flatten / batchnorm affine=false / layernorm eps=1e-6",
    "norms1d": "input 7x3 signal / batchnorm momentum=0.2 / layernorm / transpose / layernorm affine=false",
    "activations": "input 10 / relu / gelu / silu / tanh / sigmoid / softmax",
    "softmax2d": "input 4x4x3 / softmax / conv 1 2",
    "transpose": "input 6 tokens / embedding 9 4 / transpose / conv 3 5 same / transpose / lstm 3",
    "residual": "input 8x8x4 / residual { conv 3x3 4 same / relu } / relu "
    "/ residual { conv 3x3 8 stride=2 pad=1 }",
    "residual_vector": "input 10 / residual { fc 10 / relu } / residual { fc 6 } / fc 2",
    "residual_sequence": "input 5x8 sequence / residual { layernorm / attention 2 } / residual { fc 4 }",
    "repeat": "input 8x8x3 / repeat 2 { conv 3x3 3 same / relu } / b: residual { repeat 2 { relu } }",
}


def _run_and_record(
    model: nn.Module, x: torch.Tensor, names: list[str]
) -> tuple[torch.Tensor, dict[str, tuple[int, ...]]]:
    """Forward `x`, noting the output shape per sample (batch dropped) of the named modules."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    modules = dict(model.named_modules())
    for name in names:

        def hook(module: nn.Module, args: object, output: torch.Tensor, name: str = name) -> None:
            shapes[name] = tuple(output.shape[1:])

        handles.append(modules[name].register_forward_hook(hook))
    try:
        y = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return y, shapes


@pytest.mark.parametrize("name", sorted(TINY))
def test_each_spec_runs_with_honest_parameters_and_shapes(name: str) -> None:
    torch.manual_seed(0)
    spec = parse_spec(TINY[name])
    book = textbook(spec, batch=2, dtype_bytes=4)
    model = build_model(spec)
    if spec.layout is Layout.TOKENS:
        x = torch.randint(0, 5, spec.input_shape(2))  # ids below every vocab above
    else:
        x = torch.randn(spec.input_shape(2))
    assert x.dtype == model.input_dtype
    y, shapes = _run_and_record(model, x, [row.name for row in book.rows[1:]])
    assert torch.isfinite(y).all()
    assert tuple(y.shape[1:]) == book.rows[-1].output_shape
    assert sum(p.numel() for p in model.parameters()) == book.parameters
    modules = dict(model.named_modules())
    for row in book.rows[1:]:
        module = modules[row.name]
        own = module.parameters(recurse=row.kind != "residual")  # a block's layers have rows of their own
        assert sum(p.numel() for p in own) == row.parameters, row
        if not (row.kind in ("lstm", "gru") and len(row.output_shape) == 1):
            assert shapes[row.name] == row.output_shape, row


def test_every_kind_is_exercised_and_documented() -> None:
    used = {word for text in TINY.values() for word in text.replace("/", " ").split()}
    docs = (Path(__file__).resolve().parent.parent / "docs" / "spec.md").read_text(encoding="utf-8")
    for kind in layer_kinds():
        assert kind.name in used, f"no tiny spec uses {kind.name}"
        assert f"`{kind.name}" in docs, f"docs/spec.md does not describe {kind.name}"


def test_real_layers_are_the_torch_classes() -> None:
    model = build_model(parse_spec(TINY["lstm"]))
    modules = dict(model.named_modules())
    assert isinstance(modules["E1"], nn.Embedding)
    assert isinstance(modules["L1"], nn.LSTM)
    model = build_model(parse_spec(TINY["transformer"]))
    assert isinstance(dict(model.named_modules())["T1"], nn.TransformerEncoderLayer)
    model = build_model(parse_spec(TINY["attention"]))
    assert isinstance(dict(model.named_modules())["A1"], nn.MultiheadAttention)


def test_recurrent_formula_counts_both_biases_and_directions() -> None:
    book = textbook(parse_spec("input 5x6 sequence / lstm 8 bidirectional"))
    # per direction: 4 gates · (6·8 input weights + 8·8 recurrent weights + b_ih 8 + b_hh 8)
    assert book.row("L1").parameters == 2 * 4 * (6 * 8 + 8 * 8 + 8 + 8)
    assert book.row("L1").output_shape == (5, 2 * 8)  # both directions' hidden states


def test_last_step_counts_the_whole_sequence_it_computed() -> None:
    book = textbook(parse_spec("input 5x6 sequence / gru 8 last"))
    assert book.row("G1").output_shape == (8,)
    assert book.row("G1").activation_elements == 5 * 8  # nn.GRU makes all 5 steps


def test_public_api_is_exactly_all() -> None:
    exported = {
        name
        for name, value in vars(spec_api).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert exported == set(spec_api.__all__)
    assert set(LAYER_KINDS) >= {"fc", "linear"}  # an alias, the same kind
    assert LAYER_KINDS["fc"] is LAYER_KINDS["linear"]


def test_a_kind_cannot_be_registered_twice() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        spec_api.register_layer("conv", prefix="X", summary="again")(LAYER_KINDS["conv"].build)
