"""The text spec's acceptance numbers: the classic network and VGG-16, as arithmetic."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nnmem.frontends.spec import build_model, load_spec, textbook

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FP32 = 4


def test_classic_cnn_rows_shapes_and_formulas() -> None:
    book = textbook(load_spec(str(EXAMPLES / "classic_cnn.txt")), batch=64, dtype_bytes=FP32)
    rows = {row.name: row for row in book.rows}
    assert [row.name for row in book.rows] == ["input", "C1", "P1", "C2", "P2", "flatten1", "F1", "F2"]
    # shapes per sample in PyTorch order (C, H, W); "same" keeps 50x50, pooling floors 25 -> 12
    assert rows["input"].output_shape == (3, 50, 50)
    assert rows["C1"].output_shape == (32, 50, 50)
    assert rows["P1"].output_shape == (32, 25, 25)
    assert rows["C2"].output_shape == (64, 25, 25)
    assert rows["P2"].output_shape == (64, 12, 12)
    assert rows["F1"].output_shape == (500,)
    assert rows["C1"].parameter_formula == "3·3·3·32 + 32 = 896"
    assert rows["C2"].parameter_formula == "3·3·32·64 + 64 = 18,496"
    assert rows["F1"].parameter_formula == "9216·500 + 500 = 4,608,500"  # 12·12·64 = 9216 inputs
    assert rows["F2"].parameter_formula == "500·10 + 10 = 5,010"
    assert rows["C1"].activation_bytes == 32 * 50 * 50 * FP32  # fp32 output, one sample
    assert rows["C1"].batch_activation_bytes == 64 * 32 * 50 * 50 * FP32  # batch 64
    assert rows["C1"].parameter_bytes == 896 * FP32
    assert rows["flatten1"].activation_elements == 0  # a view


def test_classic_cnn_totals() -> None:
    book = textbook(load_spec(str(EXAMPLES / "classic_cnn.txt")), batch=64, dtype_bytes=FP32)
    assert book.parameters == 896 + 18_496 + 4_608_500 + 5_010 == 4_632_902
    # the input and each conv, pool and fc output once
    assert book.activation_elements == 7_500 + 80_000 + 20_000 + 40_000 + 9_216 + 500 + 10 == 157_226
    assert book.activation_bytes == 157_226 * FP32 == 628_904
    assert book.batch_activation_bytes == 628_904 * 64 == 40_249_856
    assert book.parameter_bytes == 4_632_902 * FP32
    # the rules of thumb: ×3 the batch's activations; ×3 and ×4 the parameters
    assert book.backward_activation_bytes == 3 * 40_249_856
    assert book.sgd_parameter_bytes == 4_632_902 * 3 * FP32  # weights + grads + momentum
    assert book.adam_parameter_bytes == 4_632_902 * 4 * FP32  # weights + grads + two moments
    assert [rule.bytes for rule in book.rules()] == [
        book.backward_activation_bytes,
        book.sgd_parameter_bytes,
        book.adam_parameter_bytes,
    ]


def test_classic_cnn_model_is_named_like_the_spec_and_runs() -> None:
    spec = load_spec(str(EXAMPLES / "classic_cnn.txt"))
    model = build_model(spec)
    modules = dict(model.named_modules())
    assert isinstance(modules["C1"], nn.Conv2d)
    assert isinstance(modules["P2"], nn.AvgPool2d)
    assert isinstance(modules["F1"], nn.Linear)
    assert sum(p.numel() for p in model.parameters()) == 4_632_902  # independent of the formulas
    assert spec.input_shape(2) == (2, 3, 50, 50)  # H x W x C written, N x C x H x W built
    assert model(torch.randn(2, 3, 50, 50)).shape == (2, 10)


def test_vgg16_parameters_and_activations() -> None:
    spec = load_spec(str(EXAMPLES / "vgg16.txt"))
    book = textbook(spec, batch=1, dtype_bytes=FP32)
    convs = [row for row in book.rows if row.kind == "conv"]
    assert [row.name for row in convs] == [f"C{i}" for i in range(1, 14)]  # repeats unrolled
    assert book.parameters == 138_357_544  # torchvision's vgg16, biases included
    conv_outputs = 2 * 224 * 224 * 64 + 2 * 112 * 112 * 128 + 3 * 56 * 56 * 256 + 3 * 28 * 28 * 512
    conv_outputs += 3 * 14 * 14 * 512
    pool_outputs = 112 * 112 * 64 + 56 * 56 * 128 + 28 * 28 * 256 + 14 * 14 * 512 + 7 * 7 * 512
    fc_outputs = 4096 + 4096 + 1000
    # the input and each conv, pool and fc output once; the ReLUs in place
    assert book.activation_elements == 224 * 224 * 3 + conv_outputs + pool_outputs + fc_outputs
    assert book.activation_elements == 15_237_608


def test_vgg16_parameters_match_the_built_model() -> None:
    model = build_model(load_spec(str(EXAMPLES / "vgg16.txt")), device="meta")  # no memory
    assert sum(p.numel() for p in model.parameters()) == 138_357_544
