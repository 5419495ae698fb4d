"""Bad specs get a SpecError that says where (line:column), what, and how to fix it."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnmem.errors import SpecError
from nnmem.frontends.spec import build_model, load_spec, parse_spec, textbook


def _message(text: str) -> str:
    """The message a spec's parse and compile end with (they must fail)."""
    with pytest.raises(SpecError) as caught:
        textbook(parse_spec(text, "net.txt"))
    return str(caught.value)


def test_unknown_layer_names_the_place_and_the_nearest_word() -> None:
    message = _message("input 50x50x3\nconv 3x3 32 same\navgpol 2")
    first = message.split("\n")[0]
    assert first == "net.txt:3:1: unknown layer 'avgpol' — did you mean 'avgpool'?"
    assert message.split("\n")[1:] == ["    avgpol 2", "    ^"]  # the line and a caret


def test_inline_positions_count_columns_on_the_one_line() -> None:
    message = _message("input 8x8x3 / conv 3x3 4 / maxpol 2")
    assert message.startswith("net.txt:1:28: unknown layer 'maxpol' — did you mean 'maxpool'?")


def test_kernel_larger_than_the_input_names_the_layer_and_the_reason() -> None:
    # 5x5 -> C1 (3x3 valid) 3x3 -> C2 (3x3 valid) 1x1 ... written so that C3 fails
    message = _message("input 7x7x3\nconv 3x3 8\nconv 3x3 8\nconv 5x5 8")
    assert message.startswith("net.txt:4:1: C3: a 5x5 kernel does not fit a 3x3 input")
    assert "(PyTorch: " in message  # PyTorch's own words follow


