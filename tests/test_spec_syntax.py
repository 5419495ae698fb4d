"""The spec language: separators, names, blocks, layouts, loading, and the textbook's counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from nnmem.errors import SpecError, UsageError
from nnmem.frontends.spec import Layout, build_model, load_spec, parse_spec, textbook

FP32 = 4


def _names(text: str) -> list[str]:
    return [row.name for row in textbook(parse_spec(text)).rows]


def test_inline_and_multiline_specs_are_the_same() -> None:
    lines = "input 50x50x3   # H x W x C\nconv 3x3 32 same\n\n  avgpool 2 # P1\nfc 10\n"
    inline = "input 50x50x3 / conv 3x3 32 same / avgpool 2 / fc 10"
    semicolons = "input 50x50x3; conv 3x3 32 same; avgpool 2; fc 10"
    books = [textbook(parse_spec(text)) for text in (lines, inline, semicolons)]
    seen = [
        [(r.name, r.output_shape, r.activation_elements, r.parameter_formula) for r in book.rows]
        for book in books
    ]
    assert seen[0] == seen[1] == seen[2]
    assert [r.line for r in books[0].rows] == [1, 2, 4, 5, 5]  # flatten1 is made by the fc's line


def test_numbers_can_be_given_by_name_and_flags_set_options() -> None:
    by_position = textbook(parse_spec("input 8x8x3 / conv 3x3 4 same / maxpool 2 ceil"))
    by_name = textbook(parse_spec("input 8x8x3 / conv channels=4 kernel=3x3 pad=same / maxpool 2 ceil=true"))
    assert [r.output_shape for r in by_position.rows] == [r.output_shape for r in by_name.rows]
    assert by_name.row("C1").output_shape == (4, 8, 8)  # same padding keeps 8x8


def test_ceil_mode_rounds_pooling_up() -> None:
    assert textbook(parse_spec("input 25x25x1 / maxpool 2")).row("P1").output_shape == (1, 12, 12)  # floor
    assert textbook(parse_spec("input 25x25x1 / maxpool 2 ceil")).row("P1").output_shape == (1, 13, 13)


def test_automatic_names_count_each_prefix_in_forward_order() -> None:
    assert _names("input 8x8x3 / conv 3 4 / relu / maxpool 2 / conv 1 4 / relu / fc 3 / dropout / fc 2") == [
        "input",
        "C1",
        "relu1",
        "P1",
        "C2",
        "relu2",
        "flatten1",  # the implicit flatten before an fc on an image
        "F1",
        "dropout1",
        "F2",
    ]


def test_user_names_replace_automatic_ones_but_every_layer_counts() -> None:
    assert _names("input 8x8x3 / stem : conv 3 4 / conv 3 4 / head: fc 2") == [
        "input",
        "stem",
        "C2",  # the second conv, though the first was named
        "flatten1",
        "head",
    ]


def test_repeats_unroll_and_suffix_user_names() -> None:
    names = _names("input 8x8x3 / repeat 2 { down: conv 3 3 same / relu / repeat 2 { relu } }")
    assert names == [
        "input",
        "down_1",
        "relu1",
        "relu2",
        "relu3",
        "down_2",
        "relu4",
        "relu5",
        "relu6",
    ]
    nested = _names("input 8x8x3 / repeat 2 { repeat 2 { x: relu } }")
    assert nested == ["input", "x_1_1", "x_1_2", "x_2_1", "x_2_2"]


def test_residual_blocks_are_modules_with_paths_and_a_projection() -> None:
    spec = parse_spec(
        "input 8x8x4\n"
        "residual {\n  conv 3x3 4 same\n  relu\n}\n"
        "down: residual { conv 3x3 8 stride=2 pad=1 }\n"
    )
    book = textbook(spec)
    assert [row.name for row in book.rows] == [
        "input",
        "B1.C1",
        "B1.relu1",
        "B1",
        "down.C2",
        "down.proj",
        "down",
    ]
    assert book.row("down.proj").output_shape == (8, 4, 4)
    # 1x1 conv from 4 to 8 channels, strided by 2 as the body halved the size
    assert book.row("down.proj").parameters == 1 * 1 * 4 * 8 + 8
    modules = dict(build_model(spec).named_modules())
    assert isinstance(modules["B1.C1"], nn.Conv2d)
    assert isinstance(modules["down.proj"], nn.Conv2d)
    assert modules["down.proj"].stride == (2, 2)
    assert "B1.proj" not in modules  # the first block keeps the shape: no projection


def test_residual_adds_the_skip() -> None:
    model = build_model(parse_spec("input 3 / residual { fc 3 bias=false }"))
    block = dict(model.named_modules())["B1"]
    weight = dict(model.named_modules())["B1.F1"].weight
    x = torch.randn(2, 3)
    assert torch.allclose(block(x), x @ weight.T + x)


def test_input_layouts_become_pytorch_shapes_and_dtypes() -> None:
    cases = {
        "input 50x40x3": (Layout.IMAGE, (3, 50, 40)),  # H x W x C -> (C, H, W)
        "input 50x40x3 image": (Layout.IMAGE, (3, 50, 40)),
        "input 1000x8 signal": (Layout.SIGNAL, (8, 1000)),  # L x C -> (C, L)
        "input 128x512 sequence": (Layout.SEQUENCE, (128, 512)),  # T x E, batch first
        "input 784": (Layout.VECTOR, (784,)),
        "input 64 tokens": (Layout.TOKENS, (64,)),
    }
    for text, (layout, dims) in cases.items():
        spec = parse_spec(text)
        assert spec.layout is layout, text
        assert spec.input_shape(5) == (5, *dims), text
    assert parse_spec("input 64 tokens").input_dtype(torch.bfloat16) == torch.int64
    assert parse_spec("input 784").input_dtype(torch.bfloat16) == torch.bfloat16


def test_example_input_and_model_dtype() -> None:
    model = build_model(parse_spec("input 6 tokens / embedding 10 4 / fc 2"), dtype=torch.float64)
    x = model.example_input(3)
    assert x.shape == (3, 6)
    assert x.dtype == torch.int64
    assert model(x).dtype == torch.float64


def test_the_default_device_is_pytorchs_so_a_factory_can_build_on_meta() -> None:
    spec = load_spec("input 224x224x3 / conv 3x3 64 same / fc 4096")
    with torch.device("meta"):
        model = build_model(spec)
    assert all(p.is_meta for p in model.parameters())  # 822 M parameters, no memory


def test_in_place_and_view_counting() -> None:
    book = textbook(
        parse_spec("input 4 / relu / fc 4 / relu / dropout / residual { relu / fc 4 } / relu / flatten"),
        dtype_bytes=FP32,
    )
    counted = {row.name: row.activation_elements for row in book.rows}
    assert counted == {
        "input": 4,
        "relu1": 4,  # right after the input: overwriting it is not allowed
        "F1": 4,
        "relu2": 0,  # overwrites F1's output
        "dropout1": 0,
        "B1.relu3": 4,  # first in a block: the block's input is needed for the skip
        "B1.F2": 4,
        "B1": 4,  # the sum is a new tensor
        "relu4": 0,
        "flatten1": 0,  # a view
    }
    assert book.activation_elements == 4 * 6
    assert book.activation_bytes == 4 * 6 * FP32


def test_token_inputs_are_int64_in_the_textbook() -> None:
    book = textbook(parse_spec("input 10 tokens / embedding 100 8"), batch=2, dtype_bytes=2)
    assert book.row("input").activation_bytes == 10 * 8  # int64 ids whatever the dtype
    assert book.row("E1").activation_bytes == 10 * 8 * 2  # (T, E) in a 2-byte dtype
    assert book.batch_activation_bytes == 2 * (10 * 8 + 10 * 8 * 2)


def test_textbook_refuses_a_batch_of_zero() -> None:
    with pytest.raises(UsageError, match="batch must be at least 1"):
        textbook(parse_spec("input 4"), batch=0)


def test_parameter_free_rows_show_a_plain_zero() -> None:
    book = textbook(parse_spec("input 4x4x1 / maxpool 2 / fc 3 bias=false"))
    assert book.row("P1").parameter_formula == "0"
    assert book.row("F1").parameter_formula == "4·3 = 12"  # 1·2·2 = 4 inputs after the pool


def test_load_spec_reads_files_and_inline_text(tmp_path: Path) -> None:
    path = tmp_path / "net.txt"
    path.write_text("input 8x8x3\nconv 3x3 4\nconv 9x9 4\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"net\.txt:3:1: C2: a 9x9 kernel does not fit a 6x6 input"):
        textbook(load_spec(str(path)))  # the file's name, line and column in the message
    assert load_spec(path).source == str(path)  # a Path object is always a file
    assert load_spec("input 8x8x3 / relu").source == "<spec>"
    with pytest.raises(SpecError, match="a spec starts with 'input SHAPE'"):
        load_spec("conv 3x3 8 / relu")  # text, not a path: it has spaces and no .txt