def test_pooling_a_too_small_input_names_the_layer() -> None:
    message = _message("input 5x5x3 / maxpool 2 / maxpool 2 / maxpool 2")
    assert "P3: a 2x2 window does not fit a 1x1 input" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("input 5x5x3 / conv 3x3 8 sam", "1:26: conv does not take 'sam' — did you mean 'same'?"),
        ("input 5x5x3 / conv 3x3 8 strid=2", "1:26: conv has no option 'strid' — did you mean 'stride'?"),
        ("input 5x5x3 / conv 3x3 8 stride=0", "1:33: conv: stride must be an integer of at least 1"),
        ("input 5x5x3 / conv 3x3", "1:15: conv needs CHANNELS (output channels)"),
        ("input 5x5x3 / conv 3x3 8 7", "1:26: conv takes 2 numbers before its options; '7' is one too many"),
        ("input 5x5x3 / conv 3x3 8 stride=2 stride=1", "1:35: stride is given twice"),
        ("input 5x5x3 / conv 3x3x3 8", "C1: kernel 3x3x3 has 3 numbers but this input has 2"),
        ("input 5x5x3 / conv 3x3 8 same stride=2", "C1: 'same' padding needs stride 1 in PyTorch"),
        ("input 5x5x3 / conv 3x3 8 groups=2", "C1: 3 input channels do not split into 2 groups"),
        ("input 5x8 sequence / attention 3", "A1: 8 features do not split into 3 heads"),
        ("input 5x8 sequence / conv 3 4", "C1: conv takes an image or a signal, but gets a sequence (5, 8)"),
        ("input 5x8 sequence / conv 3 4", "add 'transpose' first"),
        ("input 10 tokens / fc 3", "F1: fc takes a vector or a sequence, but gets token ids (10,)"),
        ("input 10x10x3 / embedding 10 3", "write it as 'input T tokens'"),
        ("input 10x8 / fc 3", "1:7: a 2-number input needs its layout: 'signal'"),
        ("input 10x10x3x3", "1:7: an input has 1, 2 or 3 numbers"),
        ("input 10x10x3 foo", "1:15: unknown input layout 'foo'"),
        ("input 10x10x3 / input 3", "1:17: 'input' comes once, as the first line"),
        ("conv 3x3 8", "1:1: a spec starts with 'input SHAPE'"),
        ("", "1:1: empty spec"),
        ("  # only a comment\n", "1:1: empty spec"),
        ("input 10x10x3 / residual { conv 3x3 8", "1:26: this '{' is never closed"),
        ("input 10x10x3 / }", "1:17: '}' without a '{' before it"),
        ("input 10x10x3 / relu { }", "'{' opens a block only after 'residual' or 'repeat N'"),
        ("input 10x10x3 / repeat 3 { }", "this repeat block has no layers"),
        ("input 10x10x3 / repeat x { relu }", "repeat needs a count"),
        ("input 10x10x3 / s: repeat 2 { relu }", "a repeat has no module of its own to name"),
        ("input 10x10x3 / repeat 100 { repeat 200 { relu } }", "1:17: this spec unrolls to 20,000 layers"),
        ("input 10x10x3 / dropout 1.5", "dropout: p must be a number from 0 up to (not including) 1"),
        ("input 5x8 sequence / transformer 2 activation=swish", "activation must be 'relu' or 'gelu'"),
        ("input 10x10x3 / conv 3 3 stride=", "'stride=' needs a value"),
        ("input 10x10x3 / conv 3 3 = 4", "options are written name=value"),
        ("input 10x10x3 / 1a: relu", "'1a' cannot name a layer"),
        (
            "input 10x10x3 / a: conv 3 3 / a: conv 3 3",
            "1:34: this layer is named 'a', which line 1 already uses",
        ),
        ("input 10x10x3 / C2: conv 3 3 / conv 3 3", "this layer gets the automatic name 'C2'"),
        ("input 10x10x3 / forward: conv 3 3", "'forward' is taken by SpecModel"),
        ("input 10x10x3 / residual { proj: relu }", "'proj' is taken by Residual"),
        ("input 10x10x3 / residual { conv 3x3 8 }", "B1: no 1x1 projection turns (3, 10, 10) into (8, 8, 8)"),
        ("input 10x10x3 / residual { fc 8 }", "B1: the block turns an image into a vector"),
        ("input 10x10x3 / maxpool 2 pad=2", "P1: pad=2x2 is more than half the 2x2 window"),
        ("input 10x10x3 / maxpool 2 same", "maxpool does not take 'same'"),
        ("input 10x10x3 / maxpool 2 pad=same", "P1: this layer takes pad=N, not 'same'"),
        ("input 10x5 sequence / lstm 5 dropout=0.5", "L1: dropout= acts between stacked layers"),
        ("input 10x10x3 / Conv 3 3", "unknown layer 'Conv' — did you mean 'conv'?"),
        (
            "input 99999999999x99999999999x3 / conv 3 3",
            "C1: conv on an image (3, 99999999999, 99999999999) needs more",
        ),
    ],
)
def test_messages_say_where_what_and_how(text: str, expected: str) -> None:
    assert expected in _message(text)


def test_tabs_and_long_lines_keep_the_caret_under_the_culprit() -> None:
    long = "input 8x8x3 / " + " / ".join(["relu"] * 30) + " / reluu"
    line, excerpt, caret = _message(long).split("\n")
    column = int(line.split(":")[2])
    assert excerpt[caret.index("^")] == "r"  # the caret sits under 'reluu', shown as an excerpt
    assert long[column - 1 :].startswith("reluu")
    assert excerpt.lstrip().startswith("…")


def test_load_spec_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"no spec file 'nets/vgg\.txt'"):
        load_spec("nets/vgg.txt")
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(str(tmp_path))
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "absent.txt")
    binary = tmp_path / "net.txt"
    binary.write_bytes(b"input 8x8x3\n\xff\xfe")
    with pytest.raises(SpecError, match="not UTF-8 text"):
        load_spec(str(binary))


def test_build_model_reports_impossible_shapes_the_same_way() -> None:
    with pytest.raises(SpecError, match="C1: a 5x5 kernel does not fit a 3x3 input"):
        build_model(parse_spec("input 3x3x1 / conv 5x5 2"), device="meta")
